"""Hosts and paths as gateways name them: one parser for forwarded hosts, one rule for the hosts
an endpoint may bind, one path normaliser and one segment-prefix match. Endpoints (host
ownership, validation) and the gateway decision (binding lookup, exempt paths) both use these."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_NAME = re.compile(r"\A[a-z0-9_]([a-z0-9_.-]{0,252})\Z")
_BRACKETED = re.compile(r"\A\[[0-9a-f:.]{2,45}\]\Z")
_BINDABLE = re.compile(
    r"\A(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*(:\d{1,5})?\Z"
)


def bindable_host(value: str) -> str:
    """The canonical form of a host an endpoint binds (a DNS name, optionally `:port`);
    ValueError otherwise."""
    lowered = value.strip().lower()
    if not _BINDABLE.match(lowered):
        raise ValueError("host must be a DNS name, optionally with :port")
    return lowered


def host_name(host: str) -> str:
    """A bound host without its port: ownership is per name, whatever the port."""
    return host.split(":", 1)[0]


def split_host(raw: str | None) -> tuple[str, str | None] | None:
    """`Example.COM.:8080` → ("example.com", "8080"); None when it is not a plausible host."""
    if not raw:
        return None
    value = raw.split(",")[0].strip().lower()
    name, port = value, None
    head, sep, tail = value.rpartition(":")
    if sep and tail.isascii() and tail.isdigit() and (head.endswith("]") or "[" not in head):
        name, port = head, tail
        if len(port) > 5 or int(port) > 65535:
            return None
    name = name.rstrip(".")
    if not (_NAME.match(name) or _BRACKETED.match(name)):
        return None
    return name, port


def normalize_path(raw: str | None, *, decode: bool = True) -> str:
    """The path a decision is about: query dropped, percent-decoded once (unless the server
    already did), dot segments resolved and empty segments dropped, so `/health/../admin` and
    `/health%2F..%2Fadmin` are `/admin` and can never pass for an exempt `/health`."""
    if not raw:
        return "/"
    value = raw.split("?", 1)[0].split("#", 1)[0]
    if not value.startswith("/"):
        value = urlsplit(value).path if "://" in value else "/" + value
    if decode:
        value = unquote(value)
    segments: list[str] = []
    for segment in value.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def prefix_of(path_prefix: str | None) -> str:
    """A binding's prefix in the form `covers` expects ("" for none or `/`)."""
    return "" if not path_prefix else normalize_path(path_prefix, decode=False).rstrip("/")


def covers(prefix: str, path: str) -> bool:
    """Segment-prefix match: `/api` covers `/api` and `/api/x`, never `/apix`."""
    return not prefix or path == prefix or path.startswith(prefix + "/")

"""The outbound guard: where Warden may send requests (upstreams, JWKS).

A URL must be http(s) without credentials in it. Hosts listed in `UPSTREAM_ALLOWED_HOSTS` are
trusted as they are (tests and private deployments list 127.0.0.1 there). Any other host must use
https and resolve only to public addresses: private, loopback, link-local, multicast, reserved and
unspecified addresses are refused, so a tenant cannot point Warden at its own network (SSRF).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Collection
from urllib.parse import urlsplit

RESOLVE_TTL_SECONDS = 60.0
_resolved: dict[str, tuple[float, list[str]]] = {}


class OutboundRefused(ValueError):
    """The URL may not be called; the message says why."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def parse_outbound_url(url: str, allowed_hosts: Collection[str]) -> tuple[str, bool]:
    """Check the URL's shape; returns (host, trusted) where trusted means allow-listed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused("not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused("scheme must be http or https")
    if parts.username or parts.password:
        raise OutboundRefused("credentials in the URL are not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise OutboundRefused("URL has no host")
    if port == 0:
        raise OutboundRefused("port 0 is not allowed")
    allowed = {h.strip().lower() for h in allowed_hosts}
    if host in allowed:
        return host, True
    if parts.scheme != "https":
        raise OutboundRefused("https is required for hosts outside UPSTREAM_ALLOWED_HOSTS")
    return host, False


async def resolve_public(host: str) -> None:
    """Refuse a host that resolves to a non-public address (cached for a minute)."""
    now = time.monotonic()
    cached = _resolved.get(host)
    if cached is not None and now - cached[0] < RESOLVE_TTL_SECONDS:
        addresses = cached[1]
    else:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, None, type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise OutboundRefused(f"host {host} does not resolve") from exc
            addresses = sorted({str(info[4][0]) for info in infos})
        _resolved[host] = (now, addresses)
    for address in addresses:
        if not _is_public(address):
            raise OutboundRefused(f"host {host} resolves to a non-public address")


async def check_outbound_url(url: str, allowed_hosts: Collection[str]) -> str:
    """Full check of a URL Warden is about to store or call; returns it unchanged."""
    host, trusted = parse_outbound_url(url, allowed_hosts)
    if not trusted:
        await resolve_public(host)
    return url

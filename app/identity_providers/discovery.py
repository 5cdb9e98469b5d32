"""Talking to an OpenID provider: discovery (validated), the token endpoint, its keys.

Every call goes through the outbound guard (the URL is checked, and the client's transport
checks the address it connects to), follows no redirect, reads a bounded body and is bounded by
one deadline. A provider that cannot be reached is `ProviderUnavailable` (503 with Retry-After
for a user; a 422 naming the problem when an admin registers it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.core import jose
from app.core.outbound import OutboundRefused, check_outbound_url, parse_outbound_url
from app.issuers.jwks import JwksCache

MAX_DOCUMENT_BYTES = 256 * 1024
WELL_KNOWN = "/.well-known/openid-configuration"
# The fields kept from a discovery document (everything the flow uses).
_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "jwks_uri")
_OPTIONAL_ENDPOINTS = ("end_session_endpoint", "userinfo_endpoint")


class DiscoveryError(ValueError):
    """The discovery document is unusable; the message names what is wrong."""


class ProviderUnavailable(Exception):
    """The provider could not be reached, timed out or answered with a server error."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class TokenEndpointError(Exception):
    """The token endpoint refused the request (`invalid_grant` and the like)."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)


@dataclass(frozen=True)
class ProviderClient:
    """What talking to providers needs: the guarded HTTP client, the JWKS cache shared with
    satellite tokens, the hosts that may be private, and the deadline of one call."""

    http: httpx.AsyncClient
    jwks: JwksCache
    allowed_hosts: Collection[str]
    timeout: float


async def _read(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body.extend(chunk)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ProviderUnavailable("response too large")
    return bytes(body)


async def _call(client: ProviderClient, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """One bounded request; (status, parsed JSON or None)."""
    try:
        await check_outbound_url(url, client.allowed_hosts)
    except OutboundRefused as exc:
        raise ProviderUnavailable(f"refused by the outbound guard: {exc}") from exc
    try:
        async with asyncio.timeout(client.timeout):
            async with client.http.stream(
                method, url, timeout=client.timeout, follow_redirects=False, **kwargs
            ) as response:
                body = await _read(response)
                status = response.status_code
    except TimeoutError as exc:
        raise ProviderUnavailable("timed out") from exc
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"transport error {type(exc).__name__}") from exc
    try:
        document = json.loads(body.decode("utf-8")) if body else None
    except (ValueError, RecursionError):
        document = None
    return status, document


def _url_field(document: Mapping[str, Any], name: str, allowed_hosts: Collection[str]) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise DiscoveryError(f"discovery: {name} is missing")
    try:
        parse_outbound_url(value, allowed_hosts)
    except OutboundRefused as exc:
        raise DiscoveryError(f"discovery: {name}: {exc}") from exc
    if urlsplit(value).fragment:
        raise DiscoveryError(f"discovery: {name} has a fragment")
    return value


def _string_list(document: Mapping[str, Any], name: str) -> list[str] | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DiscoveryError(f"discovery: {name} is not a list of strings")
    return list(value)


def validate_metadata(
    issuer: str, document: Any, allowed_hosts: Collection[str], client_auth: str
) -> dict[str, Any]:
    """The fields Warden uses from a discovery document, or `DiscoveryError` naming the problem."""
    if not isinstance(document, Mapping):
        raise DiscoveryError("discovery: the document is not a JSON object")
    if document.get("issuer") != issuer:
        raise DiscoveryError(
            f"discovery: issuer mismatch (the document says {str(document.get('issuer'))[:200]!r})"
        )
    metadata: dict[str, Any] = {"issuer": issuer}
    for name in _ENDPOINTS:
        metadata[name] = _url_field(document, name, allowed_hosts)
    for name in _OPTIONAL_ENDPOINTS:
        if document.get(name) is not None:
            metadata[name] = _url_field(document, name, allowed_hosts)
    methods = _string_list(document, "code_challenge_methods_supported") or []
    if "S256" not in methods:
        raise DiscoveryError("discovery: no S256 in code_challenge_methods_supported")
    response_types = _string_list(document, "response_types_supported") or []
    if "code" not in response_types:
        raise DiscoveryError("discovery: response_type code is not supported")
    algs = _string_list(document, "id_token_signing_alg_values_supported") or ["RS256"]
    usable = sorted(set(algs) & jose.ASYMMETRIC_ALGORITHMS)
    if not usable:
        raise DiscoveryError(
            "discovery: no ID-token signing algorithm Warden accepts (RS256/384/512, ES256/384/512)"
        )
    metadata["id_token_algorithms"] = usable
    auth_methods = _string_list(document, "token_endpoint_auth_methods_supported") or [
        "client_secret_basic"
    ]
    if client_auth not in auth_methods:
        raise DiscoveryError(f"discovery: the token endpoint does not support {client_auth}")
    if client_auth == "private_key_jwt":
        signing = _string_list(document, "token_endpoint_auth_signing_alg_values_supported")
        if signing is not None and "ES256" not in signing:
            raise DiscoveryError("discovery: the token endpoint does not accept ES256 assertions")
    metadata["backchannel_logout_supported"] = document.get("backchannel_logout_supported") is True
    metadata["backchannel_logout_session_supported"] = (
        document.get("backchannel_logout_session_supported") is True
    )
    return metadata


async def discover(client: ProviderClient, issuer: str, client_auth: str) -> dict[str, Any]:
    """Fetch and validate `issuer`'s discovery document, then its JWKS (through the cache)."""
    try:
        parse_outbound_url(issuer, client.allowed_hosts)
    except OutboundRefused as exc:
        raise DiscoveryError(f"issuer: {exc}") from exc
    url = issuer.rstrip("/") + WELL_KNOWN
    try:
        status, document = await _call(client, "GET", url, headers={"Accept": "application/json"})
    except ProviderUnavailable as exc:
        raise DiscoveryError(f"discovery: {url} is unreachable ({exc.reason})") from exc
    if status != 200:
        raise DiscoveryError(f"discovery: {url} answered {status}")
    metadata = validate_metadata(issuer, document, client.allowed_hosts, client_auth)
    # Warden itself calls the token endpoint: its address must pass the guard now, not only at
    # the first sign-in (the JWKS fetch below checks jwks_uri the same way).
    try:
        await check_outbound_url(metadata["token_endpoint"], client.allowed_hosts)
    except OutboundRefused as exc:
        raise DiscoveryError(f"discovery: token_endpoint: {exc}") from exc
    client.jwks.forget(metadata["jwks_uri"])
    try:
        keys = await client.jwks.get(metadata["jwks_uri"])
    except jose.TokenError as exc:
        raise DiscoveryError(f"discovery: no usable JWKS at jwks_uri ({exc.reason})") from exc
    if not keys.keys:
        raise DiscoveryError("discovery: the JWKS has no usable signing key")
    return metadata


async def token_request(
    client: ProviderClient, endpoint: str, form: Mapping[str, str], auth: tuple[str, str] | None
) -> dict[str, Any]:
    """POST to the token endpoint; the JSON answer, `TokenEndpointError` on a 4xx."""
    status, document = await _call(
        client,
        "POST",
        endpoint,
        data=dict(form),
        auth=auth,
        headers={"Accept": "application/json"},
    )
    if status >= 500 or status in (408, 429):
        raise ProviderUnavailable(f"token endpoint answered {status}")
    if status != 200:
        error = document.get("error") if isinstance(document, Mapping) else None
        raise TokenEndpointError(error if isinstance(error, str) else f"status {status}")
    if not isinstance(document, dict):
        raise TokenEndpointError("the token response is not a JSON object")
    return document

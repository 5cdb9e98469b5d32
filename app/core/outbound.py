"""The outbound guard: where Warden may send requests (upstreams, JWKS).

A URL must be http(s) without credentials in it. Hosts listed in `UPSTREAM_ALLOWED_HOSTS` are
trusted as they are (tests and private deployments list 127.0.0.1 there). Any other host must use
https and resolve only to globally reachable addresses, so a tenant cannot point Warden at its own
network or the cloud's metadata service (SSRF).

"Globally reachable" follows the IANA special-purpose address registries (IPv4 and IPv6), written
out below rather than taken from `ipaddress.is_global`, whose tables differ between Python
releases (3.11 calls 192.0.0.0/24, 3fff::/20, fec0::/10 and IPv4 multicast global, and judges
6to4 or IPv4-mapped addresses without looking at the IPv4 address inside). Every IPv4 address an
IPv6 address embeds is unwrapped and judged too: IPv4-mapped and IPv4-compatible, 6to4
(2002::/16), Teredo (2001::/32, server and client), and NAT64 (64:ff9b::/96, 64:ff9b:1::/48).

The check runs twice: when a URL is stored (a clear 422) and, through `GuardedBackend`, on the
addresses a connection is actually opened to: the host is resolved once, every address is judged,
and the socket is connected to one of those very addresses. Judging a name and then letting the
HTTP library resolve it again would let a DNS answer change in between (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import typing
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from urllib.parse import urlsplit

import httpcore
import httpx

RESOLVE_TTL_SECONDS = 60.0
_resolved: dict[str, tuple[float, list[str]]] = {}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], Awaitable[list[str]]]


class OutboundRefused(ValueError):
    """The URL may not be called; the message says why."""


def _nets4(*cidrs: str) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network(c) for c in cidrs)


def _nets6(*cidrs: str) -> tuple[ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.IPv6Network(c) for c in cidrs)


# IANA IPv4 Special-Purpose Address Registry, entries not globally reachable, plus multicast
# (224.0.0.0/4, its own registry) and the deprecated 6to4 relay anycast block (RFC 7526), which
# hands traffic to any 6to4 relay. The registry's few globally reachable exceptions inside
# 192.0.0.0/24 (192.0.0.9 and .10, anycast service addresses) are refused too: no upstream or
# JWKS lives there.
_IPV4_REFUSED = _nets4(
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (CGN; cloud metadata such as 100.100.100.200)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link local (cloud metadata 169.254.169.254)
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (DS-Lite, NAT64 discovery, ...)
    "192.0.2.0/24",  # TEST-NET-1
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # TEST-NET-2
    "203.0.113.0/24",  # TEST-NET-3
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and 255.255.255.255 limited broadcast
)

# IPv6: global unicast is 2000::/3; everything outside it (loopback, unspecified, IPv4-compatible,
# discard 100::/64, ULA fc00::/7, link-local fe80::/10, deprecated site-local fec0::/10,
# multicast ff00::/8, SRv6 SIDs 5f00::/16, ...) is refused, except the two prefixes that embed an
# IPv4 address and are judged by it (IPv4-mapped, NAT64 well-known prefix). Inside 2000::/3 the
# registry's not-globally-reachable entries follow.
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_IPV6_REFUSED = _nets6(
    "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID, ...
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation (RFC 9637)
)
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (IPv4-mapped/-compatible, 6to4, Teredo server
    and client, NAT64 /96 and the RFC 6052 /48 layout of 64:ff9b:1::/48)."""
    packed = ip.packed
    found: list[ipaddress.IPv4Address] = []
    if ip in _MAPPED or ip in _COMPATIBLE or ip in _NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(packed[12:16]))
    if ip in _SIXTOFOUR:
        found.append(ipaddress.IPv4Address(packed[2:6]))
    if ip in _TEREDO:
        server, client = typing.cast(tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ip.teredo)
        found.extend((server, client))
    if ip in _NAT64_LOCAL:  # RFC 6052 /48: bits 48-63 and 72-87 (octet 8 is reserved)
        found.append(ipaddress.IPv4Address(packed[6:8] + packed[9:11]))
    return found


def _ipv4_public(ip: ipaddress.IPv4Address) -> bool:
    return not any(ip in net for net in _IPV4_REFUSED) and ip.is_global


def refusal(address: str | IPAddress) -> str | None:
    """Why an address may not be connected to, or None when it is globally reachable."""
    try:
        ip = (
            address
            if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
            else ipaddress.ip_address(address.split("%", 1)[0])
        )
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv4Address):
        return None if _ipv4_public(ip) else f"{ip} is not globally reachable"
    if ip.scope_id:
        return f"{ip} is scoped"
    inner = embedded_ipv4(ip)
    for v4 in inner:
        if not _ipv4_public(v4):
            return f"{ip} embeds {v4}, which is not globally reachable"
    if ip in _MAPPED or ip in _NAT64_WELL_KNOWN or (ip in _SIXTOFOUR and inner):
        return None  # judged by the public IPv4 address inside
    if ip not in _GLOBAL_UNICAST or any(ip in net for net in _IPV6_REFUSED) or not ip.is_global:
        return f"{ip} is not globally reachable"
    return None


def _is_public(address: str) -> bool:
    return refusal(address) is None


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
    if host in _allowed(allowed_hosts):
        return host, True
    if parts.scheme != "https":
        raise OutboundRefused("https is required for hosts outside UPSTREAM_ALLOWED_HOSTS")
    return host, False


def _allowed(allowed_hosts: Iterable[str]) -> frozenset[str]:
    return frozenset(h.strip().lower().strip("[]") for h in allowed_hosts if h.strip())


async def _getaddrinfo(host: str) -> list[str]:
    """Every address a name resolves to (module-level so tests can stand in for DNS)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _addresses(host: str, resolver: Resolver | None = None) -> list[str]:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return [host]
    except ValueError:
        pass
    try:
        addresses = await (resolver or _getaddrinfo)(host)
    except (OSError, UnicodeError) as exc:
        raise OutboundRefused(f"host {host} does not resolve") from exc
    if not addresses:
        raise OutboundRefused(f"host {host} does not resolve")
    return addresses


def _judge(host: str, addresses: Iterable[str]) -> None:
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            raise OutboundRefused(f"host {host} resolves to a non-public address ({reason})")


async def resolve_public(host: str) -> None:
    """Refuse a host that resolves to a non-public address (cached for a minute)."""
    now = time.monotonic()
    cached = _resolved.get(host)
    if cached is not None and now - cached[0] < RESOLVE_TTL_SECONDS:
        addresses = cached[1]
    else:
        addresses = await _addresses(host)
        _resolved[host] = (now, addresses)
    _judge(host, addresses)


async def check_outbound_url(url: str, allowed_hosts: Collection[str]) -> str:
    """Full check of a URL Warden is about to store or call; returns it unchanged."""
    host, trusted = parse_outbound_url(url, allowed_hosts)
    if not trusted:
        await resolve_public(host)
    return url


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend behind the outbound guard, applied to the socket itself.

    An allow-listed host is connected to as usual. Any other host is resolved here, once; if any
    address is not globally reachable the connection is refused (`httpcore.ConnectError`, which
    httpx reports as `httpx.ConnectError`), else the socket is opened to those checked addresses
    in turn. TLS still verifies the certificate against the host name: httpcore takes the SNI
    and hostname check from the request's origin, not from the address connected to."""

    def __init__(
        self,
        allowed_hosts: Collection[str],
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.allowed = _allowed(allowed_hosts)
        self.inner = inner or httpcore.AnyIOBackend()
        self.resolver = resolver

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.targets(host, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OutboundRefused as exc:
            raise httpcore.ConnectError(f"refused by the outbound guard: {exc}") from exc
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # noqa: S101  (addresses is never empty)
        raise error

    async def targets(self, host: str, timeout: float | None = None) -> list[str]:  # noqa: ASYNC109
        """What a connection to `host` may be opened to: an allow-listed host as it is (left to
        the system's resolver), any other host's addresses, resolved once and every one judged
        (`OutboundRefused`; `TimeoutError` when resolving outlasts `timeout`)."""
        normalised = host.lower().strip("[]")
        if normalised in self.allowed:
            return [host]
        async with asyncio.timeout(timeout):
            addresses = await _addresses(normalised, self.resolver)
        _judge(normalised, addresses)
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109  (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are refused by the outbound guard")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every connection passes `GuardedBackend` (the JWKS client's)."""

    def __init__(
        self,
        allowed_hosts: Collection[str],
        *,
        max_connections: int = 20,
        max_keepalive_connections: int = 10,
        keepalive_expiry: float = 5.0,
        resolver: Resolver | None = None,
    ) -> None:
        self.backend = GuardedBackend(allowed_hosts, resolver=resolver)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),  # httpx's defaults (certifi)
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = httpcore_request(request)
        with _httpx_errors():
            response = await self._pool.handle_async_request(core)
        stream = response.stream
        if not isinstance(stream, typing.AsyncIterable):
            raise TypeError("httpcore answered with a synchronous stream")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Stream(stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as the httpx ones of the same name (as httpx's own transport)."""
    try:
        yield
    except Exception as exc:
        mapped = getattr(httpx, type(exc).__name__, None)
        if type(exc).__module__.startswith("httpcore") and isinstance(mapped, type):
            if issubclass(mapped, httpx.TransportError):
                raise mapped(str(exc)) from exc
        raise


class _Stream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _httpx_errors():
                await aclose()


def httpcore_request(request: httpx.Request) -> httpcore.Request:
    """An httpx request as httpcore takes it (for transports over an httpcore pool)."""
    if not isinstance(request.stream, httpx.AsyncByteStream):
        raise TypeError("an async transport needs an async request body")
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )

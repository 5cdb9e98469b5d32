"""The outbound guard: IANA special-purpose addresses, every IPv4 embedding in IPv6, and the
check applied to the address a connection is actually opened to (DNS rebinding)."""

from __future__ import annotations

import ipaddress

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.authz import upstream as upstream_module
from app.core import outbound
from app.core.outbound import GuardedBackend, GuardedTransport, OutboundRefused, refusal
from tests.conftest import make_endpoint

# Not globally reachable (IPv4), one or more per IANA registry entry.
REFUSED_V4 = [
    "0.0.0.0", "0.1.2.3",
    "10.0.0.1", "10.255.255.255",
    "100.64.0.1", "100.100.100.200", "100.127.255.254",  # RFC 6598 shared space
    "127.0.0.1", "127.1.2.3",
    "169.254.169.254", "169.254.0.1",
    "172.16.0.1", "172.31.255.255",
    "192.0.0.1", "192.0.0.8", "192.0.0.9", "192.0.0.170", "192.0.0.171",
    "192.0.2.1",
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1", "198.19.255.255",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
]  # fmt: skip
PUBLIC_V4 = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "100.63.255.255", "100.128.0.1", "172.32.0.1"]

REFUSED_V6 = [
    "::", "::1",
    "::ffff:127.0.0.1", "::ffff:100.64.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",
    "::127.0.0.1", "::8.8.8.8",  # IPv4-compatible (deprecated), whatever it embeds
    "2002:a9fe:a9fe::", "2002:7f00:1::", "2002:a00:1::1", "2002:6440:1::",  # 6to4
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, public server and client
    "2001:0:a9fe:a9fe::1", "2001:0:808:808:0:0:80ff:fffe",  # Teredo: private server/client
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::6464:64c8",  # NAT64 well-known
    "64:ff9b:1::1", "64:ff9b:1:808:8:800::",  # NAT64 local use
    "100::1", "100:0:0:1::1",
    "2001:db8::1", "2001:2::1", "2001:10::1", "3fff::1",
    "fc00::1", "fd12:3456::1",
    "fe80::1", "fe80::1%1",
    "fec0::1", "feff::1",  # deprecated site-local
    "ff02::1", "ff0e::1",
    "5f00::1", "4000::1", "::ffff:0:1.2.3.4",
]  # fmt: skip
PUBLIC_V6 = [
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED_V4 + REFUSED_V6)
def test_not_globally_reachable_is_refused(address):
    assert refusal(address) is not None


@pytest.mark.parametrize("address", PUBLIC_V4 + PUBLIC_V6)
def test_globally_reachable_is_accepted(address):
    assert refusal(address) is None


REFUSED_NETS = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)]  # fmt: skip


@st.composite
def refused_v4(draw):
    net = draw(st.sampled_from(REFUSED_NETS))
    offset = draw(st.integers(0, net.num_addresses - 1))
    return net[offset]


def embeddings(v4: ipaddress.IPv4Address) -> dict[str, ipaddress.IPv6Address]:
    n = int(v4)
    packed = v4.packed
    return {
        "mapped": ipaddress.IPv6Address(0xFFFF << 32 | n),
        "compatible": ipaddress.IPv6Address(n),
        "6to4": ipaddress.IPv6Address(0x2002 << 112 | n << 80 | 1),
        "teredo-server": ipaddress.IPv6Address(
            0x20010000 << 96 | n << 64 | 0x08080808 ^ 0xFFFFFFFF
        ),
        "teredo-client": ipaddress.IPv6Address(
            0x20010000 << 96 | 0x08080808 << 64 | n ^ 0xFFFFFFFF
        ),
        "nat64": ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n),
        "nat64-local": ipaddress.IPv6Address(
            b"\x00\x64\xff\x9b\x00\x01" + packed[:2] + b"\x00" + packed[2:] + b"\x00" * 5
        ),
    }


@given(refused_v4())
def test_every_embedding_of_a_refused_ipv4_is_refused(v4):
    assert refusal(v4) is not None
    for kind, v6 in embeddings(v4).items():
        assert refusal(v6) is not None, kind
        assert refusal(str(v6)) is not None, kind
        if kind not in ("compatible",):
            assert v4 in outbound.embedded_ipv4(v6), kind


@given(st.sampled_from(PUBLIC_V4))
def test_public_ipv4_embedded_where_the_registry_allows(v4_text):
    v4 = ipaddress.IPv4Address(v4_text)
    found = embeddings(v4)
    for kind in ("mapped", "6to4", "nat64"):
        assert refusal(found[kind]) is None, kind
    for kind in ("compatible", "teredo-server", "teredo-client", "nat64-local"):
        assert refusal(found[kind]) is not None, kind  # the prefix itself is not routable


@given(st.integers(0, 2**32 - 1))
def test_never_looser_than_python_on_ipv4(n):
    ip = ipaddress.IPv4Address(n)
    if not ip.is_global or ip.is_multicast:
        assert refusal(ip) is not None


@given(st.integers(0, 2**128 - 1))
def test_never_looser_than_python_on_ipv6(n):
    ip = ipaddress.IPv6Address(n)
    if ip.ipv4_mapped is not None or ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return  # judged by the IPv4 address inside
    if ip.sixtofour is not None:
        return
    if not ip.is_global or ip.is_multicast or ip.is_site_local:
        assert refusal(ip) is not None


@given(st.integers(0, 2**128 - 1))
def test_never_crashes(n):
    reason = refusal(str(ipaddress.IPv6Address(n)))
    assert reason is None or isinstance(reason, str)


@pytest.mark.parametrize(
    "url",
    [
        "https://100.100.100.200/latest/meta-data",
        "https://100.64.0.1/",
        "https://[2002:a9fe:a9fe::]/",
        "https://[2002:7f00:1::]/",
        "https://[::ffff:100.64.0.1]/",
        "https://[fec0::1]/",
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://[2001:0:a9fe:a9fe::1]/",
        "https://[fe80::1%25eth0]/",
    ],
)
async def test_urls_naming_such_addresses_are_refused(url):
    with pytest.raises(OutboundRefused):
        await outbound.check_outbound_url(url, ["127.0.0.1"])


async def test_names_resolving_to_such_addresses_are_refused(monkeypatch):
    async def dns(host):
        return {"meta.test": ["100.100.100.200"], "mixed.test": ["8.8.8.8", "fec0::1"]}[host]

    monkeypatch.setattr(outbound, "_getaddrinfo", dns)
    for host in ("meta.test", "mixed.test"):
        outbound._resolved.pop(host, None)
        with pytest.raises(OutboundRefused):
            await outbound.check_outbound_url(f"https://{host}/", [])


# The check at connect time.


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self):
        self.connected: list[str] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ASYNC109
        self.connected.append(host)
        raise httpcore.ConnectError("test backend connects nowhere")

    async def sleep(self, seconds):
        return None


async def test_the_connection_goes_only_to_checked_addresses():
    answers = {"public.test": ["93.184.215.14", "2606:4700:4700::1111"]}

    async def dns(host):
        return answers[host]

    inner = RecordingBackend()
    backend = GuardedBackend(["127.0.0.1"], inner=inner, resolver=dns)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("public.test", 443)
    assert inner.connected == ["93.184.215.14", "2606:4700:4700::1111"]  # not the name again

    answers["public.test"] = ["93.184.215.14", "127.0.0.1"]  # rebinding: one private answer
    inner.connected.clear()
    with pytest.raises(httpcore.ConnectError, match="outbound guard"):
        await backend.connect_tcp("public.test", 443)
    assert inner.connected == []

    for literal in ("100.100.100.200", "2002:a9fe:a9fe::", "::ffff:100.64.0.1", "fec0::1"):
        with pytest.raises(httpcore.ConnectError, match="outbound guard"):
            await backend.connect_tcp(literal, 443)
    assert inner.connected == []

    with pytest.raises(httpcore.ConnectError):  # the allow-list still lets 127.0.0.1 through
        await backend.connect_tcp("127.0.0.1", 80)
    assert inner.connected == ["127.0.0.1"]
    with pytest.raises(httpcore.ConnectError, match="outbound guard"):
        await backend.connect_unix_socket("/run/docker.sock")


async def test_guarded_transport_refuses_through_httpx():
    async def dns(host):
        return ["169.254.169.254"]

    async with httpx.AsyncClient(transport=GuardedTransport([], resolver=dns)) as client:
        with pytest.raises(httpx.ConnectError, match="outbound guard"):
            await client.get("https://metadata.test/latest/meta-data")


class Rebinding:
    """A DNS that answers a public address first and loopback afterwards."""

    def __init__(self, host):
        self.host = host
        self.calls = 0

    async def __call__(self, host):
        if host != self.host:
            raise OSError("unknown host")
        self.calls += 1
        return ["93.184.215.14"] if self.calls == 1 else ["127.0.0.1"]


def spy(backend: GuardedBackend, monkeypatch) -> list[str]:
    """The addresses a guarded backend (the JWKS client's) connects to."""
    seen: list[str] = []
    real = backend.inner.connect_tcp

    async def connect_tcp(host, *args, **kwargs):
        seen.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(backend.inner, "connect_tcp", connect_tcp)
    return seen


def spy_pool(monkeypatch) -> list[str]:
    """The addresses the forwarding pool opens sockets to."""
    seen: list[str] = []
    real = upstream_module._open_socket

    async def open_socket(host, *args, **kwargs):
        seen.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(upstream_module, "_open_socket", open_socket)
    return seen


async def test_forwarding_checks_the_address_it_connects_to(
    client, tenant, runtime, upstream, monkeypatch
):
    host = "rebind-upstream.test"
    dns = Rebinding(host)
    monkeypatch.setattr(outbound, "_getaddrinfo", dns)
    outbound._resolved.pop(host, None)
    port = httpx.URL(upstream).port
    ep = await make_endpoint(tenant, upstream_url=f"https://{host}:{port}/echo")  # public today
    seen = spy_pool(monkeypatch)
    r = await client.post(f"/api/v1/endpoints/{ep['slug']}/query", headers=tenant.owner.headers)
    assert r.status_code == 502, r.text
    assert dns.calls >= 2  # resolved again at connect time
    assert "127.0.0.1" not in seen


async def test_the_forwarding_pool_connects_only_to_the_judged_addresses(monkeypatch):
    """The pool resolves through the guard once and opens sockets to those very addresses (no
    socket is opened here: the stand-in refuses every connection)."""
    answers = {"public.test": ["93.184.215.14", "2606:4700:4700::1111"]}

    async def dns(host):
        return answers[host]

    opened: list[str] = []

    async def open_socket(host, *args, **kwargs):
        opened.append(host)
        raise ConnectionRefusedError("not here")

    monkeypatch.setattr(upstream_module, "_open_socket", open_socket)
    transport = upstream_module.UpstreamTransport(
        max_connections=2, network_backend=GuardedBackend(["127.0.0.1"], resolver=dns)
    )
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("https://public.test/")
        assert opened == ["93.184.215.14", "2606:4700:4700::1111"]  # never the name again
        answers["public.test"] = ["93.184.215.14", "10.0.0.7"]  # rebinding: one private answer
        opened.clear()
        with pytest.raises(httpx.ConnectError, match="outbound guard"):
            await http.get("https://public.test/")
        assert opened == []
        assert transport.open == 0  # every refused connection gave its slot back

"""https upstreams through the forwarding pool's own connection: the certificate is verified
against trusted roots and the host name (a self-signed upstream, or one whose certificate names
another host, is refused), and a trusted one is served. Certificates are made here, for a CA
that exists only in this test."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.authz.upstream import UpstreamTransport
from tests.support.servers import serve_raw


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for `localhost` only, its key) as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Warden test CA"))
        .issuer_name(_name("Warden test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def server_tls(pki: tuple[Path, Path, Path]) -> ssl.SSLContext:
    _, cert_file, key_file = pki
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
        await writer.drain()


def pool(ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=UpstreamTransport(max_connections=2, ssl_context=ssl_context),
        timeout=httpx.Timeout(5.0),
    )


async def test_a_trusted_upstream_is_served_over_tls(pki):
    trust = ssl.create_default_context(cafile=str(pki[0]))
    async with serve_raw(answer_ok, tls=server_tls(pki), host="localhost") as url:
        async with pool(trust) as http:
            for _ in range(3):  # the TLS connection is kept and reused
                r = await http.get(f"{url}/")
                assert (r.status_code, r.text) == (200, "secret")
            assert http._transport.open == 1  # type: ignore[attr-defined]
            peer = r.extensions["network_stream"].get_extra_info("ssl_object")
            assert peer is not None
            assert peer.getpeercert()["subject"] == ((("commonName", "localhost"),),)


async def test_an_upstream_with_an_untrusted_certificate_is_refused(pki):
    """The default roots (certifi's) do not know this CA: no request is sent."""
    async with serve_raw(answer_ok, tls=server_tls(pki), host="localhost") as url:
        async with pool() as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"{url}/")
            assert http._transport.open == 0  # type: ignore[attr-defined]


async def test_a_certificate_for_another_host_is_refused(pki):
    """Trusted CA, but the certificate names `localhost`, not the address asked for."""
    trust = ssl.create_default_context(cafile=str(pki[0]))
    async with serve_raw(answer_ok, tls=server_tls(pki)) as url:  # https://127.0.0.1:…
        async with pool(trust) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"{url}/")
            assert http._transport.open == 0  # type: ignore[attr-defined]

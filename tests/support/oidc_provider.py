"""A real OpenID provider for tests: panva's `oidc-provider` (tests/support/oidc) on node.

`scripts/test` installs it (`npm ci`) next to the virtualenv; `.ci/run` installs node when it is
missing. Without node or the package the OIDC tests skip on a developer's machine and FAIL in CI.
The provider signs with keys made here, so tests can also forge tokens with its real key."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.core import jose
from tests.support.servers import free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
NODE = shutil.which("node")
KID = "warden-test-rs256"


def _b64int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    """The private JWK of an RSA key (what oidc-provider's `jwks` option takes)."""
    priv = key.private_numbers()
    pub = priv.public_numbers
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
        "n": _b64int(pub.n),
        "e": _b64int(pub.e),
        "d": _b64int(priv.d),
        "p": _b64int(priv.p),
        "q": _b64int(priv.q),
        "dp": _b64int(priv.dmp1),
        "dq": _b64int(priv.dmq1),
        "qi": _b64int(priv.iqmp),
    }


def require_node() -> str:
    """node and the installed provider, or skip (fail in CI: nothing skips there)."""
    problem = None
    if NODE is None:
        problem = "node is not installed (.ci/run installs Debian's nodejs)"
    elif not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        problem = "oidc-provider is not installed (scripts/test runs npm ci)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the OIDC tests: {problem}")
        pytest.skip(problem)
    assert NODE is not None
    return NODE


@dataclass
class TestProvider:
    """A running provider: its issuer URL and signing key."""

    issuer: str
    key: rsa.RSAPrivateKey
    pid: int

    __test__ = False  # not a test class

    async def register_client(
        self,
        redirect_uris: list[str],
        *,
        auth: str = "client_secret_basic",
        backchannel_logout_uri: str | None = None,
        post_logout_redirect_uris: list[str] | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Dynamic client registration (RFC 7591): the provider's answer (client_id, secret)."""
        body: dict[str, Any] = {
            "redirect_uris": redirect_uris,
            "response_types": ["code"],
            "grant_types": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_method": auth,
            "post_logout_redirect_uris": post_logout_redirect_uris or [],
        }
        if backchannel_logout_uri is not None:
            body["backchannel_logout_uri"] = backchannel_logout_uri
            body["backchannel_logout_session_required"] = True
        if jwks is not None:
            body["jwks"] = dict(jwks)
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.post(f"{self.issuer}/reg", json=body)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    def sign(self, claims: Mapping[str, Any], *, kid: str = KID, alg: str = "RS256") -> str:
        """A token signed with the provider's own key (for forged-claim attacks)."""
        return jose.sign(claims, self.key, kid=kid, alg=alg)


@contextlib.contextmanager
def run_provider(access_token_ttl: int = 3600) -> Iterator[TestProvider]:
    """Start the provider on a free port; stop it by its PID."""
    node = require_node()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder = tempfile.mkdtemp(prefix="warden-oidc-")
    jwks_file = Path(folder) / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [private_jwk(key, KID)]}))
    port = free_port()
    log = (
        open(os.environ["OIDC_DEBUG_LOG"], "w+b")
        if os.environ.get("OIDC_DEBUG_LOG")
        else tempfile.TemporaryFile()
    )
    proc = subprocess.Popen(
        [node, str(OIDC_DIR / "provider.mjs")],
        cwd=OIDC_DIR,
        env={
            **os.environ,
            "OIDC_PORT": str(port),
            "OIDC_JWKS_FILE": str(jwks_file),
            "OIDC_ACCESS_TOKEN_TTL": str(access_token_ttl),
            "NODE_ENV": "test",
        },
        stdout=log,
        stderr=log,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(log.read().decode(errors="replace"))
            try:
                r = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the OpenID provider did not start")
            time.sleep(0.05)
        yield TestProvider(issuer=issuer, key=key, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


# --- driving the provider's pages without a browser ----------------------------------------

_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.IGNORECASE | re.DOTALL)
_INPUT = re.compile(r"<input\b([^>]*)>", re.IGNORECASE)
_ATTR = re.compile(r'([a-zA-Z_:-]+)="([^"]*)"')


def _attrs(text: str) -> dict[str, str]:
    return {k.lower(): html.unescape(v) for k, v in _ATTR.findall(text)}


def form_of(page: str) -> tuple[str, dict[str, str]]:
    """The first form of a page: its action and its named inputs with their values."""
    match = _FORM.search(page)
    assert match is not None, page[:500]
    action = _attrs(match.group(1)).get("action", "")
    fields = {}
    for raw in _INPUT.findall(match.group(2)):
        attrs = _attrs(raw)
        if "name" in attrs:
            fields[attrs["name"]] = attrs.get("value", "")
    return action, fields


async def provider_login(
    client: httpx.AsyncClient, start_url: str, login: str, *, warden: str
) -> str:
    """Start a sign-in at Warden, log in on the provider's form, and return the callback URL
    the provider redirects the browser to (not yet visited)."""
    r = await client.get(start_url)
    assert r.status_code == 303, r.text
    url = r.headers["location"]
    method, data = "GET", None
    for _ in range(20):
        r = await client.request(method, url, data=data)
        if r.is_redirect:
            target = urljoin(str(r.url), r.headers["location"])
            if target.startswith(warden) and urlsplit(target).path.endswith("/callback"):
                return target
            url, method, data = target, "GET", None
            continue
        assert r.status_code == 200, (r.status_code, r.text[:500])
        action, fields = form_of(r.text)
        if "login" in fields:
            fields["login"] = login
            fields["password"] = "any"
        url, method, data = urljoin(str(r.url), action), "POST", fields
    raise AssertionError("the provider never redirected back")

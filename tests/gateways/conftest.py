"""Real gateways (nginx, Envoy, Traefik) on 127.0.0.1 with a Warden process as their auth service,
in front of an echo upstream, configured from the templates that docs/gateways.md shows."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import PASSWORD
from tests.support.processes import warden_process
from tests.support.servers import free_port, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deploy" / "gateways"
DOC = ROOT / "docs" / "gateways.md"


def render(template: str, values: dict[str, str]) -> str:
    """Replace the documented addresses; each must occur, so a template change cannot make a
    test silently run against the documented (absent) addresses."""
    for old, new in values.items():
        assert old in template, f"template no longer mentions {old}"
        template = template.replace(old, new)
    return template


def binary(name: str) -> str:
    """The gateway's executable: missing is a failure in CI, a skip elsewhere."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None and Path(f"/usr/sbin/{name}").exists():
        found = f"/usr/sbin/{name}"
    if found is None:
        message = f"{name} is not installed (.ci/run and `pip install -e .[dev]` install it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


async def _echo(request: Request) -> Response:
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "header_list": [k.lower() for k, _ in request.headers.items()],
        }
    )


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[str]:
    """An upstream echoing any path and method (the protected app)."""
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=methods)])
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def warden_url(database: str) -> Iterator[str]:
    """A Warden server process on the test database, trusting the gateway's X-Forwarded-For
    (module-scoped: it stops with the gateway tests, leaving SQLite to the rest of the suite)."""
    env = {"DATABASE_URL": database, "TRUST_FORWARDED_FOR": "true", "LOG_LEVEL": "warning"}
    with warden_process(env) as url:
        yield url


@dataclass
class Caller:
    """Someone calling through a gateway: headers to send, and who Warden should say they are."""

    headers: dict[str, str]
    id: str = ""
    email: str = ""


@dataclass
class Site:
    """A tenant protecting one host, with callers of every kind."""

    host: str
    tenant: str
    alice: Caller  # a member: allowed
    mallory: Caller  # a member an access policy denies
    flooder: Caller  # a member who floods the rate-limited prefix
    token: str  # alice's raw token (cookie tests)
    forward_key: Caller  # an API key with authz:forward
    query_key: Caller  # an API key without it
    foreign: Caller  # a member of another tenant


def _register(client: httpx.Client, slug: str) -> dict[str, str]:
    email = f"owner@{slug}.example"
    r = client.post(
        "/api/v1/auth/register",
        json={"tenant": slug, "tenant_name": slug, "email": email, "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    return _login(client, slug, email)


def _login(client: httpx.Client, slug: str, email: str) -> dict[str, str]:
    r = client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD, "tenant": slug}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _member(client: httpx.Client, slug: str, owner: dict[str, str], email: str) -> Caller:
    r = client.post(
        "/api/v1/users",
        headers=owner,
        json={"email": email, "password": PASSWORD, "role": "member"},
    )
    assert r.status_code == 201, r.text
    return Caller(_login(client, slug, email), r.json()["id"], email)


def _key(client: httpx.Client, owner: dict[str, str], scopes: list[str]) -> Caller:
    r = client.post("/api/v1/api-keys", headers=owner, json={"name": "gw", "scopes": scopes})
    assert r.status_code == 201, r.text
    return Caller({"X-API-Key": r.json()["key"]}, r.json()["id"], "")


def make_site(warden: str) -> Site:
    """A fresh tenant binding a fresh host: the whole host (exempt `/health`, deny
    `*@blocked.example`, refuse DELETE, only from 127.0.0.1) and `/limited` under it (3 requests
    a minute)."""
    slug = f"gw-{secrets.token_hex(5)}"
    host = f"{slug}.example.test"
    with httpx.Client(base_url=warden, timeout=10) as client:
        owner = _register(client, slug)

        def post(path: str, body: dict[str, object]) -> None:
            r = client.post(path, headers=owner, json=body)
            assert r.status_code == 201, r.text

        post(
            "/api/v1/endpoints",
            {"name": "Site", "slug": "site", "host": host, "exempt_paths": ["/health"]},
        )
        post(
            "/api/v1/endpoints/site/policies",
            {
                "policy_type": "access",
                "configuration": {"mode": "deny", "patterns": ["*@blocked.example"]},
            },
        )
        post(
            "/api/v1/endpoints/site/policies",
            {
                "policy_type": "rule",
                "configuration": {
                    "rule": "match",
                    "eval": "!=",
                    "f1": "args.request.method",
                    "f2": "DELETE",
                },
            },
        )
        post(
            "/api/v1/endpoints/site/policies",
            {
                "policy_type": "rule",
                "configuration": {
                    "rule": "match",
                    "eval": "==",
                    "f1": "args.request.ip",
                    "f2": "127.0.0.1",
                },
            },
        )
        post(
            "/api/v1/endpoints",
            {"name": "Limited", "slug": "limited", "host": host, "path_prefix": "/limited"},
        )
        post(
            "/api/v1/endpoints/limited/policies",
            {
                "policy_type": "rate_limit",
                "configuration": {
                    "requests_per_period": 3,
                    "period_seconds": 60,
                    "scope": "per_user",
                },
            },
        )
        alice = _member(client, slug, owner, f"alice@{slug}.example")
        other = f"gw-{secrets.token_hex(5)}"
        other_owner = _register(client, other)
        return Site(
            host=host,
            tenant=slug,
            alice=alice,
            mallory=_member(client, slug, owner, "mallory@blocked.example"),
            flooder=_member(client, slug, owner, f"flood@{slug}.example"),
            token=alice.headers["Authorization"].removeprefix("Bearer "),
            forward_key=_key(client, owner, ["authz:forward"]),
            query_key=_key(client, owner, ["endpoints:query"]),
            foreign=_member(client, other, other_owner, f"eve@{other}.example"),
        )


@dataclass
class Gateway:
    """A running gateway: its base URL and the site it protects."""

    name: str
    url: str
    site: Site

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A request through the gateway for the site's host."""
        headers = {"Host": self.site.host, **dict(kwargs.pop("headers", {}) or {})}  # type: ignore[call-overload]
        return httpx.request(
            method,
            self.url + path,
            headers=headers,
            timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def running(argv: list[str], workdir: Path, ready: Callable[[], bool]) -> Iterator[None]:
    """Run a gateway until the block ends; fail with its output if it never gets ready."""
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                output = (workdir / "gateway.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{argv[0]} did not become ready:\n{output}")
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    break
            time.sleep(0.1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass(frozen=True)
class Addresses:
    """Where the test's Warden, upstream and gateway listen, and the site's host."""

    warden: int
    upstream: int
    listen: int
    host: str


def _nginx(workdir: Path, at: Addresses) -> list[str]:
    exe = binary("nginx")
    site = render(
        (TEMPLATES / "nginx.conf").read_text(),
        {
            "127.0.0.1:8000": f"127.0.0.1:{at.warden}",
            "127.0.0.1:9000": f"127.0.0.1:{at.upstream}",
            "127.0.0.1:8080": f"127.0.0.1:{at.listen}",
            "api.example.com": at.host,
        },
    )
    (workdir / "warden.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        "worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"    include {workdir}/warden.conf;\n"
        "}\n"
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return [
        exe,
        "-p",
        str(workdir),
        "-e",
        str(workdir / "error.log"),
        "-c",
        str(workdir / "nginx.conf"),
        "-g",
        f"daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log warn; {user}",
    ]


def _envoy(workdir: Path, at: Addresses) -> list[str]:
    exe = binary("envoy")
    config = render(
        (TEMPLATES / "envoy.yaml").read_text(),
        {
            "http://127.0.0.1:8000": f"http://127.0.0.1:{at.warden}",
            "port_value: 8000": f"port_value: {at.warden}",
            "port_value: 9000": f"port_value: {at.upstream}",
            "port_value: 8080": f"port_value: {at.listen}",
            "api.example.com": at.host,
        },
    )
    (workdir / "envoy.yaml").write_text(config)
    return [
        exe,
        "-c",
        str(workdir / "envoy.yaml"),
        "--disable-hot-restart",
        "--log-level",
        "warn",
        "--concurrency",
        "1",
    ]


def _traefik(workdir: Path, at: Addresses) -> list[str]:
    exe = binary("traefik")
    dynamic = render(
        (TEMPLATES / "traefik-dynamic.yml").read_text(),
        {
            "127.0.0.1:8000": f"127.0.0.1:{at.warden}",
            "127.0.0.1:9000": f"127.0.0.1:{at.upstream}",
            "api.example.com": at.host,
        },
    )
    (workdir / "dynamic.yml").write_text(dynamic)
    static = render(
        (TEMPLATES / "traefik.yml").read_text(),
        {
            "127.0.0.1:8080": f"127.0.0.1:{at.listen}",
            "/etc/traefik/dynamic.yml": str(workdir / "dynamic.yml"),
        },
    )
    (workdir / "traefik.yml").write_text(static)
    return [exe, f"--configFile={workdir / 'traefik.yml'}"]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


LAUNCHERS = {"nginx": _nginx, "envoy": _envoy, "traefik": _traefik}


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def gateway(request, warden_url, echo_upstream) -> Iterator[Gateway]:
    """Each gateway in turn, protecting a fresh site, configured from its documented template."""
    name = request.param
    site = make_site(warden_url)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"warden-{name}-"))
    at = Addresses(_port(warden_url), _port(echo_upstream), port, site.host)
    argv = LAUNCHERS[name](workdir, at)
    gw = Gateway(name, f"http://127.0.0.1:{port}", site)
    with running(argv, workdir, lambda: gw.request("GET", "/health").status_code == 200):
        yield gw
    shutil.rmtree(workdir, ignore_errors=True)

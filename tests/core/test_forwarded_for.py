"""Only TRUST_FORWARDED_FOR decides whether X-Forwarded-For counts, whatever serves Warden.

A bare `uvicorn app.main:app` turns on uvicorn's proxy headers and trusts loopback: its
middleware replaces `scope["client"]` with the request's X-Forwarded-For before Warden runs, so
a local client could pick a new apparent address per request and walk past the per-IP login
limit. These tests run that exact command in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from app.core.context import current_request
from app.core.middleware import RequestContextMiddleware, peer_is_rewritten
from tests.support.servers import free_port


def bare_uvicorn(env: dict[str, str], *extra: str):
    """`python -m uvicorn app.main:app` with uvicorn's defaults (proxy headers on)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", *extra]
    return start(command, env, port)


def warden_serve(env: dict[str, str]):
    """`warden serve` (both apps, uvicorn configured by Warden)."""
    port, internal = free_port(), free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--internal-host", "127.0.0.1"]
    command += ["--internal-port", str(internal)]
    return start(command, {"LOG_LEVEL": "warning", **env}, port)


def start(command: list[str], env: dict[str, str], port: int):
    # In-process limits: each server counts afresh (the shared Redis would carry one case's
    # per-address counts into the next); where the address comes from is what is tested.
    environment = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        command,
        env={**environment, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("warden did not become ready")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def login_statuses(url: str, count: int, forwarded=lambda i: f"203.0.113.{i + 1}") -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(count):
            headers = {} if forwarded is None else {"X-Forwarded-For": forwarded(i)}
            r = client.post(
                "/api/v1/auth/login",
                # A fresh account each time: only the per-IP limit can bite.
                json={
                    "tenant": "nobody",
                    "email": f"u{uuid.uuid4().hex[:8]}@x.example",
                    "password": "wrong-password-123",
                },
                headers=headers,
            )
            statuses.append(r.status_code)
    return statuses


ENV = {
    "LOGIN_RATE_LIMIT": "3/minute",
    "GLOBAL_RATE_LIMIT": "100000/minute",
    "TRUST_FORWARDED_FOR": "false",
}


@pytest.mark.parametrize(
    "rotate",
    [
        lambda i: f"203.0.113.{i + 1}",
        lambda i: f"198.51.100.{i + 1}:{4000 + i}",
        lambda i: f"[2001:db8::{i + 1:x}]",
        lambda i: f"10.0.0.{i + 1}, 127.0.0.1",  # the rightmost untrusted entry is taken
    ],
    ids=["ipv4", "ipv4-port", "ipv6", "chain"],
)
def test_rotating_x_forwarded_for_does_not_escape_the_login_limit(database, rotate):
    proc, url = bare_uvicorn({"DATABASE_URL": database, **ENV})
    try:
        statuses = login_statuses(url, 6, rotate)
    finally:
        stop(proc)
    assert statuses[:3] == [401, 401, 401], statuses
    assert statuses[3:] == [429, 429, 429], statuses


def test_warden_serve_ignores_the_header_too(database):
    proc, url = warden_serve({"DATABASE_URL": database, **ENV})
    try:
        statuses = login_statuses(url, 5)
    finally:
        stop(proc)
    assert statuses == [401, 401, 401, 429, 429], statuses


def test_without_the_header_the_limit_is_per_peer_as_before(database):
    proc, url = bare_uvicorn({"DATABASE_URL": database, **ENV}, "--no-proxy-headers")
    try:
        assert login_statuses(url, 5, None) == [401, 401, 401, 429, 429]
    finally:
        stop(proc)


def test_with_trust_forwarded_for_the_header_counts(database):
    env = {"DATABASE_URL": database, **ENV, "TRUST_FORWARDED_FOR": "true"}
    proc, url = bare_uvicorn(env)
    try:
        statuses = login_statuses(url, 6)  # a trusted proxy names six different clients
    finally:
        stop(proc)
    assert statuses == [401] * 6, statuses


# The middleware on its own.


async def seen_ip(scope_client, headers, trust=False):
    seen = {}

    async def app(scope, receive, send):
        seen["ip"] = current_request().ip
        seen["client"] = scope.get("client")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        return None

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": scope_client,
    }
    await RequestContextMiddleware(app, trust_forwarded_for=trust)(scope, receive, send)
    return seen


@pytest.mark.parametrize(
    ("client", "xff", "rewritten"),
    [
        (("1.2.3.4", 0), ["1.2.3.4"], True),
        (("1.2.3.4", 80), ["1.2.3.4:80"], True),
        (("::1", 0), ["[::1]:443"], True),
        (("2001:db8::1", 0), ["2001:db8::1"], True),
        (("5.6.7.8", 0), ["9.9.9.9", "5.6.7.8, 127.0.0.1"], True),
        (("127.0.0.1", 51234), ["1.2.3.4"], False),  # a real peer behind a proxy
        (("127.0.0.1", 51234), [], False),
        (("10.0.0.5", 40000), ["10.0.0.50"], False),
    ],
)
async def test_a_rewritten_peer_is_recognised(client, xff, rewritten):
    assert peer_is_rewritten({"client": client}, xff) is rewritten
    seen = await seen_ip(client, [("x-forwarded-for", v) for v in xff])
    if rewritten:
        assert seen["ip"] is None
        assert seen["client"] is None
    else:
        assert seen["ip"] == client[0]
    trusted = await seen_ip(client, [("x-forwarded-for", v) for v in xff], trust=True)
    assert trusted["ip"] == (xff[0].split(",")[0].strip() if xff else client[0])

"""The `warden` command line, run as a user would (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import jwt as pyjwt

from tests.conftest import PASSWORD


def warden(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (blocking: async tests call it through `awarden`)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def awarden(*args: str, env: dict[str, str] | None = None) -> Any:
    """The CLI off the event loop, so the in-process app (and its audit writer) keeps running
    while the child process waits for the SQLite write lock."""
    return await asyncio.to_thread(warden, *args, env=env)


def test_migrate_on_a_fresh_database(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.db"
    result = warden("migrate", env={"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert "migrations applied" in result.stdout
    again = warden("migrate", env={"DATABASE_URL": url})
    assert again.returncode == 0


async def test_tenant_create_prints_credentials_once_and_they_work(client, database):
    import uuid

    slug = f"cli-{uuid.uuid4().hex[:8]}"
    result = await awarden("tenant", "create", slug, "--owner-email", f"boss@{slug}.example")
    assert result.returncode == 0, result.stderr
    password = result.stdout.split("password:")[1].strip()
    r = await client.post(
        "/api/v1/auth/login",
        json={"email": f"boss@{slug}.example", "password": password, "tenant": slug},
    )
    assert r.status_code == 200
    assert (
        pyjwt.decode(r.json()["access_token"], options={"verify_signature": False})["role"]
        == "owner"
    )
    again = await awarden("tenant", "create", slug, "--owner-email", "x@y.example", "--if-missing")
    assert again.returncode == 0
    assert "already exists" in again.stdout
    duplicate = await awarden("tenant", "create", slug, "--owner-email", "x@y.example")
    assert duplicate.returncode == 1
    weak = await awarden(
        "tenant", "create", f"{slug}-2", "--owner-email", "x@y.example", "--password", "password"
    )
    assert weak.returncode == 1
    assert "password" in weak.stderr


async def test_keys_rotate_publishes_new_key_and_keeps_old(client, runtime, tenant):
    old_kid = pyjwt.get_unverified_header(tenant.owner.access_token)["kid"]
    result = await awarden("keys", "rotate")
    assert result.returncode == 0, result.stderr
    new_kid = result.stdout.strip().split()[-1]
    # The running process picks the new key up on an unknown kid or its periodic reload.
    await runtime.signing_keys.load(create_if_missing=False)
    kids = {k["kid"] for k in (await client.get("/.well-known/jwks.json")).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    assert (await client.get("/api/v1/auth/me", headers=tenant.owner.headers)).status_code == 200
    fresh = await tenant.login(tenant.owner.email, PASSWORD)
    assert pyjwt.get_unverified_header(fresh["access_token"])["kid"] == new_kid


def test_generate_master_key():
    result = warden("keys", "generate-master")
    assert result.returncode == 0
    from app.core.crypto import KeyRing

    KeyRing.from_settings([result.stdout.strip()])


def test_missing_master_key_fails_clearly(tmp_path):
    url = f"sqlite:///{tmp_path}/nokey.db"
    assert warden("migrate", env={"DATABASE_URL": url}).returncode == 0
    result = warden("keys", "rotate", env={"DATABASE_URL": url, "WARDEN_MASTER_KEY": ""})
    assert result.returncode != 0
    assert "WARDEN_MASTER_KEY" in result.stderr


def test_health_of_a_served_process(database):
    from tests.support.processes import warden_process

    with warden_process({"DATABASE_URL": database}) as url:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def _start_dev(
    cwd, port: int, internal_port: int
) -> tuple[subprocess.Popen[str], list[str], list[str]]:
    """`warden dev` as a person runs it (its own .env and SQLite file in `cwd`); returns the
    process, the command lines it printed under "Try it", and everything it printed."""
    import queue
    import threading

    from tests.support.environment import settings_env_names

    names, _ = settings_env_names()
    env = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in names and k != "WARDEN_ENV_FILE"  # dev reads the .env it writes
    }
    command = [sys.executable, "-m", "app.cli", "dev", "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--internal-port", str(internal_port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    commands: list[str] = []
    while True:
        try:
            line = lines.get(timeout=90)
        except queue.Empty:
            proc.kill()
            raise AssertionError("warden dev printed no commands:\n" + "".join(seen)) from None
        if line is None:
            raise AssertionError("warden dev exited:\n" + "".join(seen))
        seen.append(line)
        if line.startswith(("  TOKEN=", "  DENIED_TOKEN=", "  curl ")):
            commands.append(line.strip())
        if len(commands) == 4:
            return proc, commands, seen


def _follow(commands: list[str]) -> list[httpx.Response]:
    """Run the printed curl commands with httpx: `VAR=$(curl … | …)` logs in and keeps the
    access token in VAR; `curl …` sends the query with $VAR expanded."""
    import shlex

    tokens: dict[str, str] = {}
    answers = []
    for command in commands:
        var = None
        if not command.startswith("curl "):
            var, _, rest = command.partition("=$(")
            command = rest.rsplit(")", 1)[0].split(" | ")[0]
        for name, value in tokens.items():
            command = command.replace(f"${name}", value)
        args = shlex.split(command)
        url = next(a for a in args if a.startswith("http://"))
        headers = dict(args[i + 1].split(": ", 1) for i, a in enumerate(args) if a == "-H")
        data = args[args.index("-d") + 1]
        r = httpx.post(url, content=data, headers=headers, timeout=30)
        if var is not None:
            assert r.status_code == 200, r.text
            tokens[var] = r.json()["access_token"]
        else:
            answers.append(r)
    return answers


def _sign_in_to_the_printed_console(printed: list[str]) -> None:
    """The printed console URL serves the sign-in page, and the printed credentials sign in
    through its form as a browser on that origin would."""
    import re

    line = next(line for line in printed if line.startswith("Console: "))
    found = re.match(
        r"Console: (http://[^/ ]+)/console \(sign in: tenant (\S+), (\S+), password (\S+)\)",
        line,
    )
    assert found is not None, line
    base, tenant, email, password = found.groups()
    with httpx.Client(base_url=base, timeout=30) as http:
        r = http.get("/console")
        assert r.status_code == 303
        assert http.get(r.headers["location"]).status_code == 200
        r = http.post(
            "/console/sign-in",
            data={"tenant": tenant, "email": email, "password": password},
            headers={"Origin": base},
        )
        assert r.status_code == 303, r.text
        assert "session_id=" in r.headers["set-cookie"]


def test_dev_serves_a_demo_endpoint_its_printed_commands_query(tmp_path):
    import signal

    from tests.support.servers import free_port

    for run in range(2):  # the second start finds the demo and points it at its new upstream
        proc, commands, printed = _start_dev(tmp_path, free_port(), free_port())
        try:
            _sign_in_to_the_printed_console(printed)
            allowed, denied = _follow(commands)
            assert allowed.status_code == 200, allowed.text
            assert allowed.json()["echo"] == {"hello": "warden"}
            assert allowed.json()["identity"]["x-user-email"] == "admin@demo.example"
            assert denied.status_code == 403, denied.text
            assert denied.json()["error"]["code"] == "access_denied"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, f"run {run}"
    env_file = (tmp_path / ".env").read_text()
    assert "SESSION_COOKIE_SECURE=false" in env_file
    assert env_file.count("WARDEN_MASTER_KEY=") == 1

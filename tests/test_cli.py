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
    await runtime.keyring.load(create_if_missing=False)
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

"""Logs of a full scenario: JSON lines with request id, tenant and principal; emails masked;
no password, token, API key or upstream credential anywhere."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid

import structlog

from tests.conftest import PASSWORD

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


class Capture:
    """Every rendered log line of the process, as the root handler would write it."""

    def __enter__(self) -> Capture:
        root = logging.getLogger()
        self.handler = logging.StreamHandler(io.StringIO())
        # The formatter app/core/logging.py installed: the lines are exactly what ships.
        formatter = next(
            h.formatter
            for h in root.handlers
            if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
        )
        self.handler.setFormatter(formatter)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.handler)

    @property
    def text(self) -> str:
        stream = self.handler.stream
        assert isinstance(stream, io.StringIO)
        return stream.getvalue()


async def test_a_full_scenario_leaks_no_secret(client, runtime, upstream):
    api = "/api/v1"
    slug = f"logs-{uuid.uuid4().hex[:8]}"
    owner_email = f"Olivia.Owner@{slug}.example"
    member_email = f"mel@{slug}.example"
    member_password = "another-long-passphrase-42"
    wrong_password = "wrong-but-still-secret-77"
    credential = "upstream-credential-value-9f8e7d"
    secrets: dict[str, str] = {
        "owner password": PASSWORD,
        "member password": member_password,
        "wrong password": wrong_password,
        "credential": credential,
    }
    with Capture() as logs:
        r = await client.post(
            f"{api}/auth/register",
            json={
                "tenant": slug,
                "tenant_name": "Logs",
                "email": owner_email,
                "password": PASSWORD,
            },
        )
        assert r.status_code == 201
        login = {"email": owner_email, "password": PASSWORD, "tenant": slug}
        tokens = (await client.post(f"{api}/auth/login", json=login)).json()
        r = await client.post(
            f"{api}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        rotated = r.json()
        secrets |= {
            "access token": tokens["access_token"],
            "refresh token": tokens["refresh_token"],
            "rotated access token": rotated["access_token"],
            "rotated refresh token": rotated["refresh_token"],
        }
        h = {"Authorization": f"Bearer {rotated['access_token']}"}
        r = await client.post(
            f"{api}/users",
            headers=h,
            json={"email": member_email, "password": member_password, "role": "member"},
        )
        assert r.status_code == 201
        # Refused input that carries secrets: a wrong password, an unknown field, a weak one.
        r = await client.post(f"{api}/auth/login", json={**login, "password": wrong_password})
        assert r.status_code == 401
        r = await client.post(
            f"{api}/users",
            headers=h,
            json={"email": "x@y.example", "password": member_password, "token": wrong_password},
        )
        assert r.status_code == 422
        r = await client.post(
            f"{api}/endpoints",
            headers=h,
            json={"name": "Echo", "slug": "echo", "upstream_url": f"{upstream}/echo"},
        )
        assert r.status_code == 201
        r = await client.put(
            f"{api}/endpoints/echo/credential",
            headers=h,
            json={"header": "X-Upstream-Key", "value": credential},
        )
        assert r.status_code == 200
        r = await client.post(
            f"{api}/api-keys", headers=h, json={"name": "svc", "scopes": ["endpoints:query"]}
        )
        api_key = r.json()["key"]
        secrets["api key"] = api_key
        r = await client.post(f"{api}/endpoints/echo/query", headers={"X-API-Key": api_key})
        assert r.status_code == 200
        assert r.json()["headers"]["x-upstream-key"] == credential  # it did travel upstream
        r = await client.post(f"{api}/endpoints/echo/query", headers=h, json={"q": 1})
        assert r.status_code == 200
        member = (
            await client.post(
                f"{api}/auth/login",
                json={"email": member_email, "password": member_password, "tenant": slug},
            )
        ).json()
        secrets["member token"] = member["access_token"]
        mh = {"Authorization": f"Bearer {member['access_token']}"}
        assert (await client.get(f"{api}/audit-events", headers=mh)).status_code == 403
        r = await client.post(
            f"{api}/auth/logout", headers=mh, json={"refresh_token": member["refresh_token"]}
        )
        assert r.status_code == 204
        assert (await client.get(f"{api}/auth/me", headers=mh)).status_code == 401
        r = await client.get(f"{api}/auth/me", headers={"Authorization": f"Bearer {api_key}x"})
        assert r.status_code == 401
        assert (await client.get(f"{api}/me/export", headers=h)).status_code == 200
        await runtime.audit.flush()

    text = logs.text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) > 20
    for name, value in secrets.items():
        assert value not in text, f"{name} leaked into the logs"
    assert "$argon2" not in text
    # Emails may appear only masked (`o***@domain`, which the pattern cannot match).
    for address in (owner_email, owner_email.lower(), member_email):
        assert address not in text
    assert EMAIL.findall(text) == []
    # Each request's lines carry its request id; authenticated ones the tenant and principal.
    requests = [line for line in lines if line.get("event") == "request"]
    assert all(line.get("request_id") for line in requests)
    authenticated = [line for line in requests if line.get("principal")]
    assert authenticated
    assert all(line["tenant"] == slug for line in authenticated)

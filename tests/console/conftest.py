"""Helpers for console tests: a browser signed in through the console's own form."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from tests.conftest import PASSWORD, TenantHandle
from tests.sessions.conftest import PUBLIC_ORIGIN, set_cookies

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class ConsoleBrowser:
    """What a browser holds after signing in to the console: the two cookies."""

    client: httpx.AsyncClient
    email: str
    cookie: str
    csrf: str

    def headers(self, origin: str | None = PUBLIC_ORIGIN) -> dict[str, str]:
        """The cookies (and the Origin a same-origin form post carries)."""
        headers = {"Cookie": f"session_id={self.cookie}; csrf_token={self.csrf}"}
        if origin is not None:
            headers["Origin"] = origin
        return headers

    async def get(self, path: str, **params: Any) -> httpx.Response:
        """A page, as this browser."""
        return await self.client.get(path, params=params or None, headers=self.headers(None))

    async def post(
        self,
        path: str,
        data: dict[str, Any] | list[tuple[str, str]] | None = None,
        *,
        csrf: str | None = "",
        origin: str | None = PUBLIC_ORIGIN,
    ) -> httpx.Response:
        """A form post as the page's form sends it: its fields plus the CSRF token field
        (`csrf=None` leaves it out; a string other than "" replaces it)."""
        pairs = list(data.items()) if isinstance(data, dict) else list(data or [])
        if csrf is not None:
            pairs.append(("csrf_token", csrf or self.csrf))
        headers = {**self.headers(origin), "Content-Type": "application/x-www-form-urlencoded"}
        return await self.client.post(path, content=urlencode(pairs), headers=headers)


async def console_sign_in(
    client: httpx.AsyncClient, handle: TenantHandle, email: str | None = None
) -> ConsoleBrowser:
    """Sign in through `POST /console/sign-in` as a same-origin browser form does."""
    email = email or handle.owner.email
    r = await client.post(
        "/console/sign-in",
        data={"tenant": handle.slug, "email": email, "password": PASSWORD},
        headers={"Origin": PUBLIC_ORIGIN},
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console"
    client.cookies.clear()
    cookies = set_cookies(r)
    return ConsoleBrowser(
        client, email, cookies["session_id"]["value"], cookies["csrf_token"]["value"]
    )


async def signed_in_as(
    client: httpx.AsyncClient, handle: TenantHandle, role: str
) -> ConsoleBrowser:
    """A browser of a new user of `role` in `handle`'s tenant (the owner for "owner")."""
    if role == "owner":
        return await console_sign_in(client, handle)
    member = await handle.add_user(role)
    return await console_sign_in(client, handle, member.email)

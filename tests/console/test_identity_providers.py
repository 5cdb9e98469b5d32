"""The console's Identity providers page and sign-in through a provider, against Warden on a
real port and the real OpenID provider: admins manage, viewers read, members do not see it;
the sign-in page's button ends signed in on /console; signing out ends the provider's session."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import PASSWORD
from tests.console.conftest import ConsoleBrowser
from tests.identity_providers.conftest import (
    Tenant,
    Warden,
    authorization_params,
    new_tenant,
    serve_warden,
)
from tests.sessions.conftest import set_cookies
from tests.support.oidc_provider import TestProvider, form_of, provider_login, run_provider

PAGE = "/console/identity-providers"
PROVIDER_LINK = re.compile(r'<a class="button secondary" href="([^"]+)">Sign in with ([^<]+)</a>')


@pytest.fixture(scope="module")
def provider() -> Iterator[TestProvider]:
    """The OpenID provider, one per test module."""
    with run_provider() as running:
        yield running


@pytest.fixture(scope="module")
async def warden(app: Any) -> AsyncIterator[Warden]:
    """Warden on a real port (the provider redirects browsers to it)."""
    async with serve_warden() as running:
        yield running


async def _sign_in(
    client: httpx.AsyncClient, warden: Warden, slug: str, email: str
) -> ConsoleBrowser:
    """The console's password form, as a same-origin browser posts it."""
    r = await client.post(
        f"{warden.url}/console/sign-in",
        data={"tenant": slug, "email": email, "password": PASSWORD},
        headers={"Origin": warden.url},
    )
    assert r.status_code == 303, r.text
    cookies = set_cookies(r)
    client.cookies.clear()
    return ConsoleBrowser(
        client, email, cookies["session_id"]["value"], cookies["csrf_token"]["value"]
    )


async def _user(warden: Warden, tenant: Tenant, role: str) -> str:
    email = f"{role}-{secrets.token_hex(3)}@{tenant.domain}"
    async with httpx.AsyncClient(base_url=warden.url, timeout=10) as c:
        r = await c.post(
            "/api/v1/users",
            headers=tenant.headers,
            json={"email": email, "password": PASSWORD, "role": role},
        )
    assert r.status_code == 201, r.text
    return email


async def _client_at(
    provider: TestProvider, warden: Warden, slug: str, name: str
) -> dict[str, Any]:
    """A client registered at the provider for this tenant's provider `name`."""
    return await provider.register_client(
        [f"{warden.url}/api/v1/sessions/oidc/{slug}/{name}/callback"],
        backchannel_logout_uri=f"{warden.url}/api/v1/sessions/oidc/backchannel-logout",
        post_logout_redirect_uris=[f"{warden.url}/console/sign-in"],
    )


def _form(
    provider: TestProvider, client: dict[str, Any], tenant: Tenant, **extra: str
) -> dict[str, str]:
    return {
        "name": "corp",
        "issuer": provider.issuer,
        "client_id": client["client_id"],
        "client_auth": "client_secret_basic",
        "client_secret": client["client_secret"],
        "scopes": "openid email profile groups",
        "allowed_email_domains": tenant.domain,
        "default_role": "member",
        "jit_provisioning": "on",
        "enabled": "on",
        "claim_subject": "sub",
        "claim_email": "email",
        "claim_name": "name",
        **extra,
    }


async def _admin_with_provider(
    client: httpx.AsyncClient, warden: Warden, provider: TestProvider
) -> tuple[Tenant, ConsoleBrowser, str, dict[str, Any]]:
    """A new tenant whose owner registered a provider through the console form."""
    tenant = await new_tenant(warden.url)
    owner = await _sign_in(client, warden, tenant.slug, tenant.owner_email)
    registered = await _client_at(provider, warden, tenant.slug, "corp")
    r = await owner.post(
        f"{warden.url}{PAGE}", _form(provider, registered, tenant), origin=warden.url
    )
    assert r.status_code == 303, r.text[:2000]
    location = r.headers["location"]
    assert location.startswith(f"{PAGE}/")
    assert location.endswith("?notice=provider-created")
    provider_id = urlsplit(location).path.rsplit("/", 1)[1]
    return tenant, owner, provider_id, registered


class TestIdentityProvidersPage:
    async def test_admin_adds_edits_disables_and_removes_a_provider(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            tenant, owner, provider_id, registered = await _admin_with_provider(
                client, warden, provider
            )
            r = await owner.get(f"{warden.url}{PAGE}/{provider_id}")
            assert r.status_code == 200, r.text
            text = html.unescape(r.text)
            redirect_uri = f"{warden.url}/api/v1/sessions/oidc/{tenant.slug}/corp/callback"
            assert redirect_uri in text
            assert f"{warden.url}/console/sign-in" in text  # the post-logout URI to register
            assert registered["client_secret"][-4:] in text
            assert registered["client_secret"] not in text  # write-only
            assert 'data-copy="redirect-uri"' in text
            assert f"{provider.issuer}/session/end" in text  # its end-session endpoint

            listing = await owner.get(f"{warden.url}{PAGE}")
            assert listing.status_code == 200
            assert re.search(
                r'href="/console/identity-providers"[^>]*>Identity providers</a>', listing.text
            )
            assert redirect_uri in html.unescape(listing.text)
            assert 'badge ok">enabled' in listing.text

            # A bad field is refused with the API's message next to it; nothing changes.
            bad = _form(provider, registered, tenant, scopes="email profile", client_secret="")
            r = await owner.post(f"{warden.url}{PAGE}/{provider_id}", bad, origin=warden.url)
            assert r.status_code == 422, r.text[:500]
            assert re.search(r'id="f-scopes-problem">[^<]*openid', r.text), r.text
            # Saved: a new domain, JIT off; the secret is kept when the field is blank.
            good = _form(
                provider,
                registered,
                tenant,
                client_secret="",
                allowed_email_domains="other.example",
            )
            del good["jit_provisioning"]
            r = await owner.post(f"{warden.url}{PAGE}/{provider_id}", good, origin=warden.url)
            assert r.status_code == 303, r.text[:2000]
            async with httpx.AsyncClient(base_url=warden.url, timeout=10) as api:
                body = (
                    await api.get(
                        f"/api/v1/identity-providers/{provider_id}", headers=tenant.headers
                    )
                ).json()
            assert body["allowed_email_domains"] == ["other.example"]
            assert body["jit_provisioning"] is False
            assert body["client_secret"]["last4"] == registered["client_secret"][-4:]

            # Disabled: the sign-in page stops offering it; enabled again, it is back.
            r = await owner.post(
                f"{warden.url}{PAGE}/{provider_id}/enabled", {"enabled": "off"}, origin=warden.url
            )
            assert r.status_code == 303
            sign_in = await client.get(
                f"{warden.url}/console/sign-in", params={"tenant": tenant.slug}
            )
            assert "Sign in with corp" not in sign_in.text
            r = await owner.post(
                f"{warden.url}{PAGE}/{provider_id}/enabled", {"enabled": "on"}, origin=warden.url
            )
            assert r.status_code == 303
            sign_in = await client.get(
                f"{warden.url}/console/sign-in", params={"tenant": tenant.slug}
            )
            assert "Sign in with corp" in sign_in.text

            r = await owner.post(f"{warden.url}{PAGE}/{provider_id}/delete", {}, origin=warden.url)
            assert r.status_code == 303
            r = await owner.get(f"{warden.url}{PAGE}/{provider_id}")
            assert r.status_code == 404

    async def test_private_key_jwt_shows_the_public_key_to_register(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            tenant = await new_tenant(warden.url)
            owner = await _sign_in(client, warden, tenant.slug, tenant.owner_email)
            form = _form(
                provider,
                {"client_id": "warden-pkj", "client_secret": ""},
                tenant,
                name="keyed",
                client_auth="private_key_jwt",
            )
            r = await owner.post(f"{warden.url}{PAGE}", form, origin=warden.url)
            assert r.status_code == 303, r.text[:2000]
            r = await owner.get(f"{warden.url}{r.headers['location']}")
            assert r.status_code == 200
            text = html.unescape(r.text)
            assert '"kty": "EC"' in text
            assert '"crv": "P-256"' in text
            assert '"d"' not in text  # never the private part
            assert 'name="client_secret"' not in text

    async def test_a_discovery_error_is_shown_next_to_the_issuer(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            tenant = await new_tenant(warden.url)
            owner = await _sign_in(client, warden, tenant.slug, tenant.owner_email)
            form = _form(
                provider,
                {"client_id": "x", "client_secret": "s3cret-value"},
                tenant,
                issuer=f"{provider.issuer}/nowhere",
            )
            r = await owner.post(f"{warden.url}{PAGE}", form, origin=warden.url)
            assert r.status_code == 422, r.text[:500]
            problem = re.search(r'<p class="problem" id="f-issuer-problem">([^<]*)</p>', r.text)
            assert problem is not None, r.text
            assert "discovery" in problem.group(1)
            assert "404" in problem.group(1)
            assert 'aria-invalid="true" aria-describedby="f-issuer-problem"' in r.text
            assert "s3cret-value" not in r.text  # the secret is not echoed back
            assert f'value="{provider.issuer}/nowhere"' in r.text  # what was typed stays
            assert "No identity provider" in r.text  # nothing was created

    async def test_a_missing_secret_is_shown_next_to_its_field(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            tenant = await new_tenant(warden.url)
            owner = await _sign_in(client, warden, tenant.slug, tenant.owner_email)
            form = _form(provider, {"client_id": "x", "client_secret": ""}, tenant)
            r = await owner.post(f"{warden.url}{PAGE}", form, origin=warden.url)
            assert r.status_code == 422, r.text[:500]
            problem = re.search(r'id="f-client_secret-problem">([^<]*)</p>', r.text)
            assert problem is not None, r.text
            assert "required with client_secret_basic" in problem.group(1)

    async def test_viewer_reads_member_does_not_see_other_tenant_is_404(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            tenant, _owner, provider_id, registered = await _admin_with_provider(
                client, warden, provider
            )
            viewer = await _sign_in(
                client, warden, tenant.slug, await _user(warden, tenant, "viewer")
            )
            r = await viewer.get(f"{warden.url}{PAGE}")
            assert r.status_code == 200
            assert "Identity providers</a>" in r.text
            assert f"/console/identity-providers/{provider_id}" in r.text
            assert "<form" not in r.text.split("<main", 1)[1]  # no form to change anything
            r = await viewer.get(f"{warden.url}{PAGE}/{provider_id}")
            assert r.status_code == 200
            assert "Save provider" not in r.text
            assert "Remove provider" not in r.text
            # Her posts are refused, whatever the page shows.
            for path, data in (
                (PAGE, _form(provider, registered, tenant, name="mine")),
                (f"{PAGE}/{provider_id}", _form(provider, registered, tenant)),
                (f"{PAGE}/{provider_id}/enabled", {"enabled": "off"}),
                (f"{PAGE}/{provider_id}/delete", {}),
            ):
                r = await viewer.post(f"{warden.url}{path}", data, origin=warden.url)
                assert r.status_code == 403, (path, r.status_code)
            async with httpx.AsyncClient(base_url=warden.url, timeout=10) as api:
                r = await api.get("/api/v1/identity-providers", headers=tenant.headers)
            [still] = r.json()["items"]
            assert still["enabled"] is True
            assert still["name"] == "corp"

            member = await _sign_in(
                client, warden, tenant.slug, await _user(warden, tenant, "member")
            )
            r = await member.get(f"{warden.url}/console/me")
            assert r.status_code == 200
            assert "/console/identity-providers" not in r.text  # not in her navigation
            for path in (PAGE, f"{PAGE}/{provider_id}"):
                r = await member.get(f"{warden.url}{path}")
                assert r.status_code == 403
            r = await member.post(f"{warden.url}{PAGE}/{provider_id}/delete", {}, origin=warden.url)
            assert r.status_code == 403

            # Another tenant's admin: the provider id is not found, for reading and for writing.
            other = await new_tenant(warden.url)
            stranger = await _sign_in(client, warden, other.slug, other.owner_email)
            r = await stranger.get(f"{warden.url}{PAGE}/{provider_id}")
            assert r.status_code == 404
            for path, data in (
                (f"{PAGE}/{provider_id}", _form(provider, registered, other)),
                (f"{PAGE}/{provider_id}/enabled", {"enabled": "off"}),
                (f"{PAGE}/{provider_id}/delete", {}),
            ):
                r = await stranger.post(f"{warden.url}{path}", data, origin=warden.url)
                assert r.status_code == 404, (path, r.status_code)
            r = await stranger.get(f"{warden.url}{PAGE}")
            assert provider_id not in r.text
            async with httpx.AsyncClient(base_url=warden.url, timeout=10) as api:
                r = await api.get(
                    f"/api/v1/identity-providers/{provider_id}", headers=tenant.headers
                )
            assert r.status_code == 200
            assert r.json()["enabled"] is True

    @pytest.mark.parametrize("attack", ["no-token", "wrong-token", "forged-origin", "no-origin"])
    async def test_forged_posts_are_refused(self, warden, provider, attack):
        async with httpx.AsyncClient(timeout=15) as client:
            _tenant, owner, provider_id, _registered = await _admin_with_provider(
                client, warden, provider
            )
            path = f"{warden.url}{PAGE}/{provider_id}/delete"
            if attack == "no-token":
                r = await owner.post(path, {}, csrf=None, origin=warden.url)
            elif attack == "wrong-token":
                r = await owner.post(path, {}, csrf="x" * 43, origin=warden.url)
            elif attack == "forged-origin":
                r = await owner.post(path, {}, origin="http://evil.example")
            else:
                r = await owner.post(path, {}, origin=None)
            assert r.status_code == 403, r.text[:300]
            r = await owner.get(f"{warden.url}{PAGE}/{provider_id}")
            assert r.status_code == 200  # still there


class TestSignInThroughAProvider:
    async def test_the_sign_in_button_ends_on_the_console_and_sign_out_ends_the_provider_session(
        self, warden, provider
    ):
        async with httpx.AsyncClient(timeout=15) as admin_client:
            tenant, _owner, _id, registered = await _admin_with_provider(
                admin_client, warden, provider
            )
        async with httpx.AsyncClient(timeout=15) as browser:
            r = await browser.get(f"{warden.url}/console/sign-in", params={"tenant": tenant.slug})
            assert r.status_code == 200
            [(link, name)] = PROVIDER_LINK.findall(r.text)
            link = html.unescape(link)
            assert name == "corp"
            assert link == (
                f"{warden.url}/api/v1/sessions/oidc/{tenant.slug}/corp/start?return_to=%2Fconsole"
            )
            # An unknown tenant looks like a tenant without providers.
            r = await browser.get(f"{warden.url}/console/sign-in", params={"tenant": "no-such-t"})
            assert r.status_code == 200
            assert not PROVIDER_LINK.findall(r.text)
            assert "This tenant offers no identity provider" in r.text

            login = f"carol@{tenant.domain}"
            callback = await provider_login(browser, link, login, warden=warden.url)
            r = await browser.get(callback)
            assert r.status_code == 303, r.text
            assert r.headers["location"] == f"{warden.url}/console"
            cookies = set_cookies(r)
            signed = ConsoleBrowser(
                browser, login, cookies["session_id"]["value"], cookies["csrf_token"]["value"]
            )
            r = await signed.get(f"{warden.url}/console")
            assert r.status_code == 303
            assert r.headers["location"] == "/console/me"
            r = await signed.get(f"{warden.url}/console/me")
            assert r.status_code == 200
            assert login in r.text

            # Signing out ends Warden's session and sends the browser to the provider's logout.
            r = await signed.post(f"{warden.url}/console/sign-out", {}, origin=warden.url)
            assert r.status_code == 200, r.text[:500]
            end = r.headers["refresh"].removeprefix("0;url=")
            assert end.startswith(f"{provider.issuer}/session/end?")
            params = authorization_params(end)
            assert params["post_logout_redirect_uri"] == f"{warden.url}/console/sign-in"
            assert params["client_id"] == registered["client_id"]
            assert params["id_token_hint"].startswith("eyJ")
            assert html.escape(end) in r.text  # the link for the reader
            assert "Content-Security-Policy" in r.headers
            cleared = set_cookies(r)
            assert cleared["session_id"]["value"] in ("", '""')
            r = await signed.get(f"{warden.url}/console/me")
            assert r.status_code == 303
            assert "/console/sign-in" in r.headers["location"]

            page = await browser.get(end)
            assert page.status_code == 200, page.text[:300]
            action, fields = form_of(page.text)
            fields["logout"] = "yes"
            done = await browser.post(str(page.url.join(action)), data=fields)
            assert done.status_code in (302, 303), done.text[:300]
            assert done.headers["location"] == f"{warden.url}/console/sign-in"

    async def test_password_sign_out_stays_a_plain_redirect(self, warden, provider):
        async with httpx.AsyncClient(timeout=15) as client:
            _tenant, owner, _id, _registered = await _admin_with_provider(client, warden, provider)
            r = await owner.post(f"{warden.url}/console/sign-out", {}, origin=warden.url)
            assert r.status_code == 303
            assert r.headers["location"] == "/console/sign-in?notice=signed-out"

"""Request and response models of browser sessions and the internal session exchange."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints

from app.core.schemas import PublicModel, StrictModel
from app.users.schemas import LoginRequest

CookieValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class SessionCreate(LoginRequest):
    """`POST /sessions`: email + password within one tenant, as for `/auth/login`."""


class SessionInfo(PublicModel):
    """A browser session as its owner sees it (never the cookie value)."""

    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None


class SessionCreated(BaseModel):
    """The answer to a browser login: the session and its CSRF token; no JWT."""

    session: SessionInfo
    csrf_token: str


class SessionPublic(SessionInfo):
    """One of the caller's live sessions."""

    last_seen_at: datetime
    current: bool = False


class ExchangeRequest(StrictModel):
    """`POST /internal/v1/sessions/exchange`: the session cookie's value, as the BFF received it."""

    session_id: CookieValue


class ProviderIdentity(BaseModel):
    """Who the identity provider says the session's user is (sessions signed in through one)."""

    idp: str
    issuer: str
    sub: str
    groups: list[str]


class ExchangeResponse(BaseModel):
    """A short-lived access token for the session's user, and its claims; for a session signed
    in through an identity provider, that identity and (scope `sessions:idp_token`) the
    provider's current access token."""

    access_token: str
    claims: dict[str, Any]
    identity: ProviderIdentity | None = None
    idp_access_token: str | None = None


class LogoutRedirect(BaseModel):
    """Logout of a session signed in through an identity provider: where the browser goes to
    end the provider's session too."""

    end_session_url: str

"""`/me`: the caller's own data — export it, or erase the account."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import StreamingResponse

from app.core.errors import Forbidden
from app.core.identity import Principal
from app.privacy import service
from app.privacy.schemas import MeExport
from app.web.deps import CurrentPrincipal, RuntimeDep, TenantSession

router = APIRouter(prefix="/me", tags=["privacy"])


async def local_user(principal: CurrentPrincipal) -> Principal:
    """Only a local user has an account here to export or erase (not API keys or satellites)."""
    if principal.kind != "user":
        raise Forbidden(
            "Only a local user account can export or erase its data.", code="local_user_required"
        )
    return principal


LocalUser = Annotated[Principal, Depends(local_user)]


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"model": MeExport, "description": "Everything Warden holds about you."}},
)
async def export_me(
    principal: LocalUser, session: TenantSession, runtime: RuntimeDep
) -> StreamingResponse:
    """All of the caller's data as one JSON document (profile, sessions, keys, audit events)."""
    stream = await service.export_me(session, runtime.sessionmaker, principal)
    return StreamingResponse(
        stream,
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="warden-my-data.json"'},
    )


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def erase_me(principal: LocalUser, session: TenantSession, runtime: RuntimeDep) -> Response:
    """Erase the caller's account; their audit events keep a pseudonym (409 for the last owner)."""
    await service.erase_me(
        session,
        runtime.audit,
        runtime.revocations,
        runtime.browser_store,
        runtime.settings.warden_master_key[0],
        principal,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)

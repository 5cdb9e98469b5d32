"""`/audit-events`: read, export and verify the tenant's audit trail (admin+)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.audit import service, verify
from app.audit.schemas import (
    AuditEventPublic,
    AuditFilters,
    ExportFormat,
    VerifyReport,
    audit_filters,
    event_view,
)
from app.core.pagination import Page, PageParams, page_params
from app.core.types import utcnow
from app.web.deps import AdminPrincipal, RuntimeDep, TenantSession

router = APIRouter(prefix="/audit-events", tags=["audit"])
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


@router.get("", response_model=Page[AuditEventPublic])
async def list_events(
    principal: AdminPrincipal,
    session: TenantSession,
    filters: AuditFilters = Depends(audit_filters),
    params: PageParams = Depends(page_params),
) -> Page[AuditEventPublic]:
    """The tenant's audit events, newest first (`next_cursor` pages back in time)."""
    rows, cursor = await service.list_events(session, filters, params)
    items = [AuditEventPublic.model_validate(event_view(row)) for row in rows]
    return Page(items=items, next_cursor=cursor)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={200: {"content": {MEDIA_TYPES["jsonl"]: {}, MEDIA_TYPES["csv"]: {}}}},
)
async def export_events(
    principal: AdminPrincipal,
    session: TenantSession,
    runtime: RuntimeDep,
    filters: AuditFilters = Depends(audit_filters),
    format: ExportFormat = Query("jsonl", description="`jsonl` (one event a line) or `csv`."),
) -> StreamingResponse:
    """Every matching event, oldest first, streamed with constant memory; the export is audited."""
    stream = await service.export_events(
        session,
        runtime.sessionmaker,
        tenant_id=principal.tenant_id,
        actor=principal.actor,
        filters=filters,
        fmt=format,
    )
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    filename = f"audit-{principal.tenant_slug}-{stamp}.{format}"
    return StreamingResponse(
        stream,
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/verify", response_model=VerifyReport)
async def verify_chain(
    principal: AdminPrincipal, session: TenantSession, runtime: RuntimeDep
) -> VerifyReport:
    """Walk the tenant's hash chain and report the first broken link, if any (audited)."""
    return await verify.verify_tenant_chain(
        session, runtime.sessionmaker, principal.tenant_id, principal.actor
    )

"""The overview, the audit trail and the decision explainer ("Why?")."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response

from app.audit import service as audit
from app.audit import verify
from app.audit.schemas import AuditFilters, audit_filters, event_view
from app.authz import service as authz
from app.authz.schemas import CheckRequest
from app.console.deps import Admin, ConsoleRoute, ConsoleSession, FormDep
from app.console.overview import DECISION_ACTIONS, last_hour
from app.console.problems import GENERAL, from_app_error, parse
from app.console.render import PREFIX, page
from app.core.errors import AppError, NotFound, Unprocessable
from app.core.identity import Role
from app.core.pagination import PageParams
from app.endpoints import service as endpoints
from app.users import service as users
from app.web.deps import RuntimeDep

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
PAGE_SIZE = 50
EXPORT = "/api/v1/audit-events/export"  # the API's streamed export (a GET: the cookie suffices)
LATEST_DENIALS = 10
FILTER_NAMES = ("actor", "action", "outcome", "endpoint", "since", "until")
OUTCOMES = ("success", "failure", "allowed", "denied", "rate_limited", "error")
WHY_MODES = ("user", "email", "claims")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
ALL_ENDPOINTS = PageParams(limit=200, cursor=None)
ALL_USERS = PageParams(limit=200, cursor=None)


def _why_link(event: dict[str, Any]) -> str | None:
    """The explainer pre-filled with a denied decision's request, for the audit view."""
    if event["outcome"] not in ("denied", "rate_limited") or event["action"] not in (
        DECISION_ACTIONS
    ):
        return None
    details = event["details"] or {}
    query: dict[str, str] = {"endpoint": str(details.get("endpoint") or "")}
    actor = event["actor"]
    # A what-if check's actor is the admin who asked, not the principal asked about.
    if actor["type"] == "user" and actor["id"] and not details.get("what_if"):
        query.update(mode="user", user=actor["id"])
    for name in ("method", "path", "ip"):
        value = details.get(name) or (event["ip"] if name == "ip" else None)
        if value:
            query[name] = str(value)
    return f"{PREFIX}/why?{urlencode(query)}"


@router.get("/overview")
async def overview_page(request: Request, principal: Admin, session: ConsoleSession) -> Response:
    """Decisions of the last hour by outcome and endpoint, and the latest denials."""
    summary = await last_hour(session)
    denials, _cursor = await audit.list_events(
        session, AuditFilters(outcome="denied"), PageParams(limit=LATEST_DENIALS, cursor=None)
    )
    views = [event_view(row) for row in denials]
    return page(
        request,
        "overview.html",
        {"summary": summary, "denials": [(v, _why_link(v)) for v in views]},
    )


@router.get("/audit")
async def audit_page(
    request: Request,
    principal: Admin,
    session: ConsoleSession,
    filters: AuditFilters = Depends(audit_filters),
) -> Response:
    """The audit trail: filters, cursor pagination, export links, verify."""
    cursor = request.query_params.get("cursor") or None
    rows, next_cursor = await audit.list_events(
        session, filters, PageParams(limit=PAGE_SIZE, cursor=cursor)
    )
    current = {
        name: request.query_params.get(name, "")
        for name in FILTER_NAMES
        if request.query_params.get(name)
    }
    views = [event_view(row) for row in rows]
    return page(
        request,
        "audit.html",
        {
            "events": [(v, _why_link(v)) for v in views],
            "filters": current,
            "outcomes": OUTCOMES,
            "next_query": urlencode({**current, "cursor": next_cursor}) if next_cursor else None,
            "paged": bool(cursor),
            "export_jsonl": f"{EXPORT}?{urlencode({**current, 'format': 'jsonl'})}",
            "export_csv": f"{EXPORT}?{urlencode({**current, 'format': 'csv'})}",
            "report": None,
        },
    )


@router.post("/audit/verify")
async def verify_chain(
    request: Request, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Walk the tenant's hash chain: intact, or the first broken event (audited)."""
    report = await verify.verify_tenant_chain(
        session, runtime.sessionmaker, principal.tenant_id, principal.actor
    )
    return page(request, "verify.html", {"report": report})


@router.get("/audit/{event_id}")
async def event_page(
    request: Request, event_id: uuid.UUID, principal: Admin, session: ConsoleSession
) -> Response:
    """One event with its details."""
    row = await audit.get_event(session, event_id)
    if row is None:
        raise NotFound("Audit event not found.", code="event_not_found")
    view = event_view(row)
    return page(
        request,
        "event.html",
        {
            "event": view,
            "details": json.dumps(view["details"], indent=2, sort_keys=True),
            "why": _why_link(view),
        },
    )


# --- "Why?" ---------------------------------------------------------------------------------


def _why_values(source: Any) -> dict[str, str]:
    values = {
        name: str(source.get(name, "") or "").strip()
        for name in ("endpoint", "mode", "user", "email", "role", "claims", "method", "path", "ip")
    }
    values["mode"] = values["mode"] if values["mode"] in WHY_MODES else "user"
    values["role"] = values["role"] or Role.MEMBER.value
    values["method"] = values["method"] or "POST"
    return values


async def _what_if(session: ConsoleSession, values: dict[str, str]) -> dict[str, Any]:
    """The `as` of `/authz/check` for the chosen principal."""
    if values["mode"] == "user":
        if not values["user"]:
            raise Unprocessable(
                "Pick a user.", details=[{"field": "user", "message": "Pick a user."}]
            )
        try:
            user_id = uuid.UUID(values["user"])
        except ValueError as exc:
            raise Unprocessable(
                "user: not a user id", details=[{"field": "user", "message": "Not a user id."}]
            ) from exc
        user = await users.get_user(session, user_id)
        return {"email": user.email, "role": Role(user.role).value}
    if values["mode"] == "email":
        return {"email": values["email"] or None, "role": values["role"]}
    try:
        claims = json.loads(values["claims"] or "{}")
    except json.JSONDecodeError as exc:
        raise Unprocessable(
            f"claims: not JSON ({exc.msg})",
            details=[{"field": "claims", "message": f"Not JSON: {exc.msg}"}],
        ) from exc
    if not isinstance(claims, dict):
        raise Unprocessable(
            "claims: a JSON object",
            details=[{"field": "claims", "message": "Claims are a JSON object."}],
        )
    role = claims.get("role", values["role"])
    return {
        "email": claims.get("email"),
        "role": role if role in {r.value for r in Role} else Role.VIEWER.value,
        "claims": {k: v for k, v in claims.items() if k not in ("email", "role")},
    }


async def _why_page(
    request: Request,
    session: ConsoleSession,
    values: dict[str, str],
    *,
    result: Any = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    endpoint_rows, _cursor = await endpoints.list_endpoints(session, ALL_ENDPOINTS)
    user_rows, _cursor = await users.list_users(session, ALL_USERS)
    return page(
        request,
        "why.html",
        {
            "values": values,
            "endpoints": endpoint_rows,
            "users": user_rows,
            "roles": tuple(role.value for role in Role),
            "methods": METHODS,
            "result": result,
            "problems": problems or {},
            "general_problem": (problems or {}).get(GENERAL),
        },
        status_code=status_code,
    )


@router.get("/why")
async def why_page(request: Request, principal: Admin, session: ConsoleSession) -> Response:
    """The decision explainer, pre-filled from the query (the audit view links here)."""
    return await _why_page(request, session, _why_values(request.query_params))


@router.post("/why")
async def explain(
    request: Request,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Ask `/authz/check`'s what-if: the verdict, the deciding policy and every reason."""
    values = _why_values({key: value for key, value in form.pairs})
    try:
        body: dict[str, Any] = {
            "endpoint": values["endpoint"],
            "as": await _what_if(session, values),
            "method": values["method"],
            "path": values["path"] or None,
            "ip": values["ip"] or None,
        }
        data = parse(CheckRequest, body)
        # The decision loads the endpoint through its own session (the enforcement cache);
        # this request's read transaction ends first (on SQLite it holds the write lock).
        await session.rollback()
        result = await authz.check(runtime.endpoints, runtime.pipeline, principal, data)
    except AppError as exc:
        return await _why_page(
            request, session, values, problems=from_app_error(exc), status_code=exc.status_code
        )
    return await _why_page(request, session, values, result=result)

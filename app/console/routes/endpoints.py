"""Endpoints, their upstream credential, gateway snippets and policies."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.authz import istio
from app.console.deps import Admin, ConsoleRoute, ConsoleSession, Form, FormDep, Reader
from app.console.problems import GENERAL, from_app_error, parse
from app.console.render import PAGE_HEADERS, PREFIX, page, redirect
from app.console.snippets import gateway_snippets
from app.core.emails import normalize_email
from app.core.errors import AppError, Unprocessable
from app.core.pagination import PageParams
from app.core.schemas import Slug
from app.endpoints import service as endpoints
from app.endpoints.schemas import EndpointCreate, EndpointUpdate
from app.policies import engine
from app.policies import service as policies
from app.policies.schemas import PolicyCreate, PolicyUpdate
from app.upstream_secrets import service as secrets
from app.upstream_secrets.service import CredentialPut
from app.web.deps import RuntimeDep, end_refused

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
PAGE_SIZE = 20
POLICY_TYPES = ("access", "rate_limit", "rule")
RATE_SCOPES = ("per_user", "per_tenant", "per_ip", "per_endpoint")
RULE_FIELDS = (
    "args.auth.email",
    "args.auth.role",
    "args.auth.sub",
    "args.request.method",
    "args.request.path",
    "args.request.ip",
    "args.time",
)
RULE_OPERATORS = ("==", "!=", ">", ">=", "<", "<=", "in", "notIn", "contains")
MAX_TEST_EMAILS = 50


def _problem_finder(problems: dict[str, str]) -> Any:
    def problem(name: str) -> str | None:
        """The first message about field `name` or anything inside it."""
        for key, message in problems.items():
            if key == name or key.startswith(f"{name}."):
                return message
        return None

    return problem


def _endpoint_values(form: Form, *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": form.get("name"),
        "description": form.optional("description"),
        "upstream_url": form.optional("upstream_url"),
        "host": form.optional("host"),
        "path_prefix": form.optional("path_prefix"),
        "exempt_paths": form.lines("exempt_paths"),
        "require_host_audience": form.checked("require_host_audience"),
        "is_active": form.checked("is_active"),
    }
    if creating:
        values["slug"] = form.get("slug")
    return values


@router.get("/endpoints")
async def list_endpoints(request: Request, principal: Reader, session: ConsoleSession) -> Response:
    """The tenant's endpoints, searchable, a page at a time."""
    search = request.query_params.get("q", "").strip()[:100]
    cursor = request.query_params.get("cursor") or None
    rows, next_cursor = await endpoints.list_endpoints(
        session, PageParams(limit=PAGE_SIZE, cursor=cursor), search or None
    )
    return page(
        request,
        "endpoints.html",
        {"endpoints": rows, "search": search, "next_cursor": next_cursor, "paged": bool(cursor)},
    )


@router.get("/new-endpoint")
async def new_endpoint_page(request: Request, principal: Admin) -> Response:
    """The form protecting a new endpoint."""
    return page(
        request,
        "endpoint_form.html",
        {"values": {"is_active": True}, "problem": _problem_finder({}), "creating": True},
    )


@router.post("/new-endpoint")
async def create_endpoint(
    request: Request, form: FormDep, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Protect a new endpoint (`POST /endpoints`)."""
    values = _endpoint_values(form, creating=True)
    try:
        data = parse(EndpointCreate, values)
        endpoint = await endpoints.create_endpoint(
            session, runtime.bus, runtime.settings.upstream_allowed_hosts, principal, data
        )
    except AppError as exc:
        await end_refused(session, exc)
        return page(
            request,
            "endpoint_form.html",
            {"values": values, "problem": _problem_finder(from_app_error(exc)), "creating": True},
            status_code=exc.status_code,
        )
    return redirect(f"/endpoints/{endpoint.slug}", "endpoint-created")


async def _endpoint_page(
    request: Request,
    session: ConsoleSession,
    runtime: RuntimeDep,
    slug: str,
    *,
    values: dict[str, Any] | None = None,
    problems: dict[str, str] | None = None,
    credential_problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    endpoint = await endpoints.get_by_slug(session, slug)
    credential = await secrets.find_credential(session, endpoint.id)
    rows = await policies.policies_of(session, endpoint.id)
    istio_yaml = await istio.render_istio(session, runtime.settings, slug, None, None)
    return page(
        request,
        "endpoint.html",
        {
            "endpoint": endpoint,
            "values": values or endpoint.model_dump(),
            "problem": _problem_finder(problems or {}),
            "credential_problem": _problem_finder(credential_problems or {}),
            "credential": credential,
            "policies": sorted(rows, key=lambda p: (-p.priority, p.created_at)),
            "snippets": gateway_snippets(endpoint, runtime.settings.public_url),
            "istio_yaml": istio_yaml,
            "policy_types": POLICY_TYPES,
        },
        status_code=status_code,
    )


@router.get("/endpoints/{slug}")
async def endpoint_page(
    request: Request, slug: Slug, principal: Reader, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """One endpoint: settings, credential, policies, gateway configuration."""
    return await _endpoint_page(request, session, runtime, slug)


@router.post("/endpoints/{slug}/edit")
async def update_endpoint(
    request: Request,
    slug: Slug,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Change an endpoint (`PATCH /endpoints/{slug}`)."""
    values = _endpoint_values(form, creating=False)
    try:
        data = parse(EndpointUpdate, values)
        await endpoints.update_endpoint(
            session, runtime.bus, runtime.settings.upstream_allowed_hosts, principal, slug, data
        )
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await end_refused(session, exc)
        return await _endpoint_page(
            request,
            session,
            runtime,
            slug,
            values={**values, "slug": slug},
            problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return redirect(f"/endpoints/{slug}", "endpoint-saved")


@router.post("/endpoints/{slug}/active")
async def set_active(
    slug: Slug, form: FormDep, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Enable or disable an endpoint in one click."""
    data = EndpointUpdate(is_active=form.get("active") == "true")
    await endpoints.update_endpoint(
        session, runtime.bus, runtime.settings.upstream_allowed_hosts, principal, slug, data
    )
    return redirect(f"/endpoints/{slug}", "endpoint-saved")


@router.post("/endpoints/{slug}/delete")
async def delete_endpoint(
    slug: Slug, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Remove an endpoint with its policies and credential."""
    await endpoints.delete_endpoint(session, runtime.bus, principal, slug)
    return redirect("/endpoints", "endpoint-deleted")


@router.post("/endpoints/{slug}/credential")
async def put_credential(
    request: Request,
    slug: Slug,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Set the upstream credential (write-only: only header, fingerprint, last 4 are shown)."""
    try:
        data = parse(CredentialPut, {"header": form.get("header"), "value": form.get("value")})
        await secrets.put_credential(
            session, runtime.bus, runtime.master_keys, principal, slug, data
        )
    except AppError as exc:
        if exc.status_code == 404:
            raise
        await end_refused(session, exc)
        return await _endpoint_page(
            request,
            session,
            runtime,
            slug,
            credential_problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return redirect(f"/endpoints/{slug}", "credential-saved")


@router.post("/endpoints/{slug}/credential/delete")
async def delete_credential(
    slug: Slug, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Remove the upstream credential."""
    await secrets.delete_credential(session, runtime.bus, principal, slug)
    return redirect(f"/endpoints/{slug}", "credential-removed")


# --- policies -------------------------------------------------------------------------------


def _number(text: str) -> object:
    """Digits as an int (the API's strict fields want JSON numbers); anything else as typed,
    so the validation names it."""
    return int(text) if text.isdigit() and len(text) < 12 else text


def _configuration(policy_type: str, form: Form) -> dict[str, Any]:
    if policy_type == "access":
        return {"mode": form.get("mode"), "patterns": form.lines("patterns")}
    if policy_type == "rate_limit":
        return {
            "requests_per_period": _number(form.get("requests_per_period")),
            "period_seconds": _number(form.get("period_seconds")),
            "scope": form.get("scope"),
        }
    try:
        configuration = json.loads(form.get("configuration") or "null")
    except json.JSONDecodeError as exc:
        raise Unprocessable(
            f"configuration: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            details=[{"field": "configuration", "message": f"Not JSON: {exc.msg}"}],
        ) from exc
    if not isinstance(configuration, dict):
        raise Unprocessable(
            "configuration: a rule tree is a JSON object",
            details=[{"field": "configuration", "message": "A rule tree is a JSON object."}],
        )
    return configuration


def _policy_values(policy_type: str, form: Form) -> dict[str, Any]:
    return {
        "policy_type": policy_type,
        "mode": form.get("mode", "allow"),
        "patterns": form.get("patterns"),
        "test_emails": form.get("test_emails"),
        "requests_per_period": form.get("requests_per_period"),
        "period_seconds": form.get("period_seconds"),
        "scope": form.get("scope", "per_user"),
        "configuration": form.get("configuration"),
        "enabled": form.checked("enabled"),
        "priority": form.get("priority", "0"),
    }


def _values_of(policy: Any) -> dict[str, Any]:
    config = policy.configuration
    return {
        "policy_type": policy.policy_type,
        "mode": config.get("mode", "allow"),
        "patterns": "\n".join(config.get("patterns", [])),
        "test_emails": "",
        "requests_per_period": str(config.get("requests_per_period", "")),
        "period_seconds": str(config.get("period_seconds", "")),
        "scope": config.get("scope", "per_user"),
        "configuration": json.dumps(config, indent=2),
        "enabled": policy.enabled,
        "priority": str(policy.priority),
    }


def pattern_matches(patterns: list[str], emails: list[str]) -> list[dict[str, Any]]:
    """Which test emails each pattern matches, by the engine that decides (server-side)."""
    results = []
    for email in emails[:MAX_TEST_EMAILS]:
        matched = [p for p in patterns if _safe_match(p, email)]
        results.append({"email": email, "matched": matched})
    return results


def _safe_match(pattern: str, email: str) -> bool:
    # Emails are normalised as the decision normalises the caller's (evaluate_access).
    try:
        return engine.email_matches(engine.validate_email_pattern(pattern), normalize_email(email))
    except ValueError:
        return False


def _policy_form(
    request: Request,
    endpoint: Any,
    values: dict[str, Any],
    *,
    policy: Any = None,
    problems: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    patterns = [line.strip() for line in str(values.get("patterns", "")).splitlines()]
    emails = [line.strip() for line in str(values.get("test_emails", "")).splitlines()]
    return page(
        request,
        "policy_form.html",
        {
            "endpoint": endpoint,
            "policy": policy,
            "values": values,
            "problem": _problem_finder(problems or {}),
            "general_problem": (problems or {}).get(GENERAL),
            "matches": pattern_matches([p for p in patterns if p], [e for e in emails if e]),
            "scopes": RATE_SCOPES,
            "rule_options": json.dumps({"fields": RULE_FIELDS, "operators": RULE_OPERATORS}),
        },
        status_code=status_code,
    )


@router.get("/endpoints/{slug}/new-policy")
async def new_policy_page(
    request: Request, slug: Slug, principal: Admin, session: ConsoleSession
) -> Response:
    """The form adding a policy of the chosen type."""
    endpoint = await endpoints.get_by_slug(session, slug)
    policy_type = request.query_params.get("type", "access")
    if policy_type not in POLICY_TYPES:
        policy_type = "access"
    values = _policy_values(policy_type, Form([]))
    values.update(
        enabled=True,
        priority="0",
        requests_per_period="100",
        period_seconds="60",
        configuration=json.dumps(
            {"rule": "match", "eval": "==", "f1": "args.auth.role", "f2": "admin"}, indent=2
        ),
    )
    return _policy_form(request, endpoint, values)


@router.post("/endpoints/{slug}/new-policy")
async def create_policy(
    request: Request,
    slug: Slug,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Attach a policy (`POST /endpoints/{slug}/policies`), validated as the API validates."""
    endpoint = await endpoints.get_by_slug(session, slug)
    policy_type = form.get("policy_type")
    values = _policy_values(policy_type, form)
    try:
        data = parse(
            PolicyCreate,
            {
                "policy_type": policy_type,
                "configuration": _configuration(policy_type, form),
                "enabled": values["enabled"],
                "priority": values["priority"] or "0",
            },
        )
        await policies.create_policy(session, runtime.bus, principal, slug, data)
    except AppError as exc:
        await end_refused(session, exc)
        endpoint = await endpoints.get_by_slug(session, slug)  # the rollback expired it
        return _policy_form(
            request, endpoint, values, problems=from_app_error(exc), status_code=exc.status_code
        )
    return redirect(f"/endpoints/{slug}", "policy-created")


@router.get("/endpoints/{slug}/policies/{policy_id}")
async def policy_page(
    request: Request, slug: Slug, policy_id: uuid.UUID, principal: Reader, session: ConsoleSession
) -> Response:
    """One policy (editable by admins)."""
    endpoint = await endpoints.get_by_slug(session, slug)
    policy = await policies.get_policy(session, slug, policy_id)
    return _policy_form(request, endpoint, _values_of(policy), policy=policy)


@router.post("/endpoints/{slug}/policies/{policy_id}/edit")
async def update_policy(
    request: Request,
    slug: Slug,
    policy_id: uuid.UUID,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Change a policy (`PATCH /endpoints/{slug}/policies/{id}`)."""
    endpoint = await endpoints.get_by_slug(session, slug)
    policy = await policies.get_policy(session, slug, policy_id)
    values = _policy_values(policy.policy_type, form)
    try:
        data = parse(
            PolicyUpdate,
            {
                "configuration": _configuration(policy.policy_type, form),
                "enabled": values["enabled"],
                "priority": values["priority"] or "0",
            },
        )
        await policies.update_policy(session, runtime.bus, principal, slug, policy_id, data)
    except AppError as exc:
        await end_refused(session, exc)
        # The rollback expired what was loaded.
        endpoint = await endpoints.get_by_slug(session, slug)
        policy = await policies.get_policy(session, slug, policy_id)
        return _policy_form(
            request,
            endpoint,
            values,
            policy=policy,
            problems=from_app_error(exc),
            status_code=exc.status_code,
        )
    return redirect(f"/endpoints/{slug}", "policy-saved")


@router.post("/endpoints/{slug}/policies/{policy_id}/enabled")
async def set_policy_enabled(
    slug: Slug,
    policy_id: uuid.UUID,
    form: FormDep,
    principal: Admin,
    session: ConsoleSession,
    runtime: RuntimeDep,
) -> Response:
    """Enable or disable a policy in one click."""
    data = PolicyUpdate(enabled=form.get("enabled") == "true")
    await policies.update_policy(session, runtime.bus, principal, slug, policy_id, data)
    return redirect(f"/endpoints/{slug}", "policy-saved")


@router.post("/endpoints/{slug}/policies/{policy_id}/delete")
async def delete_policy(
    slug: Slug, policy_id: uuid.UUID, principal: Admin, session: ConsoleSession, runtime: RuntimeDep
) -> Response:
    """Remove a policy."""
    await policies.delete_policy(session, runtime.bus, principal, slug, policy_id)
    return redirect(f"/endpoints/{slug}", "policy-deleted")


@router.get("/pattern-matches")
async def pattern_check(request: Request, principal: Reader) -> Response:
    """Which test emails the typed patterns match (the access editor asks as the admin types),
    answered by the policy engine itself."""
    patterns = [
        p.strip() for p in request.query_params.get("patterns", "").splitlines() if p.strip()
    ]
    emails = [e.strip() for e in request.query_params.get("emails", "").splitlines() if e.strip()]
    invalid = {}
    for pattern in patterns[:100]:
        try:
            engine.validate_email_pattern(pattern)
        except ValueError as exc:
            invalid[pattern] = str(exc)
    return JSONResponse(
        {"matches": pattern_matches(patterns[:100], emails), "invalid": invalid},
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": PAGE_HEADERS["Content-Security-Policy"],
        },
    )

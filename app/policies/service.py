"""Policy management: configurations validated per type on every write."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.service import record
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.identity import Principal
from app.core.invalidation import InvalidationBus
from app.core.pagination import PageParams, paginate
from app.core.types import utcnow
from app.endpoints import service as endpoints
from app.policies.engine import validate_policy_configuration
from app.policies.models import Policy
from app.policies.schemas import PolicyCreate, PolicyUpdate

MAX_POLICIES_PER_ENDPOINT = 100


def validated_configuration(policy_type: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """Validate a configuration; a 422 names each bad field."""
    try:
        return validate_policy_configuration(policy_type, configuration)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(
                {
                    "field": f"configuration.{loc}" if loc else "configuration",
                    "message": err.get("msg", "invalid"),
                }
            )
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        raise Unprocessable(
            f"Invalid {policy_type} configuration: {summary}",
            code="invalid_configuration",
            details=problems,
        ) from exc
    except ValueError as exc:
        raise Unprocessable(f"Invalid configuration: {exc}", code="invalid_configuration") from exc


async def _get(session: AsyncSession, endpoint_id: uuid.UUID, policy_id: uuid.UUID) -> Policy:
    policy = await session.get(Policy, policy_id)
    if policy is None or policy.endpoint_id != endpoint_id:
        raise NotFound("Policy not found.", code="policy_not_found")
    return policy


async def list_policies(
    session: AsyncSession, slug: str, params: PageParams
) -> tuple[list[Policy], str | None]:
    """A page of an endpoint's policies."""
    endpoint = await endpoints.get_by_slug(session, slug)
    stmt = select(Policy).where(Policy.endpoint_id == endpoint.id)  # type: ignore[arg-type]
    return await paginate(session, stmt, Policy, params)


async def policies_of(session: AsyncSession, endpoint_id: uuid.UUID) -> list[Policy]:
    """Every policy of an endpoint of the session's tenant (enabled or not)."""
    stmt = select(Policy).where(Policy.endpoint_id == endpoint_id)  # type: ignore[arg-type]
    return list((await session.execute(stmt)).scalars())


async def get_policy(session: AsyncSession, slug: str, policy_id: uuid.UUID) -> Policy:
    """One policy of an endpoint."""
    endpoint = await endpoints.get_by_slug(session, slug)
    return await _get(session, endpoint.id, policy_id)


async def create_policy(
    session: AsyncSession, bus: InvalidationBus, principal: Principal, slug: str, data: PolicyCreate
) -> Policy:
    """`POST /endpoints/{slug}/policies`."""
    endpoint = await endpoints.get_by_slug(session, slug)
    configuration = validated_configuration(data.policy_type, data.configuration)
    count = (
        await session.execute(
            select(func.count()).select_from(Policy).where(Policy.endpoint_id == endpoint.id)  # type: ignore[arg-type]
        )
    ).scalar_one()
    if count >= MAX_POLICIES_PER_ENDPOINT:
        raise Conflict("This endpoint has the maximum number of policies.", code="too_many")
    policy = Policy(
        tenant_id=principal.tenant_id,
        endpoint_id=endpoint.id,
        policy_type=data.policy_type,
        configuration=configuration,
        enabled=data.enabled,
        priority=data.priority,
    )
    session.add(policy)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="policy.created",
        actor=principal.actor,
        target_type="policy",
        target_id=str(policy.id),
        details={"endpoint": slug, "policy_type": data.policy_type, "configuration": configuration},
    )
    endpoints.invalidate_after_commit(session, bus, principal.tenant_id, slug)
    return policy


async def update_policy(
    session: AsyncSession,
    bus: InvalidationBus,
    principal: Principal,
    slug: str,
    policy_id: uuid.UUID,
    data: PolicyUpdate,
) -> Policy:
    """`PATCH /endpoints/{slug}/policies/{id}`."""
    policy = await get_policy(session, slug, policy_id)
    changes = data.model_dump(exclude_unset=True)
    for key in ("configuration", "enabled", "priority"):
        if key in changes and changes[key] is None:
            raise Unprocessable(f"{key}: cannot be null", code="validation_error")
    if "configuration" in changes:
        changes["configuration"] = validated_configuration(
            policy.policy_type, changes["configuration"]
        )
    changed = [k for k, v in changes.items() if getattr(policy, k) != v]
    for key in changed:
        setattr(policy, key, changes[key])
    if changed:
        policy.updated_at = utcnow()
        await session.flush()
        await record(
            session,
            tenant_id=principal.tenant_id,
            action="policy.updated",
            actor=principal.actor,
            target_type="policy",
            target_id=str(policy.id),
            details={
                "endpoint": slug,
                "changed": sorted(changed),
                **{k: policy.configuration for k in changed if k == "configuration"},
            },
        )
        endpoints.invalidate_after_commit(session, bus, principal.tenant_id, slug)
    return policy


async def delete_policy(
    session: AsyncSession,
    bus: InvalidationBus,
    principal: Principal,
    slug: str,
    policy_id: uuid.UUID,
) -> None:
    """`DELETE /endpoints/{slug}/policies/{id}`."""
    policy = await get_policy(session, slug, policy_id)
    await session.delete(policy)
    await session.flush()
    await record(
        session,
        tenant_id=principal.tenant_id,
        action="policy.deleted",
        actor=principal.actor,
        target_type="policy",
        target_id=str(policy_id),
        details={"endpoint": slug, "policy_type": policy.policy_type},
    )
    endpoints.invalidate_after_commit(session, bus, principal.tenant_id, slug)

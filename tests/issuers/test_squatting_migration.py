"""Migration 0004 backfills (issuer, audience) ownership: where several tenants already trusted
one pair, the tenant that registered it first keeps it."""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from app.core.db import sync_url
from app.issuers.models import TrustedIssuer
from app.tenants.models import Tenant


def test_backfill_gives_each_pair_to_its_first_owner(tmp_path):
    url = f"sqlite:///{tmp_path}/backfill.db"
    config = Config("alembic.ini")
    config.attributes["database_url"] = url  # never the session's database (settings cached)
    command.upgrade(config, "0003")
    engine = sa.create_engine(sync_url(url))
    a, b = uuid.uuid4(), uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    tenants, issuers = Tenant.__table__, TrustedIssuer.__table__  # Core inserts, no ORM
    with engine.begin() as conn:
        for tid, slug in ((a, "tenant-a"), (b, "tenant-b")):
            conn.execute(
                tenants.insert().values(
                    id=tid, slug=slug, name=slug, settings={}, created_at=t0, updated_at=t0
                )
            )
        common = {"jwks_uri": "https://idp.example/jwks", "algorithms": ["ES256"]}
        conn.execute(
            issuers.insert(),
            [
                {**common, "id": second, "tenant_id": b, "issuer": "https://idp.example",
                 "audiences": ["shared", "b-only"], "claim_mapping": {},
                 "created_at": t0 + dt.timedelta(days=1), "updated_at": t0},
                {**common, "id": first, "tenant_id": a, "issuer": "https://idp.example",
                 "audiences": ["shared"], "claim_mapping": {},
                 "created_at": t0, "updated_at": t0},
            ],
        )  # fmt: skip
    command.upgrade(config, "head")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT audience, tenant_id, issuer_id FROM issuer_audiences ORDER BY audience")
        ).all()
    engine.dispose()
    owners = {audience: (uuid.UUID(str(t)), uuid.UUID(str(i))) for audience, t, i in rows}
    assert owners == {"b-only": (b, second), "shared": (a, first)}
    command.downgrade(config, "0003")

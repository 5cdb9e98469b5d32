"""The models and the migrations agree: autogenerate finds nothing to do."""

from __future__ import annotations

import os

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.core.db import metadata, sync_url


def test_models_match_migrations(database):
    import app.models  # noqa: F401

    engine = create_engine(sync_url(os.environ["DATABASE_URL"]))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == [], diff


def test_tenant_filter_refuses_unscoped_queries(database):
    import asyncio

    import pytest
    from sqlalchemy import select

    from app.core.db import TenantScopeError, make_engine
    from app.users.models import User

    async def query() -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        engine = make_engine(os.environ["DATABASE_URL"])
        try:
            async with async_sessionmaker(engine)() as session:
                await session.execute(select(User))
        finally:
            await engine.dispose()

    with pytest.raises(TenantScopeError):
        asyncio.run(query())

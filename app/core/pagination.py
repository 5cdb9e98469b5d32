"""Cursor pagination: `{"items": [...], "next_cursor": "..."|null}` ordered by (created_at, id)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import Unprocessable

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    """`?limit=&cursor=` as parsed from the query string."""

    limit: int
    cursor: str | None


def page_params(
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Page size (max 200)."),
    cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the last page."),
) -> PageParams:
    """Dependency reading the pagination query parameters."""
    return PageParams(limit=limit, cursor=cursor)


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """An opaque cursor pointing after one row."""
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a cursor; a malformed one is a 422, never a 500."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise Unprocessable("Invalid cursor.", code="invalid_cursor") from exc


async def paginate(
    session: AsyncSession, stmt: Select[Any], model: Any, params: PageParams
) -> tuple[list[Any], str | None]:
    """Run a select page by page in (created_at, id) order."""
    if params.cursor:
        created, row_id = decode_cursor(params.cursor)
        stmt = stmt.where(
            or_(model.created_at > created, and_(model.created_at == created, model.id > row_id))
        )
    stmt = stmt.order_by(model.created_at, model.id).limit(params.limit + 1)
    rows = list((await session.execute(stmt)).scalars())
    next_cursor = None
    if len(rows) > params.limit:
        rows = rows[: params.limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor

"""Response models and query filters of the audit trail."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from fastapi import Query
from pydantic import BaseModel

from app.core.errors import Unprocessable
from app.core.logging import mask_email
from app.core.schemas import SLUG_PATTERN

ExportFormat = Literal["jsonl", "csv"]


class ActorView(BaseModel):
    """Who acted; the email is masked, and erased users show only their pseudonym."""

    type: str
    id: str | None
    email: str | None


class TargetView(BaseModel):
    """What the event is about."""

    type: str | None
    id: str | None


class AuditEventPublic(BaseModel):
    """One audit event as the API shows it (the hashes stay internal; `verify` checks them)."""

    id: uuid.UUID
    seq: int
    at: datetime
    actor: ActorView
    action: str
    target: TargetView
    outcome: str
    ip: str | None
    request_id: str | None
    details: dict[str, Any]


class EventFields(Protocol):
    """The public fields of an event: an `AuditEvent`, or a row of just those columns."""

    id: uuid.UUID
    seq: int
    at: datetime
    actor_type: str
    actor_id: str | None
    actor_email: str | None
    action: str
    target_type: str | None
    target_id: str | None
    outcome: str
    ip: str | None
    request_id: str | None
    details: dict[str, Any]


PUBLIC_COLUMNS = tuple(EventFields.__annotations__)


def iso_utc(moment: datetime) -> str:
    """`2030-01-01T00:00:00.123456Z`: the form every other Warden response uses."""
    return moment.isoformat().replace("+00:00", "Z")


def event_view(event: EventFields) -> dict[str, Any]:
    """The public shape of an event as plain JSON-ready data (lists, exports)."""
    return {
        "id": str(event.id),
        "seq": event.seq,
        "at": iso_utc(event.at),
        "actor": {"type": event.actor_type, "id": event.actor_id, "email": event.actor_email},
        "action": event.action,
        "target": {"type": event.target_type, "id": event.target_id},
        "outcome": event.outcome,
        "ip": event.ip,
        "request_id": event.request_id,
        "details": event.details,
    }


@dataclass(frozen=True)
class AuditFilters:
    """The filters every audit read accepts (list, export, a user's own export)."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    endpoint: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> dict[str, str]:
        """The filters as recorded in the `audit.exported` event (emails masked)."""
        shown: dict[str, str] = {}
        for name in ("actor", "action", "outcome", "endpoint", "since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            text = value.isoformat() if isinstance(value, datetime) else str(value)
            if name == "actor":
                text = mask_email(text) or text
            shown[name] = text
        return shown


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise Unprocessable(
            f"{name}: needs a time zone (e.g. 2030-01-01T00:00:00Z)", code="validation_error"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise Unprocessable(f"{name}: out of range", code="validation_error") from exc


def audit_filters(
    actor: str | None = Query(
        None, min_length=1, max_length=256, description="Actor id, or email (matched masked)."
    ),
    action: str | None = Query(None, min_length=1, max_length=64, description="e.g. auth.login"),
    outcome: str | None = Query(
        None, min_length=1, max_length=16, description="success, failure, denied…"
    ),
    endpoint: str | None = Query(
        None, pattern=SLUG_PATTERN, max_length=64, description="Endpoint slug."
    ),
    since: datetime | None = Query(None, description="Inclusive lower bound (ISO, with zone)."),
    until: datetime | None = Query(None, description="Exclusive upper bound (ISO, with zone)."),
) -> AuditFilters:
    """Dependency reading the audit filters from the query string."""
    since = _aware("since", since)
    until = _aware("until", until)
    if since is not None and until is not None and since >= until:
        raise Unprocessable("since: must be before until", code="validation_error")
    return AuditFilters(
        actor=(actor.strip() or None) if actor else None,
        action=action,
        outcome=outcome,
        endpoint=endpoint,
        since=since,
        until=until,
    )


class BrokenLinkView(BaseModel):
    """Where a chain first fails to verify."""

    seq: int
    id: uuid.UUID | None
    reason: str


class ChainHeadView(BaseModel):
    """The head of a chain: anchor `hash` outside Warden to detect a rewrite of the whole chain."""

    seq: int
    hash: str


class VerifyReport(BaseModel):
    """The result of walking one chain."""

    status: Literal["intact", "broken"]
    checked: int
    first_broken: BrokenLinkView | None
    head: ChainHeadView | None


CSV_COLUMNS = (
    "id",
    "seq",
    "at",
    "actor_type",
    "actor_id",
    "actor_email",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "ip",
    "request_id",
    "details",
)
# Spreadsheets run cells that start like a formula; audit values can be attacker-chosen
# (a login attempt's email domain, a slug), so such cells get a leading quote (OWASP advice).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def jsonl_chunk(events: Sequence[EventFields]) -> str:
    """Events as JSON lines (the public shape of each event)."""
    return "".join(json.dumps(event_view(e), separators=(",", ":")) + "\n" for e in events)


def csv_header() -> str:
    """The first line of a CSV export."""
    return csv_chunk_rows([list(CSV_COLUMNS)])


def csv_chunk(events: Sequence[EventFields]) -> str:
    """Events as CSV rows (`details` as JSON in one cell)."""
    return csv_chunk_rows(
        [
            [
                _cell(e.id),
                _cell(e.seq),
                _cell(iso_utc(e.at)),
                _cell(e.actor_type),
                _cell(e.actor_id),
                _cell(e.actor_email),
                _cell(e.action),
                _cell(e.target_type),
                _cell(e.target_id),
                _cell(e.outcome),
                _cell(e.ip),
                _cell(e.request_id),
                _cell(json.dumps(e.details, separators=(",", ":"), sort_keys=True)),
            ]
            for e in events
        ]
    )


def csv_chunk_rows(rows: list[list[str]]) -> str:
    """Rows rendered by the csv module (quoting, embedded newlines)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()

"""The hashed form of an event is pinned: `json.dumps(body, sort_keys=True,
separators=(",", ":"), default=str)`. Chains written before must keep verifying, so the
field-by-field writer is checked against that definition on arbitrary events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.audit.service import GENESIS, EventRow, canonical_details, canonical_event

TEXT = st.text(max_size=40)  # any code point: quotes, escapes, controls, astral planes
OPTIONAL_TEXT = st.none() | TEXT
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)


def reference(event: EventRow) -> bytes:
    body: dict[str, Any] = {
        "id": str(event.id),
        "tenant_id": str(event.tenant_id) if event.tenant_id else None,
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor_type": event.actor_type,
        "actor_digest": event.actor_digest,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "details": event.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


@settings(max_examples=300, deadline=None, database=None)
@given(
    tenant=st.none() | st.uuids(),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    offset=st.integers(min_value=0, max_value=10**15),
    texts=st.tuples(TEXT, TEXT, TEXT, TEXT),
    optional=st.tuples(OPTIONAL_TEXT, OPTIONAL_TEXT, OPTIONAL_TEXT),
    details=st.dictionaries(TEXT, JSON_VALUES, max_size=6),
)
def test_canonical_form_is_the_sorted_compact_json_of_the_event(
    tenant, seq, offset, texts, optional, details
):
    actor_type, digest, action, outcome = texts
    target_type, target_id, request_id = optional
    event = EventRow(
        id=uuid.uuid4(),
        tenant_id=tenant,
        seq=seq,
        at=datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=offset),
        actor_type=actor_type,
        actor_id=None,
        actor_email=None,
        actor_digest=digest,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        ip=None,
        request_id=request_id,
        details=details,
        prev_hash=GENESIS,
        hash=GENESIS,
    )
    assert canonical_event(event) == reference(event)
    # The writer passes the details it encoded once (and stores that text in the row).
    assert canonical_event(event, canonical_details(details)) == reference(event)

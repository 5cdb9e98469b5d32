"""The overview: decisions of the last hour by outcome and by endpoint, drawn as a small
server-rendered SVG chart, from the audit trail."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.authz.gateway import AUDIT_ACTION as GATEWAY_ACTION
from app.authz.service import CHECK_ACTION, QUERY_ACTION
from app.core.types import utcnow

DECISION_ACTIONS = (QUERY_ACTION, CHECK_ACTION, GATEWAY_ACTION)
OUTCOMES = ("allowed", "denied", "rate_limited", "error")
WINDOW = timedelta(hours=1)
BUCKETS = 12  # five minutes each
CHART_WIDTH = 600
CHART_HEIGHT = 160
AXIS = 20


@dataclass(frozen=True)
class Bar:
    """One stacked segment of the chart (SVG coordinates)."""

    x: float
    y: float
    width: float
    height: float
    outcome: str
    label: str


@dataclass
class Overview:
    """What the overview page shows."""

    total: int = 0
    by_outcome: list[tuple[str, int]] = field(default_factory=list)
    by_endpoint: list[tuple[str, dict[str, int], int]] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    peak: int = 0
    truncated: bool = False
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def _endpoint_of(details: Any) -> str:
    if isinstance(details, dict) and isinstance(details.get("endpoint"), str):
        return str(details["endpoint"])
    return "(no endpoint)"


def _bars(
    buckets: list[Counter[str]], start: datetime, peak: int, plot_height: int
) -> tuple[list[Bar], list[tuple[float, str]]]:
    slot = CHART_WIDTH / BUCKETS
    bars: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for index, counts in enumerate(buckets):
        x = index * slot
        base = float(plot_height)
        when = start + index * (WINDOW / BUCKETS)
        if index % 3 == 0:
            ticks.append((x + 2, when.strftime("%H:%M")))
        for outcome in OUTCOMES:
            count = counts.get(outcome, 0)
            if not count:
                continue
            height = plot_height * count / peak
            base -= height
            bars.append(
                Bar(
                    round(x + 2, 1),
                    round(base, 1),
                    round(slot - 4, 1),
                    round(height, 1),
                    outcome,
                    f"{when:%H:%M} {outcome}: {count}",
                )
            )
    return bars, ticks


async def last_hour(session: AsyncSession, limit: int = 20_000) -> Overview:
    """The last hour of the session tenant's decisions (the newest `limit` of them)."""
    now = utcnow()
    start = now - WINDOW
    rows = await audit.outcomes_since(session, DECISION_ACTIONS, start, limit)
    outcomes: Counter[str] = Counter()
    endpoints: dict[str, Counter[str]] = {}
    buckets: list[Counter[str]] = [Counter() for _ in range(BUCKETS)]
    for at, outcome, details in rows:
        outcomes[outcome] += 1
        endpoints.setdefault(_endpoint_of(details), Counter())[outcome] += 1
        moment = at if at.tzinfo is not None else at.replace(tzinfo=now.tzinfo)
        index = min(BUCKETS - 1, max(0, int((moment - start) / (WINDOW / BUCKETS))))
        buckets[index][outcome] += 1
    peak = max((sum(b.values()) for b in buckets), default=0)
    overview = Overview(total=len(rows), truncated=len(rows) >= limit, peak=peak)
    overview.by_outcome = [(o, outcomes.get(o, 0)) for o in OUTCOMES] + [
        (o, n) for o, n in sorted(outcomes.items()) if o not in OUTCOMES
    ]
    overview.by_endpoint = sorted(
        ((slug, dict(counts), sum(counts.values())) for slug, counts in endpoints.items()),
        key=lambda item: (-item[2], item[0]),
    )
    if peak:
        overview.bars, overview.ticks = _bars(buckets, start, peak, CHART_HEIGHT - AXIS)
    else:
        overview.ticks = _bars(buckets, start, 1, CHART_HEIGHT - AXIS)[1]
    return overview

"""The settled heap: start-up objects frozen out of the collector, full collections rare (each
walked every queued audit event with the event loop stopped: the long tail of every route)."""

from __future__ import annotations

import gc

from app.lifespan import GC_THRESHOLDS, settle_heap


def test_settle_heap_freezes_start_up_and_makes_full_collections_rare():
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        young, middle, full = gc.get_threshold()
        assert (young, middle, full) == GC_THRESHOLDS
        # Allocations between two full collections: at least 100x the defaults' 700 * 10 * 10.
        assert young * middle * full >= 100 * 700 * 10 * 10
        # The middle generation holds the survivors of `middle` young collections (queued audit
        # events): 20 of them had made each middle collection a 20-25 ms stop.
        assert middle <= 2
    finally:
        gc.set_threshold(*before)

"""The apps' lifespan (a composition root): builds the per-process state, starts it, stops it."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.core.config import Settings
from app.web.state import Runtime

# Collector thresholds once the heap is settled. With the defaults (700, 10, 10) a loaded
# process ran a full collection every ~1.3 s, each walking the 35k-190k objects queued for the
# audit writer or in flight (15-70 ms with the loop stopped, collecting nothing): the long tail
# of every route. Young generations collect every 7,000 allocations; the middle one every second
# young collection: it holds what survived them (mostly queued audit events, three tracked
# objects each), and after 20 young collections it held ~80k objects and took 20-25 ms of CPU
# with the loop stopped; after two, 5-9 ms. A full collection waits for 1,000 middle ones
# (14M allocations, as before: tens of seconds under load instead of a second).
GC_THRESHOLDS = (7_000, 2, 1_000)


def settle_heap() -> None:
    """Move everything alive after start-up (modules, models, caches) out of the garbage
    collector's reach: a full collection then walks the request garbage, not the ~200k
    long-lived objects, which had stalled the event loop for ~100 ms each; and make full
    collections rare (`GC_THRESHOLDS`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def runtime_lifespan(
    settings: Settings, shared: Runtime | None = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """An app lifespan that puts a runtime on `app.state`: its own (built, started, stopped
    here), or a shared one whose owner (`warden serve`) manages its lifecycle."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if shared is not None:
            app.state.runtime = shared
            yield
            return
        runtime = Runtime.build(settings)
        await runtime.start()
        app.state.runtime = runtime
        settle_heap()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan

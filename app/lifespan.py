"""The apps' lifespan (a composition root): builds the per-process state, starts it, stops it."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.core.config import Settings
from app.web.state import Runtime


def settle_heap() -> None:
    """Move everything alive after start-up (modules, models, caches) out of the garbage
    collector's reach: a full collection then walks the request garbage, not the ~200k
    long-lived objects, which had stalled the event loop for ~100 ms each."""
    gc.collect()
    gc.freeze()


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

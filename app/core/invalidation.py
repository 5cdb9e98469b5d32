"""Cross-process cache invalidation.

Caches register a handler for a topic (`endpoint`, `apikey`, …). `publish()` drops the entry in
this process at once and, with Redis, broadcasts on a pub/sub channel that every process listens
to, so a change takes effect everywhere within milliseconds. If the subscription drops, every
cache is cleared on reconnect (messages may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import after_commit

log = structlog.get_logger("warden.invalidation")
CHANNEL = "warden:invalidate"
Handler = Callable[[str | None], None]  # key, or None for "everything"


class InvalidationBus:
    """Publishes and receives `topic|key` invalidations."""

    HEARTBEAT_SECONDS = 0.25
    POLL_SECONDS = 1.0
    # Our own heartbeat comes back every HEARTBEAT_SECONDS: a subscription silent this long is a
    # dead connection or a frozen Redis, and is opened again.
    SILENCE_SECONDS = 5.0

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self.handlers: dict[str, list[Handler]] = {}
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.last_heard = float("-inf")  # monotonic time of the last message off the channel

    def live(self, within: float) -> bool:
        """Whether the subscription provably works: something (at least this process's own
        heartbeat, sent every `HEARTBEAT_SECONDS`) came back through Redis within `within`."""
        return self.ready.is_set() and time.monotonic() - self.last_heard <= within

    def register(self, topic: str, handler: Handler) -> None:
        """Call `handler(key)` when `topic|key` is published (`None`: drop everything)."""
        self.handlers.setdefault(topic, []).append(handler)

    def _dispatch(self, topic: str, key: str | None) -> None:
        for handler in self.handlers.get(topic, []):
            handler(key)

    def _clear_all(self) -> None:
        for topic in self.handlers:
            self._dispatch(topic, None)

    def publish_after_commit(self, session: AsyncSession, topic: str, key: str) -> None:
        """Publish `topic|key` once the session's transaction has committed (a change that rolls
        back invalidates nothing)."""

        async def publish() -> None:
            await self.publish(topic, key)

        after_commit(session, publish)

    async def publish(self, topic: str, key: str) -> None:
        """Invalidate here at once and in every other process."""
        self._dispatch(topic, key)
        if self.redis is not None:
            try:
                await self.redis.publish(CHANNEL, f"{topic}|{key}")
            except Exception as exc:  # the local cache is already correct; others have a TTL
                log.error("invalidation_publish_failed", error=repr(exc))

    def start(self) -> None:
        """Listen for other processes' invalidations."""
        if self.redis is not None:
            self._task = asyncio.create_task(self._listen(), name="invalidation")
            self._heartbeat = asyncio.create_task(self._beat(), name="invalidation-heartbeat")
        else:
            self.ready.set()

    async def _beat(self) -> None:
        assert self.redis is not None  # noqa: S101  (started only with Redis)
        while True:
            try:
                await self.redis.publish(CHANNEL, "heartbeat|")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the listener notices on its own; keep beating
                log.warning("invalidation_heartbeat_failed", error=repr(exc))
            await asyncio.sleep(self.HEARTBEAT_SECONDS)

    async def _listen(self) -> None:
        if self.redis is None:
            return
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self._clear_all()
                    self.ready.set()
                    heard = time.monotonic()
                    while True:
                        # An explicit read timeout: the client's socket timeout bounds commands
                        # (REDIS_TIMEOUT_SECONDS), not the silences of a subscription.
                        message = await pubsub.get_message(timeout=self.POLL_SECONDS)
                        if message is None:
                            if time.monotonic() - heard > self.SILENCE_SECONDS:
                                raise TimeoutError("the subscription went silent")
                            continue
                        heard = time.monotonic()
                        if message.get("type") != "message":
                            continue
                        self.last_heard = time.monotonic()
                        data = message["data"]
                        text = data.decode() if isinstance(data, bytes) else str(data)
                        topic, _, key = text.partition("|")
                        self._dispatch(topic, key or None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("invalidation_listener_failed", error=repr(exc))
                self.ready.clear()
                self._clear_all()
                await asyncio.sleep(1)

    async def stop(self) -> None:
        """Stop listening."""
        for task in (self._task, self._heartbeat):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._heartbeat = None
        self.ready.clear()

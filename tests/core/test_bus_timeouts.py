"""The invalidation bus's subscription on a client whose calls are bounded by
REDIS_TIMEOUT_SECONDS: a quiet channel is not an error (the socket timeout bounds commands, not
a subscription's silences); a frozen Redis is noticed and the subscription comes back after."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from app.core.invalidation import InvalidationBus
from app.core.redis import redis_options
from tests.faults.services import redis_server


async def wait_until(condition: Any, within: float) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_quiet_subscription_survives_socket_timeouts(monkeypatch: Any) -> None:
    monkeypatch.setattr(InvalidationBus, "HEARTBEAT_SECONDS", 3600.0)  # one beat, then silence
    with redis_server() as server:
        client = Redis.from_url(server.url, **redis_options(0.2))
        bus = InvalidationBus(client)
        seen: list[str | None] = []
        bus.register("endpoint", seen.append)
        bus.start()
        try:
            await asyncio.wait_for(bus.ready.wait(), 5)
            seen.clear()  # the subscription's own "drop everything"
            await asyncio.sleep(1.5)  # several socket timeouts' worth of silence
            assert bus.ready.is_set()
            await client.publish("warden:invalidate", "endpoint|e1")
            await wait_until(lambda: "e1" in seen, 2)
            assert None not in seen  # no resubscription happened (it clears every cache)
        finally:
            await bus.stop()
            await client.aclose()


async def test_frozen_redis_drops_and_restores_the_subscription(monkeypatch: Any) -> None:
    monkeypatch.setattr(InvalidationBus, "SILENCE_SECONDS", 1.0)
    with redis_server() as server:
        client = Redis.from_url(server.url, **redis_options(0.2))
        bus = InvalidationBus(client)
        bus.start()
        try:
            await asyncio.wait_for(bus.ready.wait(), 5)
            server.freeze()
            try:
                await wait_until(lambda: not bus.live(within=0.5), 3)
                await wait_until(lambda: not bus.ready.is_set(), 5)
            finally:
                server.thaw()
            await wait_until(lambda: bus.live(within=0.5), 10)
        finally:
            await bus.stop()
            await client.aclose()

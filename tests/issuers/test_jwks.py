"""The JWKS cache against a real IdP on 127.0.0.1, with a hand-driven clock for the time-based
rules (TTL bounds, the refetch floor, the stale window)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.jose import TokenError
from app.issuers.jwks import (
    MAX_JWKS_BYTES,
    InvalidKeySet,
    IssuerUnavailable,
    JwksCache,
    KeySet,
    keys_from_jwk,
    parse_jwks,
    ttl_from,
)

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(http, clock) -> JwksCache:
    return JwksCache(http, allowed_hosts=["127.0.0.1"], clock=clock, timeout=1.0)


class TestRefusedResponses:
    async def test_outbound_guard_is_checked_at_fetch_time(self, http, clock, realm):
        guarded = JwksCache(http, allowed_hosts=[], clock=clock)
        with pytest.raises(IssuerUnavailable):
            await guarded.get(realm.jwks_uri)
        assert realm.fetches == 0

    @pytest.mark.parametrize("mode", ["huge", "huge_declared"])
    async def test_five_megabytes_are_refused_and_not_cached(self, cache, clock, realm, mode):
        realm.mode = mode
        with pytest.raises(IssuerUnavailable):
            await cache.get(realm.jwks_uri)
        realm.mode = "ok"
        clock.advance(cache.refetch_floor)
        keys = await cache.get(realm.jwks_uri)
        assert keys.kids == [realm.keys[0].kid]
        assert realm.fetches == 2

    async def test_a_document_just_under_the_cap_is_accepted(self, cache, realm):
        realm.extra_jwks = [{"kty": "oct", "k": "x" * (MAX_JWKS_BYTES - 2000)}]
        keys = await cache.get(realm.jwks_uri)
        assert keys.kids == [realm.keys[0].kid]

    async def test_redirects_are_not_followed(self, cache, realm):
        realm.mode = "redirect"
        with pytest.raises(IssuerUnavailable):
            await cache.get(realm.jwks_uri)
        assert realm.redirect_target_fetches == 0

    @pytest.mark.parametrize("mode", ["fail", "garbage"])
    async def test_errors_and_non_json_are_unavailable(self, cache, realm, mode):
        realm.mode = mode
        with pytest.raises(IssuerUnavailable):
            await cache.get(realm.jwks_uri)

    async def test_a_stalled_idp_times_out(self, http, clock, realm):
        realm.mode, realm.delay = "slow", 3.0
        quick = JwksCache(http, allowed_hosts=["127.0.0.1"], clock=clock, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(IssuerUnavailable):
            await quick.get(realm.jwks_uri)
        assert time.monotonic() - started < 2.0

    async def test_a_failing_idp_is_not_retried_within_the_floor(self, cache, clock, realm):
        realm.mode = "fail"
        for _ in range(5):
            with pytest.raises(IssuerUnavailable):
                await cache.get(realm.jwks_uri)
            with pytest.raises(IssuerUnavailable):
                await cache.refresh_for_kid(realm.jwks_uri)
        assert realm.fetches == 1
        clock.advance(cache.refetch_floor)
        with pytest.raises(IssuerUnavailable):
            await cache.get(realm.jwks_uri)
        assert realm.fetches == 2


class TestLifetime:
    @pytest.mark.parametrize(
        ("header", "ttl"),
        [
            (None, 600.0),
            ("public, max-age=5", 60.0),
            ("max-age=3600", 3600.0),
            ("max-age=999999999", DAY),
            ('max-age="120", must-revalidate', 120.0),
            ("no-store", 60.0),
            ("no-cache", 60.0),
            ("private", 600.0),
            ("max-age=-5", 600.0),
            ("s-maxage=7200", 600.0),
        ],
    )
    def test_ttl_honours_max_age_within_bounds(self, header, ttl):
        assert ttl_from(header) == ttl

    @pytest.mark.parametrize(("header", "ttl"), [("max-age=5", 60.0), ("max-age=999999", DAY)])
    async def test_keys_are_refetched_when_the_ttl_ends(self, cache, clock, realm, header, ttl):
        realm.cache_control = header
        await cache.get(realm.jwks_uri)
        clock.advance(ttl - 1)
        await cache.get(realm.jwks_uri)
        assert realm.fetches == 1
        clock.advance(2)
        await cache.get(realm.jwks_uri)
        assert realm.fetches == 2

    async def test_stale_keys_serve_for_a_day_after_expiry_then_fail_closed(
        self, cache, clock, realm
    ):
        kid = realm.keys[0].kid
        await cache.get(realm.jwks_uri)
        realm.mode = "fail"
        clock.advance(601)
        assert (await cache.get(realm.jwks_uri)).kids == [kid]
        assert realm.fetches == 2
        clock.advance(DAY - 10)
        assert (await cache.get(realm.jwks_uri)).kids == [kid]
        clock.advance(20)
        with pytest.raises(IssuerUnavailable):
            await cache.get(realm.jwks_uri)
        realm.mode = "ok"
        clock.advance(cache.refetch_floor)
        assert (await cache.get(realm.jwks_uri)).kids == [kid]

    async def test_forget_drops_the_keys(self, cache, realm):
        await cache.get(realm.jwks_uri)
        cache.forget(realm.jwks_uri)
        await cache.get(realm.jwks_uri)
        cache.forget(None)
        await cache.get(realm.jwks_uri)
        assert realm.fetches == 3


class TestRefetch:
    async def test_unknown_kid_refetch_has_a_floor(self, cache, clock, realm):
        await cache.get(realm.jwks_uri)
        new = realm.rotate()
        keys = await cache.refresh_for_kid(realm.jwks_uri)
        assert keys.kids == [new.kid]
        for _ in range(50):
            await cache.refresh_for_kid(realm.jwks_uri)
        clock.advance(cache.refetch_floor - 0.1)
        await cache.refresh_for_kid(realm.jwks_uri)
        assert realm.fetches == 2
        clock.advance(0.2)
        await cache.refresh_for_kid(realm.jwks_uri)
        assert realm.fetches == 3

    async def test_concurrent_fetches_are_coalesced(self, cache, realm):
        realm.mode, realm.delay = "slow", 0.3
        results = await asyncio.gather(*[cache.get(realm.jwks_uri) for _ in range(25)])
        assert realm.fetches == 1
        assert all(keys is results[0] for keys in results)

    async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(self, cache, realm):
        realm.mode, realm.delay = "slow", 0.3
        first = asyncio.create_task(cache.get(realm.jwks_uri))
        second = asyncio.create_task(cache.get(realm.jwks_uri))
        await asyncio.sleep(0.05)
        first.cancel()
        keys = await second
        assert keys.kids == [realm.keys[0].kid]
        assert realm.fetches == 1


class TestPublishedKeySets:
    async def test_unusable_published_keys_are_skipped(self, cache, realm):
        good = realm.keys[0]
        realm.extra_jwks = [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**good.jwk(), "kid": "enc-1", "use": "enc"},
            {**good.jwk(), "kid": "wrap", "key_ops": ["wrapKey"]},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "ed"},
            "junk",
        ]
        keys = await cache.get(realm.jwks_uri)
        assert keys.kids == [good.kid]

    def test_a_key_set_is_an_object_with_keys(self):
        for document in ([], {"keys": {}}, {"nokeys": []}, "x"):
            with pytest.raises(InvalidKeySet):
                parse_jwks(document, strict=False)

    def test_too_many_keys(self, realm):
        jwk = realm.keys[0].jwk()
        with pytest.raises(InvalidKeySet, match="at most"):
            parse_jwks({"keys": [jwk] * 101}, strict=False)


class TestKeySelection:
    def test_rsa_without_alg_verifies_each_rs_algorithm(self, realm):
        key = realm.add_key("RS256")
        keys = keys_from_jwk(key.jwk(with_alg=False))
        assert sorted(k.alg for k in keys) == ["RS256", "RS384", "RS512"]
        assert keys_from_jwk(key.jwk())[0].alg == "RS256"

    def test_select_by_kid_and_alg(self, realm):
        ec_key, rsa_key = realm.keys[0], realm.add_key("RS256")
        keys = KeySet(keys_from_jwk(ec_key.jwk()) + keys_from_jwk(rsa_key.jwk(with_alg=False)))
        assert keys.select(ec_key.kid, "ES256").alg == "ES256"
        assert keys.select(rsa_key.kid, "RS512").alg == "RS512"
        assert keys.select("unknown", "ES256") is None
        with pytest.raises(TokenError):
            keys.select(ec_key.kid, "RS256")
        # Without kid: only when one key verifies the algorithm.
        assert keys.select(None, "ES256").kid == ec_key.kid
        keys = KeySet([*keys.keys, *keys_from_jwk(realm.add_key("ES256").jwk())])
        with pytest.raises(TokenError, match="ambiguous"):
            keys.select(None, "ES256")


class TestFetchStatus:
    """What the console shows of a JWKS URL: key ids, when it was last fetched, its error."""

    async def test_never_fetched_then_fetched_then_failing(self, cache, clock, realm):
        assert cache.status(realm.jwks_uri) is None
        before = time.time()
        keys = await cache.get(realm.jwks_uri)
        fetched = cache.status(realm.jwks_uri)
        assert fetched is not None
        assert fetched.key_ids == keys.kids
        assert fetched.error is None
        assert fetched.attempted_at is not None
        assert fetched.attempted_at >= before
        realm.mode = "fail"
        clock.advance(DAY)
        await cache.get(realm.jwks_uri)  # served stale
        failed = cache.status(realm.jwks_uri)
        assert failed is not None
        assert failed.error is not None
        assert failed.key_ids == keys.kids  # the keys still in use
        realm.mode = "ok"
        clock.advance(cache.refetch_floor)
        await cache.get(realm.jwks_uri)
        recovered = cache.status(realm.jwks_uri)
        assert recovered is not None
        assert recovered.error is None

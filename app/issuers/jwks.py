"""Trusted issuers' public keys: strict key-set parsing, and the per-process JWKS cache.

A remote JWKS is fetched with httpx (one total deadline, 64 KiB read by streaming, redirects
never followed, the outbound guard re-checked before every fetch) and cached for the IdP's
`Cache-Control: max-age` bounded to [60 s, 24 h] (10 min without one). A token naming an unknown
`kid` triggers a refetch at most once per `refetch_floor` seconds per JWKS URL, so garbage kids
cannot hammer the IdP; a failed fetch is not retried within the same floor. When the IdP is down,
the last good key set keeps serving for `stale_for` seconds after it expired; after that the
issuer is unavailable (fail closed). Concurrent fetches of one URL share one request.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from app.core import jose
from app.core.jose import TokenError, VerificationKey
from app.core.outbound import OutboundRefused, check_outbound_url

log = structlog.get_logger("warden.jwks")

MAX_JWKS_BYTES = 64 * 1024
MAX_KEYS = 100
MIN_TTL_SECONDS = 60.0
MAX_TTL_SECONDS = 86_400.0
DEFAULT_TTL_SECONDS = 600.0
MAX_CACHED_URIS = 10_000
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,12})\"?", re.IGNORECASE)


class IssuerUnavailable(TokenError):
    """The issuer's keys cannot be had (IdP down past the stale window): fail closed."""


class InvalidKeySet(ValueError):
    """An inline key set is unusable; the message names the bad key."""


class KeySet:
    """An issuer's verification keys, each pinned to one algorithm, looked up by `kid`."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self.keys = tuple(keys)
        self._by_kid: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.kid is not None:
                self._by_kid.setdefault(key.kid, []).append(key)

    @property
    def kids(self) -> list[str]:
        """The key ids, in document order."""
        return list(self._by_kid)

    def select(self, kid: str | None, alg: str) -> VerificationKey | None:
        """The one key for (`kid`, `alg`); None when `kid` is unknown (a refetch may help).

        A token without `kid` is accepted only when exactly one key verifies its algorithm."""
        if kid is not None:
            named = self._by_kid.get(kid)
            if named is None:
                return None
            candidates = [key for key in named if key.alg == alg]
        else:
            candidates = [key for key in self.keys if key.alg == alg]
        if not candidates:
            raise TokenError("no key of the issuer verifies this algorithm")
        if len(candidates) > 1:
            raise TokenError("key selection is ambiguous (token needs a distinct kid)")
        return candidates[0]


def keys_from_jwk(jwk: Any) -> list[VerificationKey]:
    """The verification keys of one public JWK: one per algorithm it may verify."""
    if not isinstance(jwk, Mapping):
        raise TokenError("key is not a JSON object")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise TokenError("key use is not sig")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise TokenError("key_ops does not allow verify")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise TokenError("kid is not a short string")
    declared = jwk.get("alg")
    if declared is not None:
        if not isinstance(declared, str) or declared not in jose.ASYMMETRIC_ALGORITHMS:
            raise TokenError(f"alg {declared!r} is not accepted")
        return [jose.key_from_jwk(jwk)]
    # Without `alg`, an RSA key may verify RS256/384/512 and an EC key its curve's algorithm;
    # the issuer's allow-list narrows it further when a token is checked.
    base = jose.key_from_jwk(jwk)
    return [
        VerificationKey(kid=base.kid, alg=alg, key=base.key)
        for alg in sorted(jose.algorithms_for_key(base.key))
    ]


def _describe(index: int, jwk: Any) -> str:
    kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
    return f"jwks.keys[{index}]" + (f" (kid {kid!r})" if isinstance(kid, str) else "")


def parse_jwks(document: Any, *, strict: bool, algorithms: Collection[str] | None = None) -> KeySet:
    """A key set from a JWKS document.

    `strict` (an admin's inline JWKS): every key must be a usable public signing key for one of
    `algorithms`, else `InvalidKeySet` naming it. Not strict (an IdP's published set): unusable
    keys (encryption keys, other key types) are skipped."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidKeySet("jwks: a JWK Set is an object with a keys array")
    entries = document["keys"]
    if len(entries) > MAX_KEYS:
        raise InvalidKeySet(f"jwks: at most {MAX_KEYS} keys")
    if strict and not entries:
        raise InvalidKeySet("jwks: the key set is empty")
    keys: list[VerificationKey] = []
    seen: set[tuple[str | None, str]] = set()
    skipped = 0
    for index, jwk in enumerate(entries):
        try:
            found = keys_from_jwk(jwk)
            if strict:
                if algorithms is not None and not {k.alg for k in found} & set(algorithms):
                    raise TokenError("key verifies none of the issuer's algorithms")
                if any((k.kid, k.alg) in seen for k in found):
                    raise TokenError("duplicate kid")
        except TokenError as exc:
            if strict:
                raise InvalidKeySet(f"{_describe(index, jwk)}: {exc.reason}") from exc
            skipped += 1
            continue
        seen.update((k.kid, k.alg) for k in found)
        keys.extend(found)
    if skipped:
        log.info("jwks_keys_skipped", skipped=skipped, kept=len(keys))
    return KeySet(keys)


def keys_from_pems(pems: Sequence[str], algorithms: Collection[str] | None = None) -> KeySet:
    """A key set from PEM public keys or certificates; each `kid` is the RFC 7638 thumbprint."""
    keys: list[VerificationKey] = []
    for index, pem in enumerate(pems):
        try:
            public = jose.key_from_pem(pem)
            kid = jose.jwk_thumbprint(public)
            found = [
                VerificationKey(kid=kid, alg=alg, key=public)
                for alg in sorted(jose.algorithms_for_key(public))
            ]
            for key in found:
                jose.check_key_matches_alg(key)  # e.g. RSA shorter than 2048 bits
            if algorithms is not None and not {k.alg for k in found} & set(algorithms):
                raise TokenError("key verifies none of the issuer's algorithms")
            keys.extend(found)
        except TokenError as exc:
            raise InvalidKeySet(f"public_keys_pem[{index}]: {exc.reason}") from exc
    return KeySet(keys)


def ttl_from(cache_control: str | None) -> float:
    """The cache lifetime an IdP asked for, bounded to [60 s, 24 h]; 10 min when silent."""
    if not cache_control:
        return DEFAULT_TTL_SECONDS
    match = _MAX_AGE.search(cache_control)
    if match is None:
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return MIN_TTL_SECONDS
        return DEFAULT_TTL_SECONDS
    return min(MAX_TTL_SECONDS, max(MIN_TTL_SECONDS, float(match.group(1))))


class JwksFetchError(Exception):
    """One fetch failed; `reason` is safe to log."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass
class _Entry:
    keys: KeySet | None = None
    fresh_until: float = -math.inf
    stale_until: float = -math.inf
    failed_at: float = -math.inf
    refetched_at: float = -math.inf
    # For people (the console): wall-clock time of the last fetch attempt and its failure.
    attempted_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class FetchStatus:
    """What this process knows of one JWKS URL: its key ids, when it was last fetched (Unix
    time) and why that fetch failed, if it did."""

    key_ids: list[str] | None
    attempted_at: float | None
    error: str | None


class JwksCache:
    """JWKS URL → key set, per process."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        allowed_hosts: Collection[str],
        timeout: float = 3.0,
        refetch_floor: float = 10.0,
        stale_for: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.allowed_hosts = tuple(allowed_hosts)
        self.timeout = timeout
        self.refetch_floor = refetch_floor
        self.stale_for = stale_for
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[KeySet | IssuerUnavailable]] = {}

    def status(self, uri: str) -> FetchStatus | None:
        """This process's last fetch of `uri` (None when it never fetched it)."""
        entry = self._entries.get(uri)
        if entry is None:
            return None
        kids = entry.keys.kids if entry.keys is not None else None
        return FetchStatus(key_ids=kids, attempted_at=entry.attempted_at, error=entry.error)

    def forget(self, uri: str | None) -> None:
        """Drop one URL's keys (issuer changed or deleted), or every URL's."""
        if uri is None:
            self._entries.clear()
        else:
            self._entries.pop(uri, None)

    async def get(self, uri: str) -> KeySet:
        """The key set, from memory while fresh; fetched (or served stale) otherwise."""
        entry = self._entries.get(uri)
        now = self.clock()
        if entry is not None:
            if entry.keys is not None and now < entry.fresh_until:
                return entry.keys
            if now - entry.failed_at < self.refetch_floor:
                # The IdP failed moments ago: answer from what we have instead of piling on.
                return self._stale_or_fail(entry, now)
        return await self._refresh(uri)

    async def refresh_for_kid(self, uri: str) -> KeySet:
        """Refetch because a token named an unknown kid, at most once per floor per URL."""
        entry = self._entries.get(uri)
        if entry is None:
            return await self.get(uri)
        now = self.clock()
        recent = max(entry.refetched_at, entry.failed_at)
        if now - recent < self.refetch_floor:
            return self._stale_or_fail(entry, now)
        entry.refetched_at = now
        return await self._refresh(uri)

    def _stale_or_fail(self, entry: _Entry, now: float) -> KeySet:
        if entry.keys is not None and now < entry.stale_until:
            if now >= entry.fresh_until:
                log.warning("jwks_served_stale", expired_seconds_ago=round(now - entry.fresh_until))
            return entry.keys
        raise IssuerUnavailable("issuer keys unavailable")

    async def _refresh(self, uri: str) -> KeySet:
        task = self._inflight.get(uri)
        if task is None:
            task = asyncio.create_task(self._fetch_and_store(uri), name="jwks-fetch")
            self._inflight[uri] = task
            task.add_done_callback(lambda done: self._forget_task(uri, done))
        # Shielded: a caller that goes away does not cancel the fetch others are waiting for.
        result = await asyncio.shield(task)
        if isinstance(result, IssuerUnavailable):
            raise IssuerUnavailable(result.reason)
        return result

    def _forget_task(self, uri: str, done: asyncio.Task[KeySet | IssuerUnavailable]) -> None:
        if self._inflight.get(uri) is done:
            del self._inflight[uri]

    def _entry(self, uri: str) -> _Entry:
        entry = self._entries.get(uri)
        if entry is None:
            entry = self._entries[uri] = _Entry()
            if len(self._entries) > MAX_CACHED_URIS:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(uri)
        return entry

    async def _fetch_and_store(self, uri: str) -> KeySet | IssuerUnavailable:
        started = self.clock()
        try:
            keys, ttl = await self._fetch(uri)
        except JwksFetchError as exc:
            log.warning("jwks_fetch_failed", jwks_uri=uri, reason=exc.reason)
            entry = self._entry(uri)
            entry.failed_at = self.clock()
            entry.attempted_at, entry.error = time.time(), exc.reason
            try:
                return self._stale_or_fail(entry, entry.failed_at)
            except IssuerUnavailable as unavailable:
                return unavailable
        except Exception as exc:  # the shared task must always hand waiters a result
            log.error("jwks_fetch_crashed", jwks_uri=uri, error=type(exc).__name__)
            return IssuerUnavailable("issuer keys unavailable")
        entry = self._entry(uri)
        entry.keys = keys
        entry.fresh_until = started + ttl
        entry.stale_until = entry.fresh_until + self.stale_for
        entry.failed_at = -math.inf
        entry.attempted_at, entry.error = time.time(), None
        log.info("jwks_fetched", jwks_uri=uri, keys=len(keys.keys), ttl=ttl)
        return keys

    async def _fetch(self, uri: str) -> tuple[KeySet, float]:
        try:
            # Re-checked at every fetch: DNS may have changed since the issuer was saved.
            await check_outbound_url(uri, self.allowed_hosts)
        except OutboundRefused as exc:
            raise JwksFetchError(f"refused by the outbound guard: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout):
                body, cache_control = await self._download(uri)
        except TimeoutError as exc:
            raise JwksFetchError("timed out") from exc
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"transport error {type(exc).__name__}") from exc
        try:
            document = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise JwksFetchError("response is not JSON") from exc
        try:
            keys = parse_jwks(document, strict=False)
        except InvalidKeySet as exc:
            raise JwksFetchError(str(exc)) from exc
        return keys, ttl_from(cache_control)

    async def _download(self, uri: str) -> tuple[bytes, str | None]:
        headers = {"Accept": "application/jwk-set+json, application/json"}
        async with self.http.stream(
            "GET", uri, headers=headers, timeout=self.timeout, follow_redirects=False
        ) as response:
            if response.status_code != 200:
                raise JwksFetchError(f"status {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_JWKS_BYTES:
                raise JwksFetchError("response too large")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksFetchError("response too large")
            return bytes(body), response.headers.get("cache-control")

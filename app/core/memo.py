"""Remembering values computed from objects that are replaced, never changed.

Compiled endpoints, principals, subjects and parsed rule nodes are immutable: a change makes a
new object. A value derived from such objects can be kept per object *identity* (equality would
confuse `1`, `1.0` and `True`, and hashing a large object costs what the memo saves). Each entry
holds its objects, so their ids cannot be reused while it is kept; the memo is cleared whole when
full, which bounds it without bookkeeping on the hot path.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """`key` → value, valid only while the entry's `anchors` are the very same objects."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[object, object, V]] = {}

    def get(self, key: Hashable, first: object, second: object = None) -> V | None:
        """The value stored under `key` for these anchor objects, else None."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] is first and entry[1] is second:
            return entry[2]
        return None

    def put(self, key: Hashable, first: object, value: V, second: object = None) -> V:
        """Remember `value` under `key` for these anchor objects; returns it."""
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (first, second, value)
        return value

    def clear(self) -> None:
        self._entries.clear()

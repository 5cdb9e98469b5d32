"""`IdentityMemo`: a value per object identity, never per equality, and bounded."""

from __future__ import annotations

from app.core.memo import IdentityMemo


class Frozen:
    def __eq__(self, other: object) -> bool:  # every instance equal: identity must still count
        return isinstance(other, Frozen)

    def __hash__(self) -> int:
        return 1


def test_values_belong_to_the_very_objects_they_were_made_from():
    memo: IdentityMemo[str] = IdentityMemo(10)
    a, b, c = Frozen(), Frozen(), Frozen()
    memo.put("k", a, "made from a and b", b)
    assert memo.get("k", a, b) == "made from a and b"
    assert memo.get("k", c, b) is None  # equal, not the same
    assert memo.get("k", a, c) is None
    assert memo.get("other", a, b) is None


def test_a_full_memo_starts_over():
    memo: IdentityMemo[int] = IdentityMemo(3)
    anchors = [object() for _ in range(4)]
    for n, anchor in enumerate(anchors):
        memo.put(n, anchor, n)
    assert memo.get(3, anchors[3]) == 3
    assert [memo.get(n, anchors[n]) for n in range(3)] == [None, None, None]

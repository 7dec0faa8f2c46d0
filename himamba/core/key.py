"""RadixKey: the token ids of a tree edge (plus an optional extra key), and page arithmetic.

A key is a list of token ids and an ``extra_key`` (for example a LoRA id or a cache salt).
Keys with different extra keys never share a node: the extra key is part of every child key.
Slicing a key keeps its extra key.

An extra key is ``None`` or a hashable value that equals itself and no value of another kind
(:func:`check_extra_key`): a list or a dict (unhashable) is refused, so is NaN (it never equals
itself: an entry stored under it could never be matched) and so is a bool (``True == 1``: it
would share the entries of ``extra_key=1``; pass an int or a str), also inside a tuple.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from himamba.errors import InvalidInputError
from himamba.validate import check_token_ids


class RadixKey:
    """Token ids of a tree edge or a query, with an optional ``extra_key``.

    ``token_ids`` is a plain list of ints (kept as given when it already is one; the key never
    mutates it). ``len(key)`` is the token count; ``key[a:b]`` is a new key with the same extra key.
    """

    __slots__ = ("token_ids", "extra_key")

    def __init__(self, token_ids: Iterable[int], extra_key: Hashable | None = None) -> None:
        self.token_ids: list[int] = check_token_ids(token_ids, "token_ids")
        self.extra_key = extra_key if extra_key is None or type(extra_key) is str else check_extra_key(extra_key)

    @classmethod
    def _trusted(cls, token_ids: list[int], extra_key: Hashable | None) -> RadixKey:
        """A key from a list already known to hold ints (slices of a checked key)."""
        key = cls.__new__(cls)
        key.token_ids = token_ids
        key.extra_key = extra_key
        return key

    # -- sequence protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, item: slice | int) -> Any:
        if isinstance(item, slice):
            return RadixKey._trusted(self.token_ids[item], self.extra_key)
        return self.token_ids[item]

    def __iter__(self):
        return iter(self.token_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RadixKey):
            return NotImplemented
        return self.extra_key == other.extra_key and self.token_ids == other.token_ids

    __hash__ = None  # keys are mutable-list backed; child_key() gives the hashable form

    def __repr__(self) -> str:
        body = preview(self.token_ids)
        return f"RadixKey({body})" if self.extra_key is None else f"RadixKey({body}, extra={self.extra_key!r})"

    # -- radix arithmetic ----------------------------------------------------------------------
    def child_key(self, page_size: int = 1) -> Hashable:
        """The key under which a node starting with this key is filed in ``parent.children``.

        Page size 1: the first token. Page size > 1: the tuple of the first ``page_size`` tokens.
        With an extra key the result is ``(extra_key, plain)``. The key must not be empty.
        """
        plain = self.token_ids[0] if page_size == 1 else tuple(self.token_ids[:page_size])
        return plain if self.extra_key is None else (self.extra_key, plain)

    def child_key_at(self, pos: int, page_size: int = 1) -> Hashable:
        """``self[pos:].child_key(page_size)`` without copying the rest of the key."""
        plain = self.token_ids[pos] if page_size == 1 else tuple(self.token_ids[pos:pos + page_size])
        return plain if self.extra_key is None else (self.extra_key, plain)

    def match_at(self, other: RadixKey, pos: int, page_size: int = 1, *, share: bool = False) -> int:
        """``self.match(other[pos:], page_size)`` without copying the rest of ``other``: only
        ``len(self)`` of its tokens are compared. Walks use it to move along a query by offset.

        ``share``: when all of this key matches, it keeps the query's copy of those tokens (equal
        values, the query's int objects) instead of its own. A later compare against the same
        query, such as the insert that follows a match, then meets the very same objects, which
        list equality passes without comparing values (about ten times faster). The key's
        tokens do not change, and no list anyone else holds is shared."""
        if self.extra_key != other.extra_key:
            raise InvalidInputError(
                f"cannot match keys with different extra keys ({self.extra_key!r} vs {other.extra_key!r})"
            )
        mine = self.token_ids
        theirs = other.token_ids[pos:pos + len(mine)]  # a new list: nobody else holds it
        if theirs == mine:  # the walks' usual case: the whole edge matches
            if share:
                self.token_ids = theirs
            n = len(mine)
        else:
            n = common_prefix_len(mine, theirs)
        return n - n % page_size if page_size > 1 else n

    def match(self, other: RadixKey, page_size: int = 1) -> int:
        """Length of the common prefix of two keys, counted in whole equal pages when
        ``page_size > 1``. Comparing keys with different extra keys is an error."""
        if self.extra_key != other.extra_key:
            raise InvalidInputError(
                f"cannot match keys with different extra keys ({self.extra_key!r} vs {other.extra_key!r})"
            )
        n = common_prefix_len(self.token_ids, other.token_ids)
        return n - n % page_size if page_size > 1 else n

    def page_aligned(self, page_size: int) -> RadixKey:
        """This key truncated to a multiple of ``page_size`` tokens (itself when aligned)."""
        extra = len(self.token_ids) % page_size
        return self if extra == 0 else RadixKey._trusted(self.token_ids[: len(self.token_ids) - extra], self.extra_key)


def check_extra_key(extra_key: object, name: str = "extra_key") -> Hashable | None:
    """``extra_key`` when it can key entries apart (see the module docstring), else
    :class:`InvalidInputError` saying why: unhashable, a bool, or unequal to itself (NaN)."""
    if extra_key is None or type(extra_key) in (str, int, bytes):
        return extra_key
    try:
        hash(extra_key)
    except TypeError:
        raise InvalidInputError(f"{name} must be hashable (a str, an int or a tuple of them), got a "
                                f"{type(extra_key).__name__}") from None
    _check_extra_part(extra_key, name)
    return extra_key


def _check_extra_part(value: object, name: str) -> None:
    if isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool")):
        raise InvalidInputError(f"{name} {value!r} is a bool, which equals the int {int(value)} and would share its "
                                "entries: pass an int or a str")
    if isinstance(value, (tuple, frozenset)):
        for part in value:
            _check_extra_part(part, name)
    elif value != value:  # NaN and its kind never equal themselves
        raise InvalidInputError(f"{name} {value!r} never equals itself, so entries stored under it could never "
                                "be matched again")


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading equal elements of two lists (C-speed slice compares, binary search)."""
    la, lb = len(a), len(b)
    if la == lb:  # the walks' case (match_at cuts the query to the edge): compare without a copy
        n = la
        if a == b:
            return la
    elif la < lb:
        n = la
        if a == b[:la]:
            return la
    else:
        n = lb
        if a[:lb] == b:
            return lb
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] holds; a[:hi+1] != b[:hi+1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def as_key(key: RadixKey | Sequence[int], extra_key: Hashable | None = None) -> RadixKey:
    """Accept a ``RadixKey`` or a plain sequence of ints (the public API takes both)."""
    if isinstance(key, RadixKey):
        return key
    if isinstance(key, (str, bytes)) or not isinstance(key, Sequence):
        raise InvalidInputError(f"a key must be a RadixKey or a list of ints, got {type(key).__name__}")
    return RadixKey(list(key), extra_key)


def preview(ids: Sequence[int], limit: int = 6) -> str:
    """A short text form of a token list: ``[1,2,3]`` or ``[1,2,3,…,9] (40)``."""
    if len(ids) <= limit:
        return "[" + ",".join(map(str, ids)) + "]"
    head = ",".join(map(str, ids[: limit - 1]))
    return f"[{head},…,{ids[-1]}] ({len(ids)})"

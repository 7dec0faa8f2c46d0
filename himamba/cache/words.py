"""Counted words for step texts: ``count(1, 'token')`` is "1 token", ``count(3, "child",
"children")`` is "3 children"."""

from __future__ import annotations


def count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"

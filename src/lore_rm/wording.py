"""Counts in words: ``counted(1, "user")`` is "1 user", ``counted(3, "user")`` "3 users"."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` and the noun, singular for exactly one."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"

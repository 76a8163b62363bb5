"""What values a setting takes, declared once per field.

A setting's *rule* is a tuple of constraints; a value is valid when one of them accepts it
(``weight_decay``: the word ``"auto"`` or a non-negative number). The same rule

* validates a config (:func:`check`: a one-line :class:`LoreError` naming the field, what it
  takes and the value given),
* reads the field's command-line text (:func:`parse`), and
* supplies values it refuses (:func:`bad_values`), so a test can feed every field of every
  config a bad value without listing them by hand.

A config dataclass declares a field's rule in its metadata (``field(metadata={"rule": ...})``).
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass
from typing import Any, get_args

from lore_rm.errors import LoreError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class Constraint:
    """One kind of value a setting takes."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """``text`` read as this kind of value (ValueError when it cannot be)."""
        raise NotImplementedError

    def bad_values(self) -> list[Any]:
        """Values near this constraint that it refuses."""
        return ["not-a-value", None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class Interval(Constraint):
    """A number (``kind`` int: an integer) between ``low`` and ``high`` (None: unbounded);
    ``closed``: which ends belong to it ("both", "left", "right" or "neither")."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = _is_number(value) and math.isfinite(value)
        if not ok:
            return False
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and (value < self.low or (value == self.low and not left)):
            return False
        return not (
            self.high is not None and (value > self.high or (value == self.high and not right))
        )

    def describe(self, plural: bool = False) -> str:
        noun = ("integer" if self.kind is int else "number") + ("s" if plural else "")
        left = self.closed in ("both", "left")
        if self.high is None and self.low == 0:
            adjective = "non-negative" if left else "positive"
        elif self.high is None and self.low == 1 and self.kind is int and left:
            adjective = "positive"
        else:
            adjective = ""
        if adjective:
            return f"{adjective} {noun}" if plural else f"a {adjective} {noun}"
        if self.low is not None and self.high is not None:
            lb, rb = ("[" if left else "("), ("]" if self.closed in ("both", "right") else ")")
            where = f"in {lb}{self.low:g}, {self.high:g}{rb}"
        elif self.low is not None:
            where = f"{'>=' if left else '>'} {self.low:g}"
        elif self.high is not None:
            where = f"{'<=' if self.closed in ('both', 'right') else '<'} {self.high:g}"
        else:
            return noun if plural else f"a{'n' if self.kind is int else ''} {noun}"
        article = "" if plural else ("an " if self.kind is int else "a ")
        return f"{article}{noun} {where}"

    def parse(self, text: str) -> Any:
        return int(text) if self.kind is int else float(text)

    def bad_values(self) -> list[Any]:
        out: list[Any] = ["x", True]
        step = 1 if self.kind is int else 0.5
        if self.low is not None:
            out.append(self.low - step if self.closed in ("both", "left") else self.low)
        if self.high is not None:
            out.append(self.high + step if self.closed in ("both", "right") else self.high)
        out.append(1.5 if self.kind is int else float("nan"))
        return out


@dataclass(frozen=True)
class Word(Constraint):
    """One literal value, spelled ``text`` on the command line (``None`` is ``"none"``)."""

    value: Any
    text: str | None = None

    @property
    def spelled(self) -> str:
        return self.text or str(self.value).lower()

    def accepts(self, value: Any) -> bool:
        return value is self.value if self.value is None else value == self.value

    def describe(self) -> str:
        return "none" if self.value is None else repr(self.value)

    def parse(self, text: str) -> Any:
        if text.lower() != self.spelled:
            raise ValueError(text)
        return self.value


@dataclass(frozen=True)
class Choices(Constraint):
    """One of a few words (a vocabulary: :func:`choices_of` reads it from a ``Literal``)."""

    values: tuple[str, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))

    def parse(self, text: str) -> Any:
        return text

    def bad_values(self) -> list[Any]:
        return ["no-such-choice", 1]


@dataclass(frozen=True)
class Flag(Constraint):
    """True or False (on the command line: true/false, yes/no, on/off, 1/0)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def parse(self, text: str) -> Any:
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError(text)

    def bad_values(self) -> list[Any]:
        return ["no", 1]


@dataclass(frozen=True)
class Several(Constraint):
    """A non-empty tuple of ``item`` values (``length`` of them when given; ``ordered``:
    non-decreasing), written comma-separated on the command line."""

    item: Interval
    length: int | None = None
    ordered: bool = False

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, tuple | list) or not value:
            return False
        if self.length is not None and len(value) != self.length:
            return False
        if not all(self.item.accepts(v) for v in value):
            return False
        return not self.ordered or all(a <= b for a, b in zip(value, value[1:], strict=False))

    def describe(self) -> str:
        items = self.item.describe(plural=True)
        if self.length is None:
            return f"one or more {items}"
        count = {2: "two"}.get(self.length, str(self.length))
        return f"{count} {items}" + (", each at least the one before" if self.ordered else "")

    def parse(self, text: str) -> Any:
        return tuple(self.item.parse(p) for p in text.split(",") if p.strip())

    def bad_values(self) -> list[Any]:
        good = self.item.low if self.item.low is not None else 0
        bad = [v for v in self.item.bad_values() if not isinstance(v, str)]
        n = self.length or 1
        out: list[Any] = [(), "x", *[(bad_v,) * n for bad_v in bad]]
        if self.length is not None:
            out.append((good,) * (self.length + 1))
        if self.ordered and self.item.high is not None:
            out.append((self.item.high, self.item.low))
        return out


Rule = tuple[Constraint, ...]


def choices_of(literal: Any) -> Choices:
    """The vocabulary of a ``Literal[...]`` type, as a :class:`Choices` constraint."""
    return Choices(tuple(get_args(literal)))


def rule_of(f: Field) -> Rule:
    """The rule declared in a dataclass field's metadata (empty when there is none)."""
    return tuple(f.metadata.get("rule", ()))


def describe(rule: Rule) -> str:
    return " or ".join(c.describe() for c in rule)


def check(name: str, value: Any, rule: Rule) -> None:
    """A one-line :class:`LoreError` unless one constraint of ``rule`` accepts ``value``."""
    if rule and not any(c.accepts(value) for c in rule):
        raise LoreError(f"{name} must be {describe(rule)}, got {value!r}")


def parse(flag: str, raw: str, rule: Rule) -> Any:
    """Command-line text ``raw`` read by ``rule`` (words first, then numbers or text); the
    value is validated afterwards, with the rest of its config."""
    text = raw.strip()
    for c in sorted(rule, key=lambda c: not isinstance(c, Word)):
        try:
            return c.parse(text)
        except ValueError:
            continue
    raise LoreError(f"{flag}: cannot read {raw!r} as {describe(rule)}")


def bad_values(rule: Rule) -> list[Any]:
    """Values no constraint of ``rule`` accepts (at least one for every rule)."""
    seen: list[Any] = []
    for c in rule:
        for v in c.bad_values():
            if not any(k.accepts(v) for k in rule) and not any(_same(v, s) for s in seen):
                seen.append(v)
    return seen


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b))

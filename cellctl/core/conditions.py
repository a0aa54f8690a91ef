"""Interlock conditions: ``device.tag <op> literal``, parsed without eval and judged on one Reading."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cellctl.core.tags import Reading, TagValue

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_FORM = re.compile(
    r"^\s*(?P<device>[A-Za-z0-9][A-Za-z0-9_\-]*)\.(?P<tag>[A-Za-z0-9][A-Za-z0-9_\-]*)\s*"
    r"(?P<op>==|!=|<=|>=|<|>)\s*(?P<literal>.+?)\s*$"
)
_ORDERING = frozenset({"<", ">", "<=", ">="})


def _literal(text: str) -> TagValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a literal: use true/false, a number or a quoted string") from None
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


@dataclass(frozen=True, slots=True)
class Condition:
    """One comparison of a tag with a literal, e.g. ``safety.air_bar < 5.5``."""

    device: str
    tag: str
    op: str
    literal: TagValue

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Parse ``device.tag <op> literal``; ValueError saying what is wrong."""
        match = _FORM.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not a condition: write 'device.tag <op> literal' with <op> one of "
                + ", ".join(_OPS)
            )
        literal = _literal(match["literal"])
        op = match["op"]
        if op in _ORDERING and not _is_number(literal):
            raise ValueError(f"{text!r}: {op} compares numbers, not {literal!r}")
        return cls(device=match["device"], tag=match["tag"], op=op, literal=literal)

    @property
    def qualified_tag(self) -> str:
        """``device.tag``."""
        return f"{self.device}.{self.tag}"

    def judge(self, reading: Reading) -> bool | None:
        """Whether the reading meets the condition; None when it cannot tell (not GOOD, types differ)."""
        if not reading.usable:
            return None
        value = reading.value
        assert value is not None
        literal = self.literal
        if isinstance(literal, bool) or isinstance(value, bool):
            # A bool never compares with a number here: 1 == true would hide a wrongly typed tag.
            if not (isinstance(literal, bool) and isinstance(value, bool)):
                return None
        elif _is_number(literal) != _is_number(value):
            return None
        return bool(_OPS[self.op](value, literal))

    def __str__(self) -> str:
        literal = str(self.literal).lower() if isinstance(self.literal, bool) else repr(self.literal)
        return f"{self.qualified_tag} {self.op} {literal}"


def _is_number(value: TagValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

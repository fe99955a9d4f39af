"""Floats computed from z0 behind autograd's back (``float(x)``, ``x.item()``, ``x.tolist()``),
followed through Python arithmetic until they come back into a torch op: there the gradient
through them is missing (a proven bias). Used by the provenance pass (:mod:`.provenance`).
"""
from __future__ import annotations

from typing import Any, Callable

from ..records import BreakEvent


class Tainted(float):
    """A Python float computed from z0 behind autograd's back (``float(x)``, ``x.item()``,
    ``x.tolist()``), carrying the escape event through Python arithmetic, so that its return
    into a torch op is seen: there the gradient through it is missing (a proven bias). Compares,
    formats and steers control flow as the float it is."""

    event: BreakEvent

    def __new__(cls, value: float, event: BreakEvent) -> Tainted:
        self = super().__new__(cls, value)
        self.event = event
        return self

    def __reduce__(self) -> Any:  # pickles as a plain float
        return (float, (float(self),))


def _taint_arith(name: str) -> Callable[..., Any]:
    op = getattr(float, name)

    def method(self: Tainted, *other: Any) -> Any:
        res = op(self, *other)
        return Tainted(res, self.event) if isinstance(res, float) else res
    method.__name__ = name
    return method


for _op in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
            "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__",
            "__rpow__", "__neg__", "__pos__", "__abs__"):
    setattr(Tainted, _op, _taint_arith(_op))


def taint(value: Any, event: BreakEvent) -> Any:
    """``value`` (a float, or nested lists of them, as ``tolist`` gives) with every float
    tainted by ``event``."""
    if isinstance(value, float):
        return Tainted(value, event)
    if isinstance(value, list):
        return [taint(v, event) for v in value]
    return value


def tainted_in(x: Any) -> list[BreakEvent]:
    """The escape events of the tainted floats among a call's arguments (nested lists too)."""
    out, stack = [], [x]
    while stack:
        v = stack.pop()
        if isinstance(v, Tainted):
            out.append(v.event)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return out


def plain_floats(x: Any) -> list[float]:
    """The non-integral Python floats among a call's arguments (nested lists too)."""
    out, stack = [], [x]
    while stack:
        v = stack.pop()
        if type(v) is float and not v.is_integer():
            out.append(v)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
    return out

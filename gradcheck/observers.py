"""Who wants to see every diagnosis as it is made (the pytest plugin's recorder).

Observers are scoped, not global: ``with observing(fn):`` calls ``fn(report)`` for every
:class:`~gradcheck.records.FlowReport` that :func:`gradcheck.diagnose` returns inside the block
(in this thread / async context), and nothing after it. No torch here: the plugin imports this
module when pytest starts.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator

_OBSERVERS: ContextVar[tuple[Callable[[Any], None], ...]] = ContextVar(
    "gradcheck_observers", default=())


@contextlib.contextmanager
def observing(fn: Callable[[Any], None]) -> Iterator[Callable[[Any], None]]:
    """Call ``fn(report)`` with every diagnosis made inside the block; nestable."""
    token = _OBSERVERS.set(_OBSERVERS.get() + (fn,))
    try:
        yield fn
    finally:
        _OBSERVERS.reset(token)


def notify(report: Any) -> None:
    for fn in _OBSERVERS.get():
        fn(report)

"""Who wants to see every diagnosis as it is made (the pytest plugin's ``--gradcheck-report``).

No torch here: the plugin imports this module when pytest starts.
"""
from __future__ import annotations

from typing import Any, Callable

_OBSERVERS: list[Callable[[Any], None]] = []


def add(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Call ``fn(report)`` with every :class:`~gradcheck.records.FlowReport` that
    :func:`gradcheck.diagnose` returns from now on; returns ``fn`` (for :func:`remove`)."""
    _OBSERVERS.append(fn)
    return fn


def remove(fn: Callable[[Any], None]) -> None:
    if fn in _OBSERVERS:
        _OBSERVERS.remove(fn)


def notify(report: Any) -> None:
    for fn in list(_OBSERVERS):
        fn(report)

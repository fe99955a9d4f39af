"""Who switched grad mode off before gradcheck was asked? A process-wide watcher.

A module that calls ``torch.set_grad_enabled(False)`` at import (or enters ``torch.no_grad()``
without leaving it) leaves every later forward pass without a graph; by the time a diagnosis
starts, the call is long gone. :func:`watch_grad_mode` wraps ``torch._C._set_grad_enabled``
(what ``no_grad``, ``set_grad_enabled`` and their decorators call) so that the switch that
turned grad mode off, while it stays off, is remembered with the caller's file:line and the API
as written. ``gradcheck run``/``optimize`` install it before importing ``--sampler`` and
``--denoiser`` objects, the pytest plugin at start-up; call it yourself before importing
third-party code. The cost is one frame walk per switch to False (none for switches on).
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from . import patches

#: installed once; failures: switches the watcher could not place (the switch still happened)
_STATE: dict[str, Any] = {"installed": False, "failures": 0}
#: per thread (grad mode is): the switch that turned it off
_OFF = threading.local()


def _watch(call_next: Any, mode: bool) -> Any:
    try:
        if not mode and torch.is_grad_enabled():
            from .torch_internals import grad_switch_site

            loc, fn, api, block = grad_switch_site()
            _OFF.site = {"location": loc, "function": fn, "api": api, "block": block}
        elif mode:
            _OFF.site = None
    except Exception:  # noqa: BLE001 - a watcher never breaks the switch: counted, not raised
        _STATE["failures"] += 1
    return call_next(mode)


def watch_grad_mode() -> None:
    """Install the watcher (idempotent): a process-wide observer of grad-mode switches
    (:mod:`gradcheck.patches`), each thread's own remembered apart."""
    if _STATE["installed"]:
        return
    patches.GRAD_MODE.observe(_watch)
    _STATE["installed"] = True


def who_switched_off() -> dict[str, Any] | None:
    """The switch that turned this thread's grad mode off, if the watcher saw it and it is
    still off: ``{"location", "function", "api", "block"}``."""
    if torch.is_grad_enabled():
        return None
    return getattr(_OFF, "site", None)

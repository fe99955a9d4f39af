"""Where an error raised in the backward pass comes from. The backward runs after the forward
has returned, so its traceback shows torch's engine (or a custom ``backward``), not the line of
the sampler that made the failing node. One replay of the forward and backward under
``torch.autograd.detect_anomaly`` (torch's public way to keep each node's forward traceback)
names that line; a light TorchFunctionMode notes, for every op of the replay, its user line and
the sampler step it ran in, so the line's step is known too. Bought only when the recorded
backward raised (one forward and one backward pass).
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from .probes import trace
from .records import Raised
from .torch_internals import is_user_file, rel_path, user_frames

_FRAME = re.compile(r'File "(.+?)", line (\d+), in (\S+)')
_NODE = re.compile(r"Error detected in (\w+?)Backward\d*\b")


class _OpSteps(TorchFunctionMode):
    """(op, the user lines on its stack, step) of every op, in forward order."""

    def __init__(self, tr: Any) -> None:
        super().__init__()
        self.tr, self.ops, self.failures = tr, [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        try:
            entries = self.tr._entries
            step = next((e.step for e in reversed(entries) if e.step is not None), None)
            lines = tuple(loc for loc, _ in user_frames(16))
            self.ops.append((getattr(func, "__name__", ""), lines, step))
        except Exception:  # noqa: BLE001 - counted: the replay only explains, the op has run
            self.failures += 1
        return out


def explain(run: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
            loss_of: Callable[[torch.Tensor], torch.Tensor], raised: Raised) -> int:
    """Fill in ``raised`` (a backward error) with the forward line that made the failing node,
    its function and its step, and say so in its hint. Returns the sampler calls made (1)."""
    z = z0.detach().clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught, trace() as tr:
        warnings.simplefilter("always")
        modes = _OpSteps(tr)
        error = None
        try:
            with torch.autograd.detect_anomaly(check_nan=False):
                with modes:
                    value = loss_of(run(z))
                torch.autograd.grad(value, [z], allow_unused=True)
        except Exception as exc:  # noqa: BLE001 - the error being explained, met again
            error = exc
    text = next((str(w.message) for w in caught
                 if "Traceback of forward call" in str(w.message)), None)
    if error is None or text is None:
        raised.hint = (raised.hint or "") + " (a replay under anomaly detection did not raise " \
            "again: the error depends on state that changed between calls)"
        return 1
    frames = [(p, int(n), fn) for p, n, fn in _FRAME.findall(text) if is_user_file(p)]
    if not frames:
        return 1
    path, line, fn = frames[-1]
    loc = f"{rel_path(path)}:{line}"
    node = _NODE.search(text)
    op = node.group(1).lower() if node else None
    at_line = [(name, s) for name, lines, s in modes.ops if loc in lines and s is not None]
    steps = [s for name, s in at_line if op is not None and
             name.strip("_").lower().startswith(op)] or [s for _, s in at_line]
    # the backward meets the latest use first: a line run at every step fails at the last
    was = f"raised at {raised.location} (in {raised.function}); " if raised.location else ""
    raised.location, raised.function = loc, fn
    raised.step = max(steps) if steps else None
    made = f"{node.group(1)}" if node else "the failing node"
    raised.hint = (f"{was}the forward op behind it: {made} at {loc} (in {fn}"
                   + (f", step {raised.step}" if raised.step is not None else "") + "), from a "
                   "replay under torch.autograd.detect_anomaly. "
                   + (raised.hint or ""))
    return 1

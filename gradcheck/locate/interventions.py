"""Does an escaped float reach the loss? Ask by intervention.

``float(x)`` hands Python a plain float: nothing can follow it through Python arithmetic
(``1.0 / float(x.std())``), so a value-matching scan sees it come back only when it comes back
unchanged. An intervention needs no following: replay the forward pass with that one
``float()`` result nudged up and down by 1% (relative), everything else equal (same z0, same
seeded RNG). If the loss moves both ways, oppositely and about as much, the value flows into
what the loss depends on, and since it depends on z0 while autograd does not see it, the
gradient misses that part: a proven bias. If the loss is bit-for-bit unchanged, or moves one
way only (a threshold the nudge crossed), the value only steered control flow or logging. One replay without a
nudge first tells whether the forward pass is deterministic (then any change counts, however
small; else only changes above the round-off of the loss). Cost: two forward passes per distinct
site (file:line), at most ``MAX_SITES``, and one more, only for float escapes the value scan did
not already resolve.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .. import patches
from ..records import BreakEvent

#: at most this many float() sites are replayed
MAX_SITES = 4
#: the relative nudge given to the float (large enough to survive a float32 round trip)
NUDGE = 1e-2


class _Nudged:
    """While active, the ``target``-th call of ``Tensor.__float__`` (0-based, all tensors of this
    thread) returns its value nudged."""

    def __init__(self, target: int, sign: float = 1.0) -> None:
        self.target = target
        self.sign = sign
        self.count = 0
        self.subscription: Any = None

    def nudge(self, call_next: Callable[..., float], t: torch.Tensor) -> float:
        v = call_next(t)
        k = self.count
        self.count += 1
        if k == self.target:
            return v + self.sign * NUDGE * (abs(v) if v != 0.0 else 1.0)
        return v

    def __enter__(self) -> _Nudged:
        self.subscription = patches.TENSOR_FLOAT.subscribe(self.nudge)
        self.subscription.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.subscription.__exit__(*exc)


def float_biases(sample_fn: Callable[[torch.Tensor], Any], z0: torch.Tensor,
                 loss_of: Callable[[torch.Tensor], torch.Tensor], *, run_ctx: Callable[[], Any],
                 base_loss: float, escapes: list[tuple[int, BreakEvent]]
                 ) -> tuple[list[BreakEvent], int]:
    """The float() escapes (ordinal, event) whose value reaches the loss, as bias events, and
    how many forward passes that took."""
    out: list[BreakEvent] = []
    seen = set()

    def replay(target: int, sign: float = 1.0) -> float | None:
        try:
            with _Nudged(target, sign), run_ctx(), torch.no_grad():
                return float(loss_of(sample_fn(z0.detach())).detach())
        except Exception:  # noqa: BLE001 - a replay that cannot run tells nothing
            return None

    again = replay(-1)
    passes = 1
    # deterministic: any change is the nudge's; else only one above the loss's round-off
    floor = 0.0 if again == base_loss else \
        8 * torch.finfo(z0.dtype).eps * abs(base_loss) + abs((again or base_loss) - base_loss)
    for ordinal, ev in escapes:
        if ev.location in seen or len(seen) >= MAX_SITES:
            continue
        seen.add(ev.location)
        up, down = replay(ordinal, 1.0), replay(ordinal, -1.0)
        passes += 2
        if up is None or down is None:
            continue
        d_up, d_down = up - base_loss, down - base_loss
        moved = max(abs(d_up), abs(d_down))
        # both ways, oppositely, about as much: the value is arithmetic in the loss (a branch
        # the nudge crossed moves it one way only)
        if abs(d_up) > 2 * floor and abs(d_down) > 2 * floor and -4.0 < d_up / d_down < -0.25:
            out.append(BreakEvent(
                kind="bias", cause="python_roundtrip", op=ev.op, index=ev.index, step=ev.step,
                before=ev.before, before_kind=ev.before_kind, after=ev.after,
                after_kind=ev.after_kind, location=ev.location, function=ev.function,
                detail=(f"float() of a value computed from z0 comes back into what the loss "
                        f"depends on (through Python arithmetic: nudging it by +-{NUDGE:g} "
                        f"relative moves the loss by {moved:.3e}); autograd does not see it, so "
                        f"the gradient misses the part through it")))
    return out, passes

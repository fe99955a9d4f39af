"""Every word gradcheck prints about a record, in one place: numbers, step ranges, probe statuses,
break descriptions and causes, the per-step table and the per-step picture.

Checks, the terminal summary, the HTML report, the plots, the DOT graphs and the assertion messages
all read from here, so a number or a cause reads the same everywhere. Pure: records in, strings
out; no torch.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .records import PATH_KINDS, BreakEvent, FlowReport, ProbeStats

# -- numbers and ranges ---------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    """A compact number: 1.2e-03 style, or 'none'."""
    if x is None:
        return "none"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.2e}"


def ranges(steps: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2, 5, 7..8'."""
    s = sorted(set(steps))
    out, i = [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}..{s[j]}")
        i = j + 1
    return ", ".join(out)


def steps_phrase(label: str, steps: list[int], singular: str | None = None) -> str:
    """'steps 0..2 <label>', or 'step 3 <singular>' for one step."""
    one = len(set(steps)) == 1
    return f"{'step' if one else 'steps'} {ranges(steps)} {(singular or label) if one else label}"


# -- probes ---------------------------------------------------------------------------------------

def steps_of(report: FlowReport, kinds: Iterable[str] | None = None) -> dict[int, list[ProbeStats]]:
    """The probes of ``report`` that belong to a sampler step, grouped by step (ascending), each
    group in forward order; ``kinds`` keeps only those kinds."""
    keep = set(kinds) if kinds is not None else None
    out: dict[int, list[ProbeStats]] = {}
    for p in sorted(report.probes, key=lambda p: p.order):
        if p.step is not None and (keep is None or p.kind in keep):
            out.setdefault(p.step, []).append(p)
    return dict(sorted(out.items()))


#: A probe's status in a few words (assertion messages, tooltips).
STATUS_WORDS = {"ok": "ok", "zero": "exactly zero", "nonfinite": "NON-FINITE",
                "unreached": "receives none (cut off)", "not_in_graph": "not in the autograd graph"}


def cell(p: ProbeStats | None) -> str:
    """A gradient norm, or what stands in for it: '-' not probed, 'none' nothing arrived,
    'no-graph' did not require grad, '0' exactly zero."""
    if p is None:
        return "-"
    st = p.status
    if st == "not_in_graph":
        return "no-graph"
    if st == "unreached":
        return "none"
    if st == "zero":
        return "0"
    if st == "nonfinite":
        return f"nan/inf({p.nonfinite})"
    return fmt(p.norm)


def node_label(p: ProbeStats) -> str:
    """A probe as a graph node: its name and what reached it."""
    return f"{p.name}\n" + {"ok": f"|g| {fmt(p.norm)}", "zero": "|g| = 0 exactly",
                            "nonfinite": f"{p.nonfinite} non-finite", "unreached": "no gradient",
                            "not_in_graph": "not in graph"}[p.status]


#: Columns of the per-step table: header -> probe kinds shown there.
COLUMNS = (("|g| state", ("x_T", "state")), ("|g| D_in", ("denoiser_in",)),
           ("|g| D_out", ("denoiser_out",)), ("|g| eps", ("step_noise",)))


def step_rows(r: FlowReport) -> list[list[str]]:
    """Header + one row per sampler step: sigma and the gradient norm at each probe kind."""
    rows = [["step", "sigma"] + [c for c, _ in COLUMNS]]
    for s, at in steps_of(r).items():
        sig = next((p.sigma for p in at if p.sigma is not None), None)
        row = [str(s), f"{sig:.4g}" if sig is not None else "-"]
        for _, kinds in COLUMNS:
            first = next((p for p in at if p.kind in kinds), None)  # the main call, not @mid
            row.append(cell(first))
        rows.append(row)
    return rows


def step_picture(report: FlowReport) -> str:
    """'steps 2..4 carry gradient (|g| 1.2e-03..4.5e-02); steps 0..1 receive none (...)'."""
    by_step = steps_of(report, PATH_KINDS)
    if not by_step:
        return "no per-step probes recorded (instrument the denoiser to get them)"
    carry, part, none, nograph = [], [], [], []
    for s, ps in by_step.items():
        if all(p.carries for p in ps):
            carry.append(s)
        elif any(p.carries for p in ps):
            part.append(s)
        elif all(not p.requires_grad for p in ps):
            nograph.append(s)
        else:
            none.append(s)
    parts = []
    if carry:
        norms = [p.norm for s in carry for p in by_step[s] if p.norm is not None]
        g = f"(|g| {fmt(min(norms))}..{fmt(max(norms))})"
        parts.append(steps_phrase(f"carry gradient {g}", carry, f"carries gradient {g}"))
    if part:
        parts.append(steps_phrase("carry gradient only in part of their probes", part,
                                  "carries gradient only in part of its probes"))
    if none:
        # a stationary loss sends nothing back at all: the steps are not cut off, the loss is
        # flat (the path probe says whether the path itself is alive)
        why = ("the loss is stationary: dL/d(output) is exactly 0" if
               report.output_grad_max_abs == 0.0 else "in the autograd graph, but cut off from "
               "the loss")
        parts.append(steps_phrase(f"receive none ({why})", none, f"receives none ({why})"))
    if nograph:
        parts.append(steps_phrase("are not in the autograd graph at all", nograph,
                                  "is not in the autograd graph at all"))
    return "; ".join(parts)


#: How the two kinds of break point (:func:`gradcheck.checks.break_point`) read.
BREAK_POINT_WORDS = {"graph_ends": "graph ends", "gradient_stops": "gradient stops"}


def probe_where(p: ProbeStats) -> str:
    return f"step {p.step}" if p.step is not None else p.kind


# -- breaks ---------------------------------------------------------------------------------------

#: Break causes the locator names, and how they read.
CAUSES = {
    "non_autograd_collective": "a torch.distributed collective, which autograd does not see "
                               "(the autograd-aware ones are in torch.distributed.nn.functional)",
    "no_grad": "no_grad region",
    "grad_mode_off": "grad mode switched off by a call (not a with-block)",
    "inference_mode": "inference_mode region",
    "detach": ".detach()",
    "data_read": ".data read",
    "data_write": ".data write",
    "requires_grad_false": "requires_grad_(False)",
    "non_differentiable": "non-differentiable op",
    "int_cast": "integer/bool cast",
    "python_roundtrip": "round trip through Python",
    "numpy_roundtrip": "round trip through NumPy",
    "decorated_no_grad": "entry point decorated with @torch.no_grad()",
    "reentrant_checkpoint": "reentrant checkpoint with no input requiring grad",
    "inplace_no_grad": "in-place write under no_grad",
    "disconnected_randomness": "disconnected randomness",
    "zero_grad_op": "op passes exactly zero gradient",
    "constant_zero": "multiplied by a constant exact zero (structural)",
    "nonfinite_backward": "op produces NaN/Inf in backward",
    "custom_backward": "a custom autograd.Function's backward does not match its forward",
    "gradient_hook": "a gradient hook changes the gradient (register_hook)",
    "module_hook": "a module backward hook changes the gradient (register_full_backward_hook)",
    "wrong_vjp": "an op's backward is not the derivative of its forward (found numerically)",
    "unknown": "unclassified op",
}

#: What to change, per break cause (the report's break panel and the terminal say it).
FIXES = {
    "non_autograd_collective": "use the autograd-aware collectives of "
                               "torch.distributed.nn.functional (all_reduce, all_gather) here",
    "no_grad": "remove the `with torch.no_grad()` block around this line (or move the sampling "
               "out of it); every site listed must change",
    "grad_mode_off": "remove the torch.set_grad_enabled(False) call, or switch grad mode back on "
                     "before the sampler runs",
    "inference_mode": "do not sample under torch.inference_mode(): its tensors can never carry "
                      "gradient; use nothing (or no_grad only where no gradient is wanted)",
    "detach": "drop the .detach() here (if it is meant to truncate backprop, as DRaFT-K does, "
              "no gradient reaches z0 by design)",
    "data_read": "use the tensor itself instead of its .data",
    "data_write": "write out of place (x = x + d) instead of through .data",
    "requires_grad_false": "do not call requires_grad_(False) on a value computed from z0",
    "non_differentiable": "replace the op by a differentiable surrogate (a softmax-weighted "
                          "average instead of argmax, a sigmoid instead of a comparison)",
    "int_cast": "keep the value in a floating dtype: integer and bool tensors carry no gradient",
    "python_roundtrip": "keep the value a tensor: no .item(), float(), int() or .tolist() on a "
                        "value computed from z0",
    "numpy_roundtrip": "keep the computation in torch (no .numpy(), np.asarray)",
    "decorated_no_grad": "remove the @torch.no_grad() / @torch.inference_mode() decorator from "
                         "the entry point (or diagnose with allow_grad=True to see what else "
                         "blocks it); every site listed must change",
    "reentrant_checkpoint": "call torch.utils.checkpoint.checkpoint(..., use_reentrant=False)",
    "inplace_no_grad": "do the in-place update with grad mode on, or out of place",
    "disconnected_randomness": "derive the step noise from a learnable tensor (mode "
                               "learnable_step_noise) or leave it out of what you optimise",
    "zero_grad_op": "round/floor/sign pass zero gradient: use a straight-through estimator, "
                    "x + (x.round() - x).detach()",
    "constant_zero": "a factor is exactly zero (a zero sigma, weight or mask): check the schedule "
                     "or the mask",
    "nonfinite_backward": "keep the op's input inside its domain (sqrt/log of 0: add an epsilon "
                          "or clamp) so its backward stays finite",
    "custom_backward": "fix the custom autograd.Function's backward; check it with "
                       "torch.autograd.gradcheck in float64",
    "gradient_hook": "remove or fix the register_hook callback that changes the gradient",
    "module_hook": "remove or fix the module's backward hook that changes the gradient",
    "wrong_vjp": "check the ops between these probes with torch.autograd.gradcheck in float64",
    "unknown": "look at the op on this line: it cuts the gradient",
}

KIND_WORDS = {"z0": "z0", "x_T": "x_T", "state": "state update", "step_noise": "step noise",
              "denoiser_in": "denoiser input", "denoiser_out": "denoiser output",
              "output": "output", "loss": "loss", "custom": "custom probe"}

_VERBS = {"bias": "is bypassed", "escape": "escapes", "randomness": "takes in fresh noise",
          "zero": "becomes exactly zero", "nonfinite": "becomes non-finite"}


def break_where(ev: BreakEvent) -> str:
    """'step 2 (denoiser output -> state update)'."""
    head = f"step {ev.step}" if ev.step is not None else "before the first step"
    if ev.before_kind or ev.after_kind:
        a = KIND_WORDS.get(ev.before_kind or "", ev.before or "start")
        b = KIND_WORDS.get(ev.after_kind or "", ev.after or "end")
        head += f" ({a} -> {b})"
    return head


def describe_break(ev: BreakEvent) -> str:
    """'breaks at step 2 (denoiser output -> state update), op detach at my_sampler.py:41
    (cause: .detach())'."""
    at = (f" at {ev.location}" if ev.location else "") + \
        (f" on rank {ev.rank}" if ev.rank is not None else "")
    cause = CAUSES.get(ev.cause, ev.cause)
    detail = f"; {ev.detail}" if ev.detail else ""
    return (f"{_VERBS.get(ev.kind, 'breaks')} at {break_where(ev)}, op {ev.op}{at} "
            f"(cause: {cause}{detail})")


def located(r: FlowReport) -> str | None:
    """The break locator's explanation, when it ran and found one."""
    loc = r.locator
    if loc is None or not loc.ran:
        return None
    if loc.primary is not None:
        return describe_break(loc.primary)
    return loc.note


def locator_failures(r: FlowReport) -> str | None:
    """'the locator could not follow 3 ops: ...' when its bookkeeping failed somewhere."""
    loc = r.locator
    if loc is None or not loc.internal_failures:
        return None
    ops = ", ".join(loc.failed_ops[:5]) + (", ..." if len(loc.failed_ops) > 5 else "")
    return (f"the locator could not follow {loc.internal_failures} op(s): {ops}; what it says "
            f"may be incomplete")


def value(v: Any) -> Any:
    """A finding's value or threshold for a table cell."""
    return fmt(v) if isinstance(v, float) else v

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

from .records import PATH_KINDS, FlowReport, ProbeStats
from .words import (  # noqa: F401 - re-exported: gradcheck.text has always had them
    CAUSES, FIXES, KIND_WORDS, break_where, describe_break,
)

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


# -- breaks: the words (causes, fixes, kinds, a break's sentence) are in gradcheck.words --------

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

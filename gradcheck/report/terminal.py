"""The compact terminal summary of a run: per mode, every check and a per-step gradient table."""
from __future__ import annotations

from ..records import FlowReport, RunRecord
from ..text import fmt, locator_failures, located, step_rows

def step_table(r: FlowReport) -> list[str]:
    """:func:`step_rows` as aligned text lines."""
    rows = step_rows(r)
    if len(rows) == 1:
        return ["  (no per-step probes)"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]


def locator_lines(r: FlowReport) -> list[str]:
    """What the break locator found, if it ran."""
    loc = r.locator
    if loc is None or not loc.ran:
        return []
    out = [f"  located: {located(r) or 'no break'}"]
    failures = locator_failures(r)
    if failures:
        out.append(f"  locator: {failures}")
    for e in loc.randomness[:6]:
        out.append(f"  randomness: fresh {e.op} at {e.location} enters the state at step {e.step} "
                   f"(not derived from z0)")
    if len(loc.randomness) > 6:
        out.append(f"  randomness: ... {len(loc.randomness) - 6} more draws")
    return out


_TAGS = {"info": "info", "warning": "WARN"}


def rank_lines(r: FlowReport) -> list[str]:
    """Per-rank detail of a distributed run: one line per rank where the ranks differ."""
    if not r.ranks:
        return []
    keys = [(x["passed"], x["z0_status"], tuple(x["failed"])) for x in r.ranks]
    if len(set(keys)) == 1:
        return [f"  ranks: {len(r.ranks)} processes ({r.parallel or 'user layout'}), alike: "
                f"z0 shard {r.ranks[0]['z0_status']} on every rank"]
    out = [f"  ranks: {len(r.ranks)} processes ({r.parallel or 'user layout'}) differ:"]
    for x in r.ranks:
        g = fmt(x["z0_norm"]) if x["z0_norm"] is not None else "none"
        out.append(f"    rank {x['rank']}: {'PASS' if x['passed'] else 'FAIL'}, |dL/dz0 shard| {g}"
                   + (f", failed {', '.join(x['failed'])}" if x["failed"] else "")
                   + (f"; located: {x['located']}" if x.get("located") else ""))
    return out


def mode_summary(r: FlowReport) -> list[str]:
    errors = [f for f in r.checks if f.level == "error"]
    n_ok = sum(f.passed for f in errors)
    verdict = "PASS" if r.passed else "FAIL"
    lines = [f"mode {r.mode}: {verdict} ({n_ok}/{len(errors)} checks)  "
             f"loss {fmt(r.loss)} [{r.objective}: {r.loss_description}]"]
    width = max(len(f.name) for f in r.checks)
    for f in r.checks:
        tag = _TAGS.get(f.level) or ("PASS" if f.passed else "FAIL")
        lines.append(f"  {tag:4}  {f.name:<{width}}  {f.message}")
    lines += [f"  note: {n}" for n in r.notes]
    lines += rank_lines(r)
    lines += locator_lines(r)
    if r.truncation:
        lines.append(f"  truncation: {r.truncation['effect']}")
    lines += step_table(r)
    t = r.timings
    lines.append("  time: " + ", ".join(f"{k[:-2]} {v:.3f}s" for k, v in t.items()))
    if r.cost is not None:
        lines.append("  " + cost_line(r.cost))
    return lines


#: said beside the unit when its pass also recorded the op detail
UNIT_OP_DETAIL = ", the recorded pass with its op detail (--op-detail never: without)"


def cost_line(c) -> str:
    """'cost: 2.1 x one forward+backward (checks default): baseline 0.3, record 1.0, ...;
    5 sampler forward passes, 1 backward'."""
    import math

    if not (c.unit_s > 0 and math.isfinite(c.total_units)):  # no forward+backward completed
        secs = sum(x.seconds for x in c.stages)
        return (f"cost: {secs:.3f}s, {c.forwards} sampler forward passes (no forward+backward "
                f"completed to measure the rest against)")
    parts = ", ".join(f"{x.stage} {x.units:.2f}" for x in c.stages)
    return (f"cost: {c.total_units:.2f} x one forward+backward of the sampler "
            f"({c.unit_s:.3f}s{UNIT_OP_DETAIL if getattr(c, 'unit_op_detail', False) else ''}; "
            f"checks {c.checks}): {parts}; {c.forwards} sampler forward "
            f"passes, {c.backwards} backward")


def summary(rec: RunRecord | FlowReport) -> str:
    """What ``gradcheck run`` prints: for a whole run, its heading and every mode; for one
    diagnosis (a :class:`FlowReport`), every check, the located break, the per-step gradient
    table, the timings."""
    if isinstance(rec, FlowReport):
        return "\n".join(mode_summary(rec))
    c = rec.config
    s = c.get("sampler", {})
    if "sampler_description" in c:
        head = (f"gradcheck {rec.environment.get('gradcheck', '')}: "
                f"{c['sampler_description']}, z0 {c.get('z0_shape')} {c.get('dtype')} on "
                f"{c.get('device')}, seed {c.get('seed')}")
    else:
        head = (f"gradcheck {rec.environment.get('gradcheck', '')}: RES {s.get('solver')}, "
                f"{s.get('steps')} steps, sigma {s.get('sigma_max')} -> {s.get('sigma_min')}, "
                f"denoiser {c.get('denoiser')}, z0 {c.get('z0_shape')} {c.get('dtype')} on "
                f"{c.get('device')}, seed {c.get('seed')}")
        if (c.get("nproc") or 1) > 1:
            head += f", {c['nproc']} processes ({c.get('parallel')})"
    lines = [head, ""]
    for r in rec.modes.values():
        lines += mode_summary(r) + [""]
    verdict = "all checks pass" if rec.passed else "some checks FAIL: " + ", ".join(
        f"{m}/{f.name}" for m, r in rec.modes.items() for f in r.failed)
    lines.append(f"verdict: {verdict}")
    return "\n".join(lines)

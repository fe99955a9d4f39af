"""What changed between two runs (``gradcheck diff A/report.json B/report.json``): verdicts, checks
that flipped, the gradient at every probe as a ratio B/A, and breaks that appeared, went or moved.

Pure: records in, plain data out (no torch), like the checks. ``B`` is *worse* when a mode that
passed fails, an error-level check that passed fails, or a break appears or moves earlier in the
forward pass (further from the output); the CLI then exits 2, as ``run`` does for a failing run.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

from .checks import break_point
from .records import FlowReport, ProbeStats, RunRecord
from .text import describe_break, fmt

#: a probe whose |g| changed by more than this factor (either way) is listed as changed
RATIO_NOTE = 2.0


@dataclass
class CheckChange:
    name: str
    a: str  # "pass", "FAIL", "warn", "info" or "-" (not run)
    b: str
    message_b: str
    worse: bool


@dataclass
class ProbeChange:
    name: str
    kind: str
    step: int | None
    a: float | None  # |g| (None: no gradient)
    b: float | None
    status_a: str
    status_b: str

    @property
    def ratio(self) -> float | None:
        if self.a and self.b and math.isfinite(self.a) and math.isfinite(self.b):
            return self.b / self.a
        return None


@dataclass
class ModeDiff:
    mode: str
    passed_a: bool
    passed_b: bool
    checks: list[CheckChange] = field(default_factory=list)  # only those that changed
    probes: list[ProbeChange] = field(default_factory=list)  # every probe in both runs
    only_a: list[str] = field(default_factory=list)  # probes in A only
    only_b: list[str] = field(default_factory=list)
    break_a: str | None = None
    break_b: str | None = None
    break_change: str | None = None  # appeared, gone, moved earlier, moved later, changed
    z0_ratio: float | None = None

    @property
    def worse(self) -> bool:
        return (self.passed_a and not self.passed_b) or any(c.worse for c in self.checks) or \
            self.break_change in ("appeared", "moved earlier")

    @property
    def better(self) -> bool:
        return (not self.passed_a and self.passed_b) or self.break_change == "gone"

    def changed_probes(self, factor: float = RATIO_NOTE) -> list[ProbeChange]:
        out = []
        for p in self.probes:
            r = p.ratio
            if p.status_a != p.status_b or (r is not None and (r > factor or r < 1 / factor)):
                out.append(p)
        return out


@dataclass
class RunDiff:
    title_a: str
    title_b: str
    modes: list[ModeDiff] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)  # modes in A only
    only_b: list[str] = field(default_factory=list)
    # "key: A vs B" for each setting that makes the runs' probes differ in meaning
    config_differs: list[str] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return any(m.worse for m in self.modes) or bool(self.only_a)

    def lines(self, limit: int = 12) -> list[str]:
        """The terminal summary."""
        out = [f"A: {self.title_a}", f"B: {self.title_b}"]
        if self.config_differs:
            out.append("warning: the runs differ in configuration ("
                       + "; ".join(self.config_differs) + "): probes are matched by name and "
                       "step, which may not be the same place in both")
        for m in self.modes:
            head = {(True, True): "PASS -> PASS", (True, False): "PASS -> FAIL (worse)",
                    (False, True): "FAIL -> PASS (better)",
                    (False, False): "FAIL -> FAIL"}[(m.passed_a, m.passed_b)]
            z = f"; |dL/dz0| x{m.z0_ratio:.3g}" if m.z0_ratio is not None else ""
            out.append(f"mode {m.mode}: {head}{z}")
            for c in m.checks:
                out.append(f"  {c.name}: {c.a} -> {c.b}{'  (worse)' if c.worse else ''}"
                           f"  {textwrap.shorten(c.message_b, 140, placeholder=' ...')}")
            if m.break_change:
                out.append(f"  break {m.break_change}: "
                           + (f"A {m.break_a}; " if m.break_a else "A none; ")
                           + (f"B {m.break_b}" if m.break_b else "B none"))
            changed = m.changed_probes()
            if changed:
                out.append(f"  {len(changed)} of {len(m.probes)} probes changed |g| by more than "
                           f"{RATIO_NOTE:g}x or their status:")
                for p in changed[:limit]:
                    r = p.ratio
                    what = f"x{r:.3g}" if r is not None else f"{p.status_a} -> {p.status_b}"
                    out.append(f"    {p.name:<16} {fmt(p.a):>9} -> {fmt(p.b):>9}  {what}")
                if len(changed) > limit:
                    out.append(f"    ... {len(changed) - limit} more (the HTML lists them all)")
            elif m.probes:
                rs = [p.ratio for p in m.probes if p.ratio is not None]
                if rs:
                    out.append(f"  every probe's |g| within {RATIO_NOTE:g}x of A "
                               f"(ratios {min(rs):.3g}..{max(rs):.3g})")
            if m.only_a or m.only_b:
                out.append(f"  probes only in A: {len(m.only_a)}, only in B: {len(m.only_b)}")
        for name in self.only_a:
            out.append(f"mode {name}: in A only (worse: B did not run it)")
        for name in self.only_b:
            out.append(f"mode {name}: in B only")
        out.append("verdict: B is worse than A" if self.worse else
                   "verdict: B is not worse than A")
        return out


def _tag(f: Any) -> str:
    if f is None:
        return "-"
    if f.level == "info":
        return "info"
    if f.level == "warning":
        return "warn"
    return "pass" if f.passed else "FAIL"


def _key(p: ProbeStats) -> tuple[str, str, int | None]:
    return (p.kind, p.name, p.step)


def _break(r: FlowReport) -> tuple[str | None, int | None]:
    """The break in words and its position (probe order: smaller = earlier in the forward)."""
    loc = r.locator.primary if r.locator and r.locator.ran and r.locator.primary else None
    bp = break_point(r)
    if bp is None and loc is None:
        return None, None
    pos = bp[1].order if bp else None
    if loc is not None:
        return describe_break(loc), pos
    a, b, kind = bp
    return f"{kind.replace('_', ' ')} between {a.name} and {b.name}", pos


def compare_modes(name: str, a: FlowReport, b: FlowReport) -> ModeDiff:
    md = ModeDiff(mode=name, passed_a=a.passed, passed_b=b.passed)
    names = [f.name for f in a.checks] + [f.name for f in b.checks if f.name not in
                                          {x.name for x in a.checks}]
    for n in names:
        fa = next((f for f in a.checks if f.name == n), None)
        fb = next((f for f in b.checks if f.name == n), None)
        ta, tb = _tag(fa), _tag(fb)
        if ta == tb:
            continue
        md.checks.append(CheckChange(n, ta, tb, fb.message if fb else "not run in B",
                                     worse=tb == "FAIL" and ta != "FAIL"))
    pa = {_key(p): p for p in a.probes}
    pb = {_key(p): p for p in b.probes}
    for k, p in pa.items():
        q = pb.get(k)
        if q is None:
            md.only_a.append(p.name)
            continue
        md.probes.append(ProbeChange(p.name, p.kind, p.step,
                                     p.norm if p.reached else None,
                                     q.norm if q.reached else None, p.status, q.status))
    md.only_b = [q.name for k, q in pb.items() if k not in pa]
    z = next((p for p in md.probes if p.kind == "z0"), None)
    md.z0_ratio = z.ratio if z else None
    md.break_a, pos_a = _break(a)
    md.break_b, pos_b = _break(b)
    if md.break_a is None and md.break_b is not None:
        md.break_change = "appeared"
    elif md.break_a is not None and md.break_b is None:
        md.break_change = "gone"
    elif md.break_a is not None and md.break_a != md.break_b:
        if pos_a is not None and pos_b is not None and pos_a != pos_b:
            # a break later in the forward pass leaves more of the sampler connected
            md.break_change = "moved earlier" if pos_b < pos_a else "moved later"
        else:
            md.break_change = "changed"
    return md


def compare(a: RunRecord, b: RunRecord, title_a: str = "A", title_b: str = "B") -> RunDiff:
    """Compare run ``b`` with run ``a`` mode by mode (modes matched by name)."""
    d = RunDiff(title_a=title_a, title_b=title_b)
    for name, ra in a.modes.items():
        rb = b.modes.get(name)
        if rb is None:
            d.only_a.append(name)
        else:
            d.modes.append(compare_modes(name, ra, rb))
    d.only_b = [n for n in b.modes if n not in a.modes]
    d.config_differs = config_differences(a.config or {}, b.config or {})
    return d


#: settings under which the same probe name means another place in the sampler
CONFIG_KEYS = ("sampler_spec", "denoiser", "dtype", "batch", "z0_shape", "sigmas")
SAMPLER_KEYS = ("solver", "steps", "sigma_min", "sigma_max", "rho", "truncate")


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'steps 4 vs 35', ... for each setting the two runs do not share."""
    out = []
    sa, sb = a.get("sampler") or {}, b.get("sampler") or {}
    for k in SAMPLER_KEYS:
        if k in sa and k in sb and sa[k] != sb[k]:
            out.append(f"{k} {sa[k]} vs {sb[k]}")
    for k in CONFIG_KEYS:
        if k in a and k in b and a[k] != b[k] and not (k == "sigmas" and out):
            va, vb = a[k], b[k]
            if k == "sigmas":
                va, vb = f"{len(va)} levels", f"{len(vb)} levels"
            out.append(f"{k} {va} vs {vb}")
    return out

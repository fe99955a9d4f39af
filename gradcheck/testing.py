"""Assertions for your own test suite: keep a sampler's gradient path healthy.

    from gradcheck.testing import assert_gradient_flows

    def test_my_sampler_is_differentiable():
        assert_gradient_flows(my_sampler, torch.randn(2, 4, 32, 32))

Each helper runs :func:`gradcheck.diagnose` with only the passes it needs and raises
``AssertionError`` whose message reads like pytest's ``approx``: what failed, where (step, op,
``file:line``, cause, from the break locator), the per-step picture in a few lines, one hint. The
report is attached to the error as ``.report`` and returned when the assertion holds. Helpers
hide their own frames from pytest's traceback (``__tracebackhide__``), so the failing line shown
is the user's.
"""
from __future__ import annotations

from typing import Any, Callable

from .records import PATH_KINDS, FlowReport, ProbeStats
from .text import STATUS_WORDS, fmt, located, step_picture, steps_of

__all__ = [
    "GradientFlowError",
    "assert_gradient_flows",
    "assert_step_noise_connected",
    "assert_gradient_matches_numeric",
    "assert_no_disconnected_randomness",
    "assert_optimizer_changes_z0",
    "step_lines",
]


class GradientFlowError(AssertionError):
    """An ``AssertionError`` carrying the diagnosis (``.report``)."""

    def __init__(self, message: str, report: FlowReport) -> None:
        super().__init__(message)
        self.report = report


#: defaults for every diagnosis the assertions make (the pytest plugin's
#: ``--gradcheck-allow-grad`` sets ``allow_grad``); a call's own keywords win
DEFAULTS: dict[str, Any] = {}


def _diagnose(sample_fn: Callable[..., Any], z0: Any, **kw: Any) -> FlowReport:
    from .diagnosis import diagnose

    return diagnose(sample_fn, z0, **{**DEFAULTS, **kw})


def step_lines(r: FlowReport, limit: int = 8) -> list[str]:
    """The gradient per step, output first, one line a step (the middle elided past ``limit``):
    ``'step 4  |g| 3.1e-02  ok'``."""
    by_step = steps_of(r, PATH_KINDS)
    rows: list[tuple[str, bool]] = []  # (line, healthy)
    out = next((p for p in r.probes if p.kind == "output"), None)
    if out is not None:
        rows.append((f"output   |g| {fmt(out.norm) if out.reached else '--':>8}  "
                     f"{_status(out)}", out.status == "ok"))
    for s in sorted(by_step, reverse=True):
        ps = by_step[s]
        norms = [p.norm for p in ps if p.reached and p.norm is not None]
        worst = min(ps, key=lambda p: _rank(p.status))
        rows.append((f"step {s:<3} |g| {fmt(max(norms)) if norms else '--':>8}  "
                     f"{_status(worst)}" + (f"  ({worst.name})" if worst.status != "ok" else ""),
                     worst.status == "ok"))
    z = next((p for p in r.probes if p.kind == "z0"), None)
    if z is not None:
        rows.append((f"z0       |g| {fmt(z.norm) if z.reached else '--':>8}  {_status(z)}",
                     z.status == "ok"))
    if len(rows) <= limit:
        return [line for line, _ in rows]
    # keep both ends and the unhealthy rows (up to the limit), elide healthy runs between
    keep = {0, 1, len(rows) - 2, len(rows) - 1}
    for i, (_, ok) in enumerate(rows):
        if not ok and len(keep) < limit:
            keep.add(i)
    lines, gap = [], 0
    for i, (line, _) in enumerate(rows):
        if i in keep:
            if gap:
                lines.append(f"... {gap} more ...")
            gap = 0
            lines.append(line)
        else:
            gap += 1
    return lines


_RANK = {"not_in_graph": 0, "unreached": 1, "nonfinite": 2, "zero": 3, "ok": 4}


def _rank(status: str) -> int:
    return _RANK.get(status, 4)


def _status(p: ProbeStats) -> str:
    return STATUS_WORDS.get(p.status, p.status)


def _message(head: str, r: FlowReport, hint: str | None, extra: list[str] = ()) -> str:
    lines = [head]
    where = located(r)
    if where:
        lines.append(f"  where:  {where}")
    lines += [f"  {e}" for e in extra]
    lines.append(f"  steps:  {step_picture(r)}")
    lines += [f"    {row}" for row in step_lines(r)]
    if r.sampler:
        lines.append(f"  sampler: {r.sampler}")
    lines += [f"  note:   {n}" for n in r.notes]
    if hint:
        lines.append(f"  hint:   {hint}")
    return "\n".join(lines)


def _find(r: FlowReport, to: str) -> list[ProbeStats]:
    if to in ("z0", "every_step", "output"):
        kinds = {"z0": ("z0",), "output": ("output",),
                 "every_step": ("z0",) + PATH_KINDS}[to]
        return [p for p in r.probes if p.kind in kinds]
    named = [p for p in r.probes if p.name == to]
    if named:
        return named
    kind = [p for p in r.probes if p.kind == to]
    if kind:
        return kind
    raise ValueError(f"to={to!r} names no probe or probe kind; probes: "
                     f"{', '.join(p.name for p in r.probes[:12])}")


def assert_gradient_flows(sample_fn: Callable[..., Any], z0: Any, *, to: str = "z0",
                          loss_fn: Callable[..., Any] | None = None,
                          min_rel_grad: float = 1e-8, **diagnose_kw: Any) -> FlowReport:
    """Assert that the gradient of the loss reaches ``to``, finite and not vanishing.

    Args:
        sample_fn, z0: as for :func:`gradcheck.diagnose`.
        to: ``"z0"`` (default), ``"every_step"`` (z0 and every probed state, denoiser input and
            output), ``"output"``, a probe name (``"x[3]"``) or a probe kind (``"step_noise"``).
        loss_fn: the loss (default: diagnose's baseline loss).
        min_rel_grad: the gradient norm at each target must be at least this fraction of the
            output's.
        **diagnose_kw: passed on (``seed``, ``target``, ``mode``, ...).
    """
    __tracebackhide__ = True
    kw = {"numeric": False, "optim_steps": 0, "scan_randomness": False, **diagnose_kw}
    r = _diagnose(sample_fn, z0, loss_fn=loss_fn, **kw)
    targets = _find(r, to)
    out = next((p for p in r.probes if p.kind == "output"), None)
    ref = out.norm if out is not None and out.reached and out.norm else None
    if not r.output_requires_grad:
        raise GradientFlowError(_message(
            f"gradient cannot flow: the sampler output does not require grad (to={to!r})", r,
            "look for @torch.no_grad() / torch.inference_mode() around the sampler, or a "
            ".detach() / NumPy round trip at the end"), r)
    bad = [p for p in targets if p.status != "ok"]
    if bad:
        p = bad[0]
        what = {"unreached": "does not reach", "not_in_graph": "does not reach",
                "zero": "is exactly zero at", "nonfinite": "is non-finite at"}[p.status]
        more = f" (and {len(bad) - 1} more probe(s))" if len(bad) > 1 else ""
        hint = ("look for .detach(), torch.no_grad(), .item() or a uint8 round trip at the "
                "located op" if p.status in ("unreached", "not_in_graph") else
                "a clamp/mask that saturates, or an overflow: check the dtype and the step sizes"
                if p.status != "zero" else
                "a saturated clamp/round/argmax, or a multiplication by zero, on the path")
        raise GradientFlowError(_message(f"gradient {what} {p.name}{more}", r, hint), r)
    if ref is not None:
        weak = [p for p in targets if p.norm is not None and p.norm < min_rel_grad * ref]
        if weak:
            p = weak[0]
            raise GradientFlowError(_message(
                f"gradient at {p.name} is vanishing: |g| {fmt(p.norm)} = "
                f"{fmt(p.norm / ref)} x |g| at the output < min_rel_grad {min_rel_grad:g}", r,
                "too many steps in low precision, or a near-saturated nonlinearity; try float64 "
                "or fewer steps to confirm"), r)
    return r


def assert_step_noise_connected(sample_fn: Callable[..., Any], z0: Any,
                                **diagnose_kw: Any) -> FlowReport:
    """Assert that every probed step noise is derived from z0 and carries gradient back to it,
    and that no other fresh random draw enters the state (the ``learnable_step_noise``
    promise). A sampler with no probed step noise fails: there is nothing to optimise."""
    __tracebackhide__ = True
    kw = {"numeric": False, "optim_steps": 0, "locate": "always",
          "mode": "learnable_step_noise", **diagnose_kw}
    r = _diagnose(sample_fn, z0, **kw)
    f = r.check("step_noise")
    rand = r.locator.randomness if r.locator else []
    if not f.passed:
        raise GradientFlowError(_message(f"step noise is not connected to z0: {f.message}", r,
                                         None), r)
    if rand:
        raise GradientFlowError(_message(
            f"{len(rand)} fresh random draw(s) enter the state besides the probed step noise",
            r, "derive every noise the sampler adds from z0",
            [f"draw:   {e.describe()}" for e in rand[:4]]), r)
    return r


def assert_no_disconnected_randomness(sample_fn: Callable[..., Any], z0: Any,
                                      **diagnose_kw: Any) -> FlowReport:
    """Assert that no fresh random draw (``randn_like`` and friends, not derived from z0) is
    mixed into a value that depends on z0: such noise does not block dL/dz0 but makes the
    objective stochastic and cannot be optimised."""
    __tracebackhide__ = True
    kw = {"numeric": False, "optim_steps": 0, "locate": "always", **diagnose_kw}
    r = _diagnose(sample_fn, z0, **kw)
    rand = r.locator.randomness if r.locator else []
    if rand:
        steps = sorted({e.step for e in rand if e.step is not None})
        raise GradientFlowError(_message(
            f"{len(rand)} fresh random draw(s) not derived from z0 enter the state"
            + (f" (steps {steps[0]}..{steps[-1]})" if steps else ""), r,
            "derive the step noise from z0 differentiably (gradcheck.adapters noise='learnable'"
            "), or pass it in as a learnable leaf",
            [f"draw:   {e.describe()}" for e in rand[:4]]), r)
    return r


def assert_gradient_matches_numeric(sample_fn: Callable[..., Any], z0: Any, *,
                                    rtol: float | None = None,
                                    **diagnose_kw: Any) -> FlowReport:
    """Assert that reverse mode agrees with central finite differences of the loss along a
    seeded unit direction (the tolerance is the check's dtype-aware default, or ``rtol`` plus
    the measured round-off)."""
    __tracebackhide__ = True
    kw = {"numeric": True, "optim_steps": 0, **diagnose_kw}
    r = _diagnose(sample_fn, z0, **kw)
    n = r.numeric
    if n is None or n.skipped:
        raise GradientFlowError(_message(
            f"the numeric check could not run: {n.skipped if n else 'numeric=False'}", r, None), r)
    from .numeric import below_round_off

    if below_round_off(n):  # agreement within the round-off is no evidence either way
        raise GradientFlowError(_message(f"the numeric check is inconclusive: {n.note}", r,
                                         None), r)
    tol_rel = n.rtol if rtol is None else rtol
    tol = tol_rel * max(abs(n.fd), abs(n.reverse)) + n.atol
    if not n.abs_error <= tol:
        raise GradientFlowError(_message(
            f"reverse mode {n.reverse:.6e} != finite differences {n.fd:.6e} ± {tol:.2e} "
            f"(relative error {fmt(n.rel_error)}, rtol {tol_rel:g}, eps {n.eps:.1e}, {n.dtype})",
            r, "reverse mode 0 means a cut path; otherwise a wrong custom backward, unseeded "
            "noise, or a biased shortcut (straight-through, truncation)"), r)
    return r


def assert_optimizer_changes_z0(sample_fn: Callable[..., Any], z0: Any, *, lr: float = 1e-2,
                                steps: int = 1, **diagnose_kw: Any) -> FlowReport:
    """Assert that ``steps`` Adam steps on z0 (from the diagnosed gradient) change z0 and, for
    ``steps`` >= 2, move the loss the intended way."""
    __tracebackhide__ = True
    kw = {"numeric": False, "optim_steps": max(1, steps), "lr": lr, **diagnose_kw}
    r = _diagnose(sample_fn, z0, **kw)
    for name in ("optimizer_changes_z0", "loss_moves"):
        f = r.check(name)
        if f.level == "error" and not f.passed:
            raise GradientFlowError(_message(f"{name}: {f.message}", r, None), r)
    return r

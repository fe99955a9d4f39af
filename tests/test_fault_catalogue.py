"""The fault catalogue as tests: every injected break is detected, located at the right step and
given the right cause; healthy variants raise no alarm (benchmarks/fault_catalogue.py prints it)."""
from __future__ import annotations

import warnings

import pytest
import torch

import gradcheck
from gradcheck.sampling import NOISE_MODES, SOLVERS, GaussianDenoiser, ResSampler, SamplerConfig

from .faults import FAULTS, cases, expected_step, run_case

DEN = GaussianDenoiser(0.1, 0.5)


def _z(seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)


Z0, TARGET = _z(11), _z(12)
CASES = list(cases())


def test_the_catalogue_is_big_enough():
    kinds = {f.name for f in FAULTS}
    causes = {f.cause for f in FAULTS}
    assert len(kinds) >= 14 and len(CASES) >= 500
    assert {"no_grad", "inference_mode", "detach", "data_read", "data_write",
            "requires_grad_false", "non_differentiable", "int_cast", "python_roundtrip",
            "numpy_roundtrip", "decorated_no_grad", "reentrant_checkpoint", "inplace_no_grad",
            "disconnected_randomness", "zero_grad_op", "grad_mode_off", "custom_backward",
            "gradient_hook", "wrong_vjp"} <= causes
    positions = {pos for _, pos, _, _ in CASES}
    assert positions == {"x_T", "first", "middle", "last", "final", "noise"}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_every_injected_break_is_detected_located_and_explained(fault):
    misses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f, pos, solver, mode in CASES:
            if f is not fault:
                continue
            rep, detected, right_step, right_cause = run_case(DEN, f, pos, solver, mode, Z0, TARGET)
            if not (detected and right_step and right_cause):
                p = rep.locator.primary if rep.locator else None
                misses.append(f"{pos}/{solver}/{mode}: detected={detected} step={right_step} "
                              f"cause={right_cause}: {p.describe() if p else None}")
    assert not misses, "\n".join(misses)


def test_located_message_reads_like_the_spec():
    f = next(f for f in FAULTS if f.name == "detach")
    rep, *_ = run_case(DEN, f, "middle", "1euler", "default", Z0, TARGET)
    msg = rep.check("grad_reaches_z0").message
    assert msg.startswith("gradient does not reach z0 (z0.grad would be None): breaks at step 2 "
                          "(state update -> state update), op detach at tests/faults.py:")
    assert "(cause: .detach())" in msg
    assert "steps 0..2 receive none" in msg and "steps 3..4 are not in the autograd graph" in msg
    p = rep.locator.primary
    assert p.before == "x[3]@callback" and p.after == "x[3]" and p.function == "f_detach"


def test_decorated_entry_point_is_named():
    f = next(f for f in FAULTS if f.name == "decorated_no_grad")
    rep, *_ = run_case(DEN, f, "first", "2ab", "default", Z0, TARGET)
    assert "tests.faults.decorated_helper" in rep.locator.primary.detail
    assert "entry point decorated with @torch.no_grad()" in rep.check("grad_reaches_every_step").message


def test_fresh_noise_is_an_error_in_learnable_mode_and_located():
    f = next(f for f in FAULTS if f.name == "fresh_randn_noise")
    rep, *_ = run_case(DEN, f, "noise", "2ab", "learnable_step_noise", Z0, TARGET)
    msg = rep.check("step_noise").message
    assert "fresh randn_like at tests/faults.py:" in msg and "enters step 2" in msg


def test_saturated_clamp_is_zero_not_none_and_names_the_op():
    f = next(f for f in FAULTS if f.name == "clamp_saturates")
    rep, *_ = run_case(DEN, f, "middle", "1euler", "default", Z0, TARGET)
    assert rep.probe("z0").status == "zero"
    p = rep.locator.primary
    assert p.kind == "zero" and p.op.startswith("clamp") and p.step == 2
    assert "exactly zero" in rep.check("grad_reaches_z0").message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode", NOISE_MODES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_no_false_alarm_on_healthy_variants(solver, mode, dtype):
    for steps in (1, 2, 4, 35):
        rep = gradcheck.diagnose(ResSampler(DEN, SamplerConfig(solver=solver, steps=steps),
                                            mode=mode), _z(3, dtype), locate="always",
                                 optim_steps=1)
        assert rep.passed, (steps, [f.message for f in rep.failed])
        assert rep.locator.primary is None and not rep.locator.events, steps
        if mode == "fresh_noise":  # information, not an alarm: every churned step's draw
            assert len(rep.locator.randomness) == SamplerConfig(solver=solver, steps=steps).num_solver_steps
        else:
            assert not rep.locator.randomness


def test_healthy_runs_pay_nothing_for_the_locator():
    rep = gradcheck.diagnose(ResSampler(DEN, SamplerConfig(steps=4)), Z0)
    assert rep.passed and rep.locator is None and "locate_s" not in rep.timings


class _Thresholded(torch.nn.Module):
    """A denoiser whose x0 prediction is clipped the way samplers do it: dynamic thresholding
    (the 0.9 quantile of |x0| per sample, at least 1) and a final clamp to [-1, 1]."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma):
        x0 = self.inner(x, sigma)
        s = torch.quantile(x0.abs().flatten(1).float(), 0.9, dim=1).clamp(min=1.0).to(x0.dtype)
        return (x0.clamp(-s.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("thresholded", [False, True], ids=["plain", "thresholded"])
def test_healthy_low_precision_and_clipped_variants_raise_no_alarm(dtype, thresholded):
    from gradcheck.sampling import build_denoiser

    den = build_denoiser("conv", dtype=dtype)
    if thresholded:
        den = _Thresholded(den)
    alarms = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for solver in ("2ab", "1euler"):
            for mode in ("default", "learnable_step_noise"):
                for seed in range(3):
                    rep = gradcheck.diagnose(
                        ResSampler(den, SamplerConfig(solver=solver, steps=4), mode=mode),
                        _z(seed, dtype), locate="always", optim_steps=1)
                    if not rep.passed or rep.locator.primary is not None:
                        p = rep.locator.primary
                        alarms.append(f"{solver}/{mode}/{seed}: "
                                      f"{[f.name for f in rep.failed]} {p.describe() if p else ''}")
    assert not alarms, "\n".join(alarms)

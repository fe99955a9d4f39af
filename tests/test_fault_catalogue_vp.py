"""The fault catalogue's second sampler family: a VP/DDIM loop around an epsilon-MLP, written the
way such loops are written outside this repo. Every injected break is detected, located at the
right step and explained with the right cause; the healthy loop raises no alarm (locator forced
on, float32 and float64, many seeds)."""
from __future__ import annotations

import warnings

import pytest
import torch

import gradcheck

from .faults_vp import NOT_A_BREAK, VP_FAULTS, EpsMLP, VPSampler, run_vp_case, vp_cases

MODEL = EpsMLP().double()
G = torch.Generator().manual_seed(3)
Z0 = torch.randn(2, 1, 8, 8, generator=G, dtype=torch.float64)
TARGET = torch.randn(2, 1, 8, 8, generator=G, dtype=torch.float64)


def test_the_second_family_is_big_enough():
    cases = list(vp_cases())
    assert len(cases) >= 80 and {f.cause for f, _ in cases} >= {
        "no_grad", "inference_mode", "detach", "data_read", "data_write", "non_differentiable",
        "int_cast", "python_roundtrip", "numpy_roundtrip", "decorated_no_grad",
        "reentrant_checkpoint", "inplace_no_grad", "zero_grad_op"}
    assert len(NOT_A_BREAK) == 5


@pytest.mark.parametrize("fault", VP_FAULTS, ids=lambda f: f.name)
def test_every_break_in_the_vp_loop_is_detected_located_and_explained(fault):
    bad = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f, pos in vp_cases():
            if f is not fault:
                continue
            rep, detected, right_step, right_cause = run_vp_case(MODEL, f, pos, Z0, TARGET)
            if not (detected and right_step and right_cause):
                p = rep.locator.primary if rep.locator else None
                bad.append(f"{pos}: detected={detected} step={right_step} cause={right_cause}: "
                           f"{p.describe() if p else None}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_healthy_vp_loop_raises_no_alarm(dtype):
    model = EpsMLP().to(dtype)
    for seed in range(6):
        z0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64).to(dtype)
        rep = gradcheck.diagnose(VPSampler(model, 6), z0, locate="always", optim_steps=1)
        assert rep.passed and rep.locator.primary is None, (seed, [f.message for f in rep.failed])

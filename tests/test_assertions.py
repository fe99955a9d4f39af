"""gradcheck.testing on the built-in sampler (the originating note's three checks, both modes,
as pytest tests) and on broken samplers (the messages)."""
from __future__ import annotations

import pytest
import torch

from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser
from gradcheck.testing import (
    GradientFlowError,
    assert_gradient_flows,
    assert_gradient_matches_numeric,
    assert_no_disconnected_randomness,
    assert_optimizer_changes_z0,
    assert_step_noise_connected,
)

MODES = ("default", "learnable_step_noise")


@pytest.fixture(scope="module")
def digits():
    return build_denoiser("digits", dtype=torch.float64)


@pytest.fixture
def z0():
    return torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# -- the originating note's three checks, on the built-in trained model ----------------------------

@pytest.mark.parametrize("mode", MODES)
def test_path_integrity(digits, z0, mode):
    """Check 1: every step's state, denoiser input and output carries gradient."""
    assert_gradient_flows(ResSampler(digits, SamplerConfig(steps=4), mode=mode), z0,
                          to="every_step")


@pytest.mark.parametrize("mode", MODES)
def test_z0_gets_a_gradient(digits, z0, mode):
    """Check 2: z0 gets a finite, non-vanishing gradient that agrees with finite differences."""
    smp = ResSampler(digits, SamplerConfig(steps=4), mode=mode)
    rep = assert_gradient_flows(smp, z0)
    assert rep.probe("z0").norm > 0
    assert_gradient_matches_numeric(smp, z0)


@pytest.mark.parametrize("mode", MODES)
def test_an_optimizer_step_changes_z0(digits, z0, mode):
    """Check 3: Adam steps on z0 change it and move the loss the intended way."""
    assert_optimizer_changes_z0(ResSampler(digits, SamplerConfig(steps=4), mode=mode), z0,
                                steps=3)


def test_learnable_step_noise_is_connected_and_fresh_noise_is_not(digits, z0):
    assert_step_noise_connected(
        ResSampler(digits, SamplerConfig(steps=4), mode="learnable_step_noise"), z0)
    assert_no_disconnected_randomness(
        ResSampler(digits, SamplerConfig(steps=4), mode="learnable_step_noise"), z0)
    fresh = ResSampler(digits, SamplerConfig(steps=4), mode="fresh_noise")
    with pytest.raises(GradientFlowError) as err:
        assert_step_noise_connected(fresh, z0)
    msg = str(err.value)
    assert msg.startswith("step noise is not connected to z0")
    assert "eps[0] is not connected to z0" in msg and "hint:" in msg


# -- failures read like approx: what, where, per step, one hint -----------------------------------

def _detaching(den, at=2):
    base = ResSampler(den, SamplerConfig(steps=4))

    def sample(z):
        calls = {"n": 0}

        def d(x, s):
            calls["n"] += 1
            out = den(x, s)
            return out.detach() if calls["n"] == at + 1 else out

        return ResSampler(d, base.config)(z)

    return sample


def test_gradient_flows_failure_message(digits, z0):

    with pytest.raises(GradientFlowError) as err:
        assert_gradient_flows(_detaching(digits), z0, to="every_step")
    msg = str(err.value)
    lines = msg.splitlines()
    assert lines[0].startswith("gradient does not reach")
    assert any(line.strip().startswith("where:") and "cause: .detach()" in line
               and "test_assertions.py:" in line for line in lines)
    assert any(line.strip().startswith("steps:") for line in lines)
    assert any("step 2" in line and "|g|" in line for line in lines)
    assert sum(line.strip().startswith("hint:") for line in lines) == 1
    assert err.value.report.failed
    # z0 itself still gets gradient through the sampler's skip path (x_next = a x + b D(x)):
    # to="z0" holds, which is why to="every_step" exists; so does a probe after the cut
    rep = assert_gradient_flows(_detaching(digits), z0)
    assert rep.probe("z0").norm > 0
    assert_gradient_flows(_detaching(digits), z0, to="x[4]")
    with pytest.raises(ValueError, match="names no probe"):
        assert_gradient_flows(_detaching(digits), z0, to="nonsense")


def test_vanishing_threshold(digits, z0):
    smp = ResSampler(digits, SamplerConfig(steps=4))
    with pytest.raises(GradientFlowError, match="vanishing"):
        assert_gradient_flows(smp, z0, min_rel_grad=1e6)


def test_numeric_mismatch_message(digits, z0):
    class Biased(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            return g * 0.5  # wrong on purpose

    smp = ResSampler(digits, SamplerConfig(steps=4))
    with pytest.raises(GradientFlowError) as err:
        assert_gradient_matches_numeric(lambda z: Biased.apply(smp(z)), z0)
    assert err.value.args[0].startswith("reverse mode ")
    assert "finite differences" in err.value.args[0]


def test_helpers_hide_their_frames():
    import gradcheck.testing as T

    for name in T.__all__:
        fn = getattr(T, name)
        if name.startswith("assert_"):
            assert "__tracebackhide__" in fn.__code__.co_varnames, name

"""Keep your sampler differentiable in CI: run `pytest examples/pytest_suite.py`.
(gradcheck's pytest plugin is installed with it; --gradcheck-report DIR writes HTML reports.)"""
import pytest
import torch

from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser
from gradcheck.testing import assert_gradient_flows, assert_gradient_matches_numeric, \
    assert_no_disconnected_randomness, assert_step_noise_connected


@pytest.fixture(params=["default", "learnable_step_noise"])
def sampler(request):
    return ResSampler(build_denoiser("digits", dtype=torch.float64), SamplerConfig(steps=4),
                      mode=request.param)


def z0():
    return torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_gradient_reaches_every_step(sampler):
    assert_gradient_flows(sampler, z0(), to="every_step")


def test_reverse_mode_matches_finite_differences(sampler):
    assert_gradient_matches_numeric(sampler, z0())


def test_no_fresh_noise(sampler):
    assert_no_disconnected_randomness(sampler, z0())


def test_step_noise_learnable(gradcheck_trace):
    smp = ResSampler(build_denoiser("digits", dtype=torch.float64), SamplerConfig(steps=4),
                     mode="learnable_step_noise")
    gradcheck_trace.assert_step_noise_connected(smp, z0())

"""No vacuous pass: 'every step receives gradient' over zero steps is not evidence. A sampler
that never calls an instrumented denoiser (nor probes a step) fails, saying so, whatever shape it
returns; the same sampler with its denoiser instrumented is judged on its steps."""
from __future__ import annotations

import pytest
import torch

import gradcheck


@pytest.mark.parametrize("sample", [
    lambda z: (2 * z).reshape(-1)[:10],  # another shape, no denoiser call
    lambda z: torch.tanh(z) * 3.0,  # the same shape, no denoiser call
], ids=["slice", "same_shape"])
def test_a_sampler_without_a_denoiser_call_never_passes(sample):
    z0 = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = z0.clone().requires_grad_(True)
    sample(z).sum().backward()
    assert z.grad is not None  # the truth: the gradient does reach z0, but no step was seen
    rep = gradcheck.diagnose(sample, z0)
    assert not rep.passed
    f = rep.check("grad_reaches_every_step")
    assert not f.passed and "no denoiser call" in f.message and "instrument" in f.message


def test_the_same_sampler_with_its_denoiser_instrumented_is_judged_on_its_steps():
    den = gradcheck.instrument(lambda x, s: torch.tanh(x) * s)
    z0 = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rep = gradcheck.diagnose(lambda z: den(z, 3.0), z0)
    assert rep.passed, [(f.name, f.message) for f in rep.failed]
    assert rep.check("grad_reaches_every_step").value == 2  # its call's input and output

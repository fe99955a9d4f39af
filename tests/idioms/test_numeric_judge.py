"""The numeric judge below float64: a sampler with no piecewise op never gets a 'kink' verdict
(the branch recorder must have seen a branch flip), a wrong gradient of a float32 plain-function
sampler fails, and its healthy twin passes. The hook that makes the gradient wrong is checked
against plain autograd first."""
from __future__ import annotations

import pytest
import torch

import gradcheck

from ._loop import euler_loop, net_denoiser, small_net


def _wrong_by(scale):
    def hook(i, d):
        d.register_hook(lambda g: g * scale)  # a wrong gradient, at every call
        return d
    return hook


def _sampler(scale):
    return euler_loop(net_denoiser(small_net(32, torch.float32)),
                      on_call=_wrong_by(scale) if scale != 1.0 else None)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_no_kink_without_a_branch_and_a_wrong_gradient_fails(scale, seed):
    z0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
    # the truth: the hook changes dL/dz0 (plain autograd, with and without it)
    z = z0.clone().requires_grad_(True)
    g_hook = torch.autograd.grad(_sampler(scale)(z).square().mean(), z)[0]
    g_true = torch.autograd.grad(_sampler(1.0)(z).square().mean(), z)[0]
    wrong = not torch.allclose(g_hook, g_true, rtol=1e-3)
    assert wrong is (scale != 1.0)
    rep = gradcheck.diagnose(_sampler(scale), z0)
    n = rep.numeric
    assert n is not None and n.verdict != "kink", n.note
    assert all(o.get("verdict") != "kink" for o in n.others)
    assert rep.passed is not wrong, [(f.name, f.message) for f in rep.failed]

"""Saturation: a clamp that pushes the state into saturation makes every later op saturated
too. The root (the first op that made the path dead, in forward order) is named, at its step
and line; the later saturated ops are its consequence. Truth by plain autograd first."""
from __future__ import annotations

import inspect

import torch

import gradcheck

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]


def _root(x):
    return torch.clamp(x, min=60.0)  # the root: every value saturates here


def _sampler():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 8)).double()
    den = gradcheck.instrument(lambda x, s: net(x) + x / (1 + s))

    def sample(z0):
        x = z0 * SIGMAS[0]
        for i in range(len(SIGMAS) - 1):
            d = den(x, SIGMAS[i])
            x = x + (SIGMAS[i + 1] - SIGMAS[i]) * (x - d) / SIGMAS[i]
            if i == 1:
                x = _root(x)
            x = torch.tanh(x) * 60.0  # saturated from step 1 on
        return x
    return sample


def test_the_first_saturating_op_is_the_root():
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_sampler()(z).square().mean(), z)
    assert not g.any()  # the truth: nothing reaches z0
    rep = gradcheck.diagnose(_sampler(), z0)
    ev = rep.locator.primary
    assert not rep.passed and ev.kind == "zero" and ev.step == 1, (ev.op, ev.step, ev.location)
    src, first = inspect.getsourcelines(_root)
    assert ev.location.endswith(f"test_saturation.py:{first + 1}") and "clamp" in ev.op

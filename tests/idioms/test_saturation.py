"""Saturation: a clamp that pushes the state into saturation makes every later op saturated
too. The root (the first op that made the path dead, in forward order) is named, at its step
and line; the later saturated ops are its consequence. Truth by plain autograd first."""
from __future__ import annotations

import inspect

import torch

import gradcheck

from ._loop import euler_loop, net_denoiser, small_net


def _root(x):
    return torch.clamp(x, min=60.0)  # the root: every value saturates here


def _sampler():
    # the root at step 1, then a tanh saturated from there on
    return euler_loop(net_denoiser(small_net()),
                      after=lambda i, x: torch.tanh(_root(x) if i == 1 else x) * 60.0)


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

"""Exploding and vanishing gradients are located like breaks: the step, the op across which |g|
grows (or falls) the most, and its line, from the op detail of the recorded pass. Truth by
plain autograd first (the gradient reaching the state before the op is that factor larger)."""
from __future__ import annotations

import inspect

import pytest
import torch

import gradcheck

from ._loop import euler_loop, net_denoiser, small_net


def _scale(kind, x):
    return x * (1e6 if kind == "exploding" else 1e-12)  # the op to locate


def _sampler(kind):
    return euler_loop(
        net_denoiser(small_net()),
        before=lambda i, x: gradcheck.probe(_scale(kind, x), f"scaled[{i}]", step=i,
                                            kind="state") if i == 2 else x,
        after=lambda i, x: gradcheck.probe(x, f"x[{i + 1}]", step=i + 1, kind="state"))


@pytest.mark.parametrize("kind", ["exploding", "vanishing"])
def test_a_scale_problem_is_located(kind):
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rep = gradcheck.diagnose(_sampler(kind), z0, op_detail="always")
    f = rep.check("grad_scale")
    assert not f.passed and kind in f.message, f.message
    src, first = inspect.getsourcelines(_scale)
    line = next(first + i for i, s in enumerate(src) if "the op to locate" in s)
    assert f"test_scale.py:{line}" in f.message and f.step == 2, (f.step, f.message)

"""Exploding and vanishing gradients are located like breaks: the step, the op across which |g|
grows (or falls) the most, and its line, from the op detail of the recorded pass. Truth by
plain autograd first (the gradient reaching the state before the op is that factor larger)."""
from __future__ import annotations

import inspect

import pytest
import torch

import gradcheck

SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]


def _scale(kind, x):
    return x * (1e6 if kind == "exploding" else 1e-12)  # the op to locate


def _sampler(kind):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 8)).double()
    den = gradcheck.instrument(lambda x, s: net(x) + x / (1 + s))

    def sample(z0):
        x = z0 * SIGMAS[0]
        for i in range(len(SIGMAS) - 1):
            if i == 2:
                x = gradcheck.probe(_scale(kind, x), f"scaled[{i}]", step=i, kind="state")
            d = den(x, SIGMAS[i])
            x = gradcheck.probe(x + (SIGMAS[i + 1] - SIGMAS[i]) * (x - d) / SIGMAS[i],
                                f"x[{i + 1}]", step=i + 1, kind="state")
        return x
    return sample


@pytest.mark.parametrize("kind", ["exploding", "vanishing"])
def test_a_scale_problem_is_located(kind):
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rep = gradcheck.diagnose(_sampler(kind), z0, op_detail="always")
    f = rep.check("grad_scale")
    assert not f.passed and kind in f.message, f.message
    src, first = inspect.getsourcelines(_scale)
    line = next(first + i for i, s in enumerate(src) if "the op to locate" in s)
    assert f"test_scale.py:{line}" in f.message and f.step == 2, (f.step, f.message)

"""Copies that leave autograd, each named with its cause and fix (never "unclassified op"), at
the step and line where they happen: ``x.new_tensor(x)``, ``torch.tensor(x)``, ``torch.as_tensor``
of a NumPy view, ``copy_`` under no_grad, ``clone().detach()``; and ``x.clone()``, which keeps the
gradient, passes. Truth by plain autograd first."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import gradcheck
from gradcheck.words import CAUSES, FIXES

from ._loop import euler_loop, net_denoiser, small_net


def _copy(kind, x):
    if kind == "new_tensor":
        return x.new_tensor(x)
    if kind == "tensor":
        return torch.tensor(x)
    if kind == "as_tensor_numpy":
        return torch.as_tensor(x.detach().numpy())
    if kind == "copy_no_grad":
        y = torch.empty_like(x)
        with torch.no_grad():
            y.copy_(x)
        return y
    if kind == "clone_detach":
        return x.clone().detach()
    return x.clone()


def _sampler(kind):
    return euler_loop(net_denoiser(small_net()),
                      after=lambda i, x: _copy(kind, x) if i == 1 else x)


EXPECTED = {"new_tensor": "copy_constructor", "tensor": "copy_constructor",
            "as_tensor_numpy": "numpy_roundtrip", "copy_no_grad": "no_grad",
            "clone_detach": "detach", "clone": None}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_copies(kind):
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.tensor(a tensor) warns
        out = _sampler(kind)(z)
        truth = out.requires_grad and torch.autograd.grad(
            out.sum(), z, allow_unused=True)[0] is not None
        assert truth is (EXPECTED[kind] is None)
        rep = gradcheck.diagnose(_sampler(kind), z0)
    if EXPECTED[kind] is None:
        assert rep.passed, [(f.name, f.message) for f in rep.failed]
        return
    ev = rep.locator.primary
    assert not rep.passed and ev.cause == EXPECTED[kind] and ev.step == 1
    assert ev.cause in CAUSES and ev.cause in FIXES
    src, first = inspect.getsourcelines(_copy)
    assert ev.location.rsplit(":", 1)[0].endswith("test_copies.py")
    assert first <= int(ev.location.rsplit(":", 1)[1]) < first + len(src)

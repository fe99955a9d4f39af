"""torch.distributions in a sampler: ``.sample()`` (drawn under no_grad) is named as the cut with
its fix, ``rsample()`` keeps the gradient and its draws are reported as fresh randomness, and a
constant that ``broadcast_tensors`` returns beside a z0-dependent value stays a constant (it
neither hides a fresh draw nor makes a spurious event). Truth first by plain autograd."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import gradcheck
from gradcheck.words import FIXES

from ._loop import euler_loop, net_denoiser, small_net


def _draw(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "sample":
        return torch.distributions.Normal(x, 0.1).sample()  # the cut
    if kind == "rsample":
        return torch.distributions.Normal(x, 0.1).rsample()
    if kind == "mean":
        return torch.distributions.Normal(x, 0.1).mean
    x, c = torch.broadcast_tensors(x, torch.tensor(0.05, dtype=x.dtype))  # "broadcast"
    return x + c * torch.randn_like(x)


def _sampler(kind: str):
    return euler_loop(net_denoiser(small_net()), after=lambda i, x: _draw(kind, x))


def _line(kind: str) -> int:
    src, first = inspect.getsourcelines(_draw)
    return first + next(i for i, s in enumerate(src) if f'kind == "{kind}"' in s) + 1


@pytest.mark.parametrize("kind", ["sample", "rsample", "mean", "broadcast"])
def test_distributions(kind):
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z0.clone().requires_grad_(True)
    out = _sampler(kind)(z)
    connected = out.requires_grad and torch.autograd.grad(
        out.square().mean(), z, allow_unused=True)[0] is not None
    assert connected is (kind != "sample")  # the truth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = gradcheck.diagnose(_sampler(kind), z0)
    fresh = rep.check("fresh_randomness")
    if kind == "sample":
        assert not rep.passed
        ev = rep.locator.primary
        assert ev.cause == "distribution_sample" and ev.step == 0
        assert ev.location.endswith(f"test_distributions.py:{_line('sample')}")
        assert "rsample" in FIXES["distribution_sample"]
        return
    assert rep.passed, [(f.name, f.message) for f in rep.failed]
    events = rep.locator.events if rep.locator else []
    assert not [e for e in events if e.cause == "unknown"]
    if kind == "mean":
        assert fresh.level == "info"  # no draw at all
    else:  # reparameterised or added noise: fresh randomness, reported with its line
        assert fresh.level == "warning" and "steps 0..3" in fresh.message
        draws = rep.locator.randomness
        assert len(draws) == 4 and all(e.cause == "disconnected_randomness" for e in draws)

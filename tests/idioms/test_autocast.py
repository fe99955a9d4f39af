"""Mixed precision: a healthy sampler whose denoiser runs under ``torch.autocast`` (bfloat16 on
the CPU) never gets a failure or a wrong-backward primary (its numeric evidence at bfloat16 is
judged at bfloat16, and nothing is bisected on float32 evidence); its broken twin (a detach in
the update) is still found, at its step and line. Truth by plain autograd first."""
from __future__ import annotations

import pytest
import torch

import gradcheck

from ._loop import euler_loop, small_net


def _sampler(broken: bool):
    net = small_net(32, torch.float32)

    def d(x, s):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x).float() + x / (1 + s)
    # the break: step 1's input detached
    return euler_loop(d, before=lambda i, x: x.detach() if broken and i == 1 else x)


@pytest.mark.parametrize("checks", ["quick", "default"])
@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("broken", [False, True], ids=["healthy", "broken"])
def test_autocast(broken, seed, checks):
    z0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed))
    z = z0.clone().requires_grad_(True)
    g = torch.autograd.grad(_sampler(broken)(z).square().mean(), z, allow_unused=True)[0]
    assert (g is None or not g.any()) is broken  # the truth
    rep = gradcheck.diagnose(_sampler(broken), z0, checks=checks)
    primary = rep.locator.primary if rep.locator else None
    if not broken:
        assert rep.passed, [(f.name, f.message) for f in rep.failed]
        assert primary is None or primary.cause != "wrong_vjp"
        assert rep.locator is None or rep.locator.bisection is None
    else:
        assert not rep.passed and primary is not None and primary.cause == "detach"

"""Activation checkpointing, both kinds, inside or around the instrumented denoiser, healthy and
broken: the verdict is the truth (the user's own ``loss.backward()`` decides it first), dL/dz0 is
the user's, and no phantom probe appears when the backward recomputes a checkpointed call."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import gradcheck

from ._loop import SIGMAS, small_net


def _sampler(where: str, reentrant: bool, broken: bool):
    net = small_net()

    def d(x, s):
        return net(x) * 0.5 + x / (1 + s)

    if where == "inside":
        den = gradcheck.instrument(lambda x, s: checkpoint(lambda a: d(a, s), x,
                                                           use_reentrant=reentrant))
    else:
        den = gradcheck.instrument(d)

    def sample(z0):
        x = z0 * SIGMAS[0]
        for i in range(len(SIGMAS) - 1):
            inp = x.detach() if broken and i == 2 else x  # the break: step 2's input cut
            if where == "inside":
                out = den(inp, SIGMAS[i])
            else:
                out = checkpoint(lambda a, s=SIGMAS[i]: den(a, s), inp, use_reentrant=reentrant)
            x = inp + (SIGMAS[i + 1] - SIGMAS[i]) * (inp - out) / SIGMAS[i]
        return x
    return sample


def _truth(sample, z0):
    """dL/dz0 by the user's own backward (None: the gradient does not reach z0)."""
    z = z0.clone().requires_grad_(True)
    out = sample(z)
    if not out.requires_grad:
        return None
    out.square().mean().backward()
    return z.grad


@pytest.mark.parametrize("broken", [False, True], ids=["healthy", "broken"])
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
@pytest.mark.parametrize("where", ["inside", "around"])
def test_checkpoint_matrix(where, reentrant, broken):
    sample = _sampler(where, reentrant, broken)
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "None of the inputs have requires_grad"
        truth = _truth(sample, z0)
        rep = gradcheck.diagnose(sample, z0, loss_fn=lambda o: o.square().mean())
    assert rep.raised is None
    reaches = truth is not None and bool(truth.abs().sum() > 0)
    assert reaches is not broken
    assert rep.passed is not broken, [(c.name, c.message) for c in rep.failed]
    calls = [p for p in rep.probes if p.kind == "denoiser_in"]
    assert sorted(p.step for p in calls) == [0, 1, 2, 3]  # no phantom call from a recompute
    if not broken:
        torch.testing.assert_close(rep.handles["z0_grad"], truth, rtol=1e-12, atol=0)
    else:
        assert rep.locator is not None and rep.locator.primary is not None
        assert rep.locator.primary.cause == "detach"
        assert rep.locator.primary.step == 2  # the top of step 2's iteration, not step 1's end
    # the reentrant calls are run as non-reentrant, and the report says so
    assert any("reentrant torch.utils.checkpoint" in n for n in rep.notes) == reentrant

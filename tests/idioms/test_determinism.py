"""Samplers that are not the same function of z0 at every call (a call counter, a cache filled
on the first call, an unseeded generator object, a scheduler whose state is not reset), beside
their stateless twins: the stateful ones fail ``sampler_deterministic``, naming the two losses,
and are never blamed on a wrong backward; the twins pass. Each row's truth is checked first by
calling the sampler twice at the same z0."""
from __future__ import annotations

import pytest
import torch

import gradcheck

from ._loop import SIGMAS, euler_loop, small_net


def _net(dtype):
    return small_net(dtype=dtype)


def counter(net, stateful):
    state = {"n": 0}

    def den(x, s):
        state["n"] += 1
        k = state["n"] if stateful else 1
        return net(x) * (1 + 0.01 * k) + x / (1 + s)
    return euler_loop(den)


def generator_object(net, stateful):
    g = torch.Generator().manual_seed(3)

    def den(x, s):
        gen = g if stateful else torch.Generator().manual_seed(3)
        return net(x) + 0.05 * torch.randn(x.shape, generator=gen, dtype=x.dtype) + x / (1 + s)
    return euler_loop(den)


def scheduler_not_reset(net, stateful):
    class Scheduler:  # steps through its sigmas; the stateless twin resets at each call
        def __init__(self):
            self.i = 0

        def step(self):
            self.i += 1
            return 1.0 + 0.02 * self.i

    sched = Scheduler()
    den = gradcheck.instrument(lambda x, s: net(x) + x / (1 + s))

    def sample(z0):
        if not stateful:
            sched.i = 0
        x = z0 * SIGMAS[0]
        for i in range(len(SIGMAS) - 1):
            d = den(x, SIGMAS[i])
            x = x + (SIGMAS[i + 1] - SIGMAS[i]) * (x - d) / SIGMAS[i] * sched.step()
        return x
    return sample


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("stateful", [True, False], ids=["stateful", "stateless"])
@pytest.mark.parametrize("make", [counter, generator_object, scheduler_not_reset])
def test_a_sampler_that_changes_between_calls_is_named(make, stateful, dtype):
    z0 = torch.randn(3, 8, dtype=dtype, generator=torch.Generator().manual_seed(1))
    probe = make(_net(dtype), stateful)
    with torch.no_grad():
        same = torch.equal(probe(z0), probe(z0))
    assert same is not stateful  # the row's truth, by calling it twice
    rep = gradcheck.diagnose(make(_net(dtype), stateful), z0)
    det = rep.check("sampler_deterministic")
    if stateful:
        assert not rep.passed and not det.passed, rep.summary if hasattr(rep, "summary") else det
        assert "not the same function of z0" in det.message and "call counter" in det.message
        assert rep.check("numeric_directional").passed  # not blamed on the gradient
        primary = rep.locator.primary if rep.locator else None
        assert primary is None or primary.cause != "wrong_vjp"
    else:
        assert rep.passed, [(f.name, f.message) for f in rep.failed]
        assert det.passed

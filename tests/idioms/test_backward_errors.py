"""Errors at backward time and in the passes gradcheck adds. An in-place write to a value saved
for backward, a custom backward that raises, a gradient hook that raises: the report names the
step and the user's forward line (a replay under anomaly detection), never a bare 'step None'.
A sampler that raises only where gradcheck runs it without grad (a hook registered
unconditionally), and an exception inside the locator, are findings, never exceptions."""
from __future__ import annotations

import inspect

import pytest
import torch

import gradcheck

from ._loop import euler_loop, net_denoiser, small_net


class _RaisingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise ValueError("a custom backward that raises")


def _fault(kind, d):
    if kind == "inplace":
        y = torch.sigmoid(d)
        y.mul_(2.0)  # sigmoid saved y for its backward
        return y
    if kind == "function":
        return _RaisingBackward.apply(d)
    if kind == "hook":
        d = d * 1.0
        d.register_hook(lambda g: (_ for _ in ()).throw(RuntimeError("a hook that raises")))
        return d
    return d


def _hook_always(i, d):
    d.register_hook(lambda g: g)  # unconditionally: needs d to require grad
    return d


def _sampler(kind, at_step=2, every=False):
    return euler_loop(net_denoiser(small_net()), on_call=_hook_always if every else
                      lambda i, d: _fault(kind, d) if i == at_step else d)


def _lines(fn):
    src, first = inspect.getsourcelines(fn)
    return range(first, first + len(src))


@pytest.mark.parametrize("kind", ["inplace", "function", "hook"])
def test_a_backward_error_names_its_step_and_forward_line(kind):
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z0.clone().requires_grad_(True)
    with pytest.raises(Exception):  # the truth: the user's own backward raises
        _sampler(kind)(z).sum().backward()
    rep = gradcheck.diagnose(_sampler(kind), z0)
    e = rep.raised
    assert not rep.passed and e is not None and e.phase == "backward"
    assert e.step == 2, (e.step, e.location, e.hint)
    path, line = e.location.rsplit(":", 1)
    assert path.endswith("test_backward_errors.py")
    assert int(line) in _lines(_fault) or int(line) in _lines(_sampler)
    assert "anomaly" in e.hint
    assert "step 2" in rep.check("sampler_ran").message


def test_a_sampler_that_raises_only_without_grad_keeps_its_evidence():
    """A hook registered unconditionally raises under no_grad: gradcheck's no-grad passes run
    it with grad on instead, so the numeric evidence is there and nothing is lost."""
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError), torch.no_grad():
        _sampler(None, every=True)(z0)  # the truth: it raises without grad
    rep = gradcheck.diagnose(_sampler(None, every=True), z0)
    assert rep.passed and rep.numeric is not None and rep.numeric.verdict == "agrees"
    assert rep.check("passes_ran").level == "info"


def test_a_sampler_that_raises_in_an_added_pass_is_a_finding():
    """One that raises from its third call on (the recorded pass is its first): a warning
    naming the pass, the error and the line; never an exception out of diagnose."""
    sample, calls = _sampler(None), [0]

    def flaky(z):
        calls[0] += 1
        if calls[0] > 2:
            raise RuntimeError("only from the third call on")
        return sample(z)
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rep = gradcheck.diagnose(flaky, z0)
    f = rep.check("passes_ran")
    assert f.level == "warning" and "only from the third call on" in f.message
    path, line = rep.pass_errors[0].location.rsplit(":", 1)
    assert path.endswith("test_backward_errors.py")
    assert "raise RuntimeError" in open(__file__).read().splitlines()[int(line) - 1]


def test_an_exception_inside_the_locator_never_escapes(monkeypatch):
    import gradcheck.locate as locate_pkg

    def broken(*a, **k):
        raise RuntimeError("the locator's own failure")
    monkeypatch.setattr(locate_pkg, "locate", broken)
    z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sample = _sampler(None)

    def cut(z):  # broken, so that the locator runs
        return sample(z).detach()
    rep = gradcheck.diagnose(cut, z0, locate="always")
    assert not rep.passed and rep.locator is None
    assert "the locator's own failure" in rep.check("passes_ran").message

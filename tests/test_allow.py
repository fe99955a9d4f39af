"""allow_grad: the sampler's grad-disabling sites neutralised for the diagnosed call, listed as
what to change; every piece of global state restored, also on errors; nested use is safe."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradcheck
from gradcheck import adapters
from gradcheck.allow import AllowGrad
from gradcheck.sampling import GaussianDenoiser

from . import nested_no_grad as nn_

DEN = GaussianDenoiser(0.1, 0.5)
ROOT = Path(__file__).resolve().parent.parent


def _z0(dtype=torch.float64):
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _line(needle: str) -> int:
    src = Path(nn_.__file__).read_text().splitlines()
    return next(i for i, line in enumerate(src, 1) if needle in line)


def test_as_is_the_diagnosis_fails_naming_both_decorators():
    rep = gradcheck.diagnose(adapters.function(nn_.sample, DEN), _z0(), numeric=False,
                             optim_steps=0)
    p = rep.locator.primary  # the first cut: the conditioner, inside both decorators and the
    # helper's set_grad_enabled(False) (shadowed by them, but in effect without them)
    assert not rep.passed and len(p.sites) == 4, p.sites
    assert p.sites[0].startswith("@torch.no_grad() on tests.nested_no_grad.Sampler.forward")
    assert p.sites[1].startswith("@torch.no_grad() on tests.nested_no_grad.Sampler."
                                 "_forward_impl")
    assert p.sites[2] == (f"torch.set_grad_enabled(False) at tests/nested_no_grad.py:"
                          f"{_line('torch.set_grad_enabled(False)  # a helper')} (a call that "
                          f"stays in effect)")
    assert p.sites[3].startswith("`with torch.inference_mode():` in _condition")
    assert "every one must change" in p.detail


def test_with_allow_grad_it_passes_lists_every_site_and_gets_the_undecorated_gradient():
    z0 = _z0()
    # checks="full": central differences, the tight float64 oracle asserted below (the default
    # level's one-sided difference agrees to about its step, 1e-6)
    rep = gradcheck.diagnose(adapters.function(nn_.sample, DEN), z0, allow_grad=True,
                             target=torch.zeros_like(z0), optim_steps=1, checks="full")
    assert rep.passed, [f.message for f in rep.failed]
    sites = [(s.api, s.function, s.location, s.count) for s in rep.allowed_grad]
    here = "tests/nested_no_grad.py"
    assert sites == [
        ("@torch.no_grad()", "tests.nested_no_grad.Sampler.forward",
         f"{here}:{_line('def forward') - 1}", 1),
        ("@torch.no_grad()", "tests.nested_no_grad.Sampler._forward_impl",
         f"{here}:{_line('def _forward_impl') - 1}", 1),
        ("torch.set_grad_enabled(False)", "_forward_impl",
         f"{here}:{_line('torch.set_grad_enabled(False)  # a helper')}", 1),
        ("with torch.inference_mode():", "_condition",
         f"{here}:{_line('with torch.inference_mode():')}", 1)], sites
    f = rep.check("grad_allowed")
    assert f.level == "warning" and f.message.startswith(
        "this verdict holds with grad allowed: to make this differentiable, change: "
        "@torch.no_grad() on tests.nested_no_grad.Sampler.forward")
    # dL/dz0 equals the gradient of the undecorated pieces run by hand, and finite differences
    z = z0.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(nn_.sample_plain(DEN, z), torch.zeros_like(z0))
    (ref,) = torch.autograd.grad(loss, [z])
    got = rep.handles["z0_grad"]
    assert float((got - ref).norm() / ref.norm()) <= 1e-10
    assert rep.numeric.verdict == "agrees" and rep.numeric.rel_error < 1e-6


def test_global_state_is_restored_exactly_also_on_errors():
    real_set, enter = torch._C._set_grad_enabled, torch.inference_mode.__dict__["__enter__"]

    def boom(z):
        with torch.no_grad():
            raise KeyboardInterrupt

    for exc, fn in ((KeyboardInterrupt, boom), (ZeroDivisionError, lambda z: 1 / 0)):
        with pytest.raises(exc):
            with AllowGrad():
                fn(None)
        assert torch._C._set_grad_enabled is real_set
        assert torch.inference_mode.__dict__["__enter__"] is enter
        assert torch.is_grad_enabled()
    with torch.no_grad():  # the grad mode the block started with, not "on"
        with AllowGrad():
            pass
        assert not torch.is_grad_enabled()


def test_nested_and_reentrant_use_is_safe():
    real_set = torch._C._set_grad_enabled
    with AllowGrad() as outer:
        with AllowGrad() as inner:
            with torch.no_grad():
                assert torch.is_grad_enabled()
        with torch.no_grad():  # the outer one still neutralises after the inner one left
            assert torch.is_grad_enabled()
    assert torch._C._set_grad_enabled is real_set
    assert [s.count for s in outer.sites] == [1, 1] and [s.count for s in inner.sites] == [1]


def test_torch_internal_switches_are_left_alone():
    with AllowGrad() as allow:
        torch.nn.init.normal_(torch.empty(3))  # no_grad inside torch itself
    assert allow.sites == []


def test_a_switch_allow_grad_cannot_reach_is_reported_not_ignored():
    def sample(den, z0):
        with torch._C._InferenceMode(True):  # C++-side: out of allow_grad's reach
            x = z0 * 80.0
        return den(x.clone(), torch.full((z0.shape[0],), 80.0, dtype=z0.dtype))

    rep = gradcheck.diagnose(adapters.function(sample, DEN), _z0(), allow_grad=True,
                             numeric=False, optim_steps=0)
    assert not rep.passed
    assert "allow_grad was on, yet grad mode was off here" in rep.locator.primary.detail


def test_the_command_line_allows_grad(tmp_path):
    cmd = [sys.executable, "-m", "gradcheck", "run", "--sampler", "tests.nested_no_grad:sample",
           "--denoiser", "gaussian", "--mode", "default", "--no-html", "--out",
           str(tmp_path / "out")]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    allowed = subprocess.run(cmd + ["--allow-grad"], capture_output=True, text=True, cwd=ROOT,
                             timeout=300)
    assert plain.returncode == 2, plain.stdout[-2000:] + plain.stderr[-2000:]
    assert allowed.returncode == 0, allowed.stdout[-3000:] + allowed.stderr[-2000:]
    assert "to make this differentiable, change: @torch.no_grad() on " \
           "tests.nested_no_grad.Sampler.forward" in allowed.stdout

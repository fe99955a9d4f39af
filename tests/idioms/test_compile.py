"""torch.compile (issue 27, item 2): a compiled denoiser or a compiled sampler, healthy or cut
inside the compiled code. Each case's truth is plain autograd on the compiled sampler first.
gradcheck runs compiled code as its eager original (no recompiles, no TorchFunctionMode inside
traced code: the float(sigma) crash is gone), locates cuts inside it at their line and step, and
compares the compiled gradient with the eager one (``compiled_matches_eager``)."""
from __future__ import annotations

import pytest
import torch

import gradcheck

from ._loop import SIGMAS, euler_loop, small_net

pytestmark = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                                reason="torch.compiler.set_stance is torch 2.6+")

BROKEN_STEP = 2


class Den(torch.nn.Module):
    """A denoiser whose forward does float(sigma) (the torch bug any TorchFunctionMode set off
    in traced code), optionally cut inside."""

    def __init__(self, cut: str | None = None) -> None:
        super().__init__()
        self.net = small_net(16)
        self.cut = cut
        self.calls = 0

    def forward(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        c = 1.0 / (1.0 + float(sigma))
        h = self.net(x)
        if self.cut == "detach" and sigma == SIGMAS[BROKEN_STEP]:
            h = h.detach()
        if self.cut == "no_grad" and sigma == SIGMAS[BROKEN_STEP]:
            with torch.no_grad():
                h = h * 1.0
        if self.cut == "compiled_only" and torch.compiler.is_compiling():
            h = h * 1.1  # behaves differently compiled: the eager original is not what runs
        return h + x * c


def _sampler(cut: str | None, where: str, backend: str):
    den = Den(cut)
    inner = torch.compile(den, backend=backend) if where == "denoiser" else den
    sample = euler_loop(inner)
    return torch.compile(sample, backend=backend) if where == "sampler" else sample


def _truth(sample, z0: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Plain autograd on the compiled sampler: does z0's gradient equal the healthy twin's?"""
    z = z0.clone().requires_grad_(True)
    g = torch.autograd.grad(sample(z).square().mean(), z)[0]
    return g


Z0 = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("where", ["denoiser", "sampler"])
@pytest.mark.parametrize("cut", [None, "detach", "no_grad"])
def test_compiled_code_is_diagnosed_as_its_eager_twin(cut, where):
    torch._dynamo.reset()
    healthy = _truth(_sampler(None, where, "aot_eager"), Z0)
    sample = _sampler(cut, where, "aot_eager")
    broken = not torch.allclose(_truth(sample, Z0), healthy)
    assert broken is (cut is not None)  # the truth, by plain autograd on the compiled code
    rep = gradcheck.diagnose(sample, Z0)
    assert rep.raised is None, rep.raised  # no float(sigma) crash under gradcheck's modes
    assert rep.passed is not broken, [(f.name, f.message) for f in rep.failed]
    assert rep.compiled is not None and rep.compiled.regions > 0
    assert rep.check("compiled_matches_eager").passed
    assert any("torch.compile'd code ran as their eager original" in n for n in rep.notes)
    if broken:  # located inside the compiled code, at its line and step
        p = rep.locator.primary
        assert p.cause == cut and p.step == BROKEN_STEP, p
        assert "test_compile.py" in p.location


def test_gradchecks_code_is_never_compiled():
    """No recompile from gradcheck's state: a diagnosis adds no compiled frame to the cache."""
    torch._dynamo.reset()
    sample = _sampler(None, "sampler", "aot_eager")
    _truth(sample, Z0)  # the user's own warm-up: compiled once
    from torch._dynamo.utils import counters

    before = dict(counters["stats"])
    for _ in range(2):
        assert gradcheck.diagnose(sample, Z0).passed
    assert counters["stats"].get("unique_graphs", 0) == before.get("unique_graphs", 0)


def test_code_that_differs_compiled_is_a_finding():
    torch._dynamo.reset()
    sample = _sampler("compiled_only", "sampler", "aot_eager")
    eager_twin = _sampler("compiled_only", None, "aot_eager")
    assert not torch.allclose(_truth(sample, Z0), _truth(eager_twin, Z0))  # the truth
    rep = gradcheck.diagnose(sample, Z0)
    f = rep.check("compiled_matches_eager")
    assert not f.passed and not rep.passed, f.message
    assert "compiled, the sampler computes another gradient" in f.message


@pytest.mark.slow
def test_inductor_healthy_and_cut():
    torch._dynamo.reset()
    for cut in (None, "detach"):
        sample = _sampler(cut, "sampler", "inductor")
        _truth(sample, Z0)
        rep = gradcheck.diagnose(sample, Z0)
        assert rep.passed is (cut is None), [(f.name, f.message) for f in rep.failed]
        assert rep.check("compiled_matches_eager").passed  # within float64's tolerance
        if cut:
            assert rep.locator.primary.step == BROKEN_STEP

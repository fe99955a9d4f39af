"""Errors from torch become findings: the sampler's forward or backward raising gives a report
with the step, the user's line and torch's message, not a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import gradcheck
from gradcheck import adapters
from gradcheck.sampling import GaussianDenoiser

DEN = GaussianDenoiser(0.1, 0.5)
ROOT = Path(__file__).resolve().parent.parent


def _z0():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


def _line(needle: str) -> int:
    src = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(src, 1) if needle in line and "_line(" not in line)


def inference_tensor_sampler(den, z0):
    x = 80.0 * z0
    for i, s in enumerate((80.0, 10.0)):
        if i == 1:
            with torch.inference_mode():
                w = torch.ones_like(x)
            x = x * w  # INFERENCE-SAVED
        x = den(x, torch.full((z0.shape[0],), s, dtype=z0.dtype))
    return x


class _Raises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise ValueError("a backward that fails")  # BACKWARD-RAISES


def backward_raises_sampler(den, z0):
    return den(_Raises.apply(80.0 * z0),  # BACKWARD-MADE
               torch.full((z0.shape[0],), 80.0, dtype=z0.dtype))


def forward_raises_sampler(den, z0):
    x = den(80.0 * z0, torch.full((z0.shape[0],), 80.0, dtype=z0.dtype))
    return x.view(3, -1, 7)  # FORWARD-RAISES


def test_an_inference_tensor_saved_for_backward_is_a_located_finding():
    rep = gradcheck.diagnose(adapters.function(inference_tensor_sampler, DEN), _z0())
    f = rep.check("sampler_ran")
    assert not rep.passed and not f.passed and rep.raised.phase == "forward"
    assert rep.raised.location == f"tests/test_raised.py:{_line('# INFERENCE-SAVED')}"
    assert rep.raised.step == 0 and "Inference tensors cannot be saved for backward" in f.message
    assert "allow_grad=True" in f.message
    assert [c.name for c in rep.checks] == ["sampler_ran", "grad_allowed", "trace_hygiene"]
    assert rep.check("trace_hygiene").passed and torch.is_grad_enabled()
    # and allow_grad neutralises the inference_mode: the gradient flows
    ok = gradcheck.diagnose(adapters.function(inference_tensor_sampler, DEN), _z0(),
                            allow_grad=True)
    assert ok.passed and ok.raised is None


def test_an_exception_in_backward_is_a_located_finding():
    rep = gradcheck.diagnose(adapters.function(backward_raises_sampler, DEN), _z0())
    e = rep.raised
    assert not rep.passed and e.phase == "backward" and e.type == "ValueError"
    # located at the forward line that made the failing node (issue 27), with its step; the
    # line that raised in the backward is said in the hint
    assert e.location == f"tests/test_raised.py:{_line('# BACKWARD-MADE')}" and e.step == 0
    assert f"raised at tests/test_raised.py:{_line('# BACKWARD-RAISES')}" in e.hint
    assert e.message == "a backward that fails"


def test_an_exception_in_the_forward_is_a_finding_and_a_report_from_the_cli(tmp_path):
    rep = gradcheck.diagnose(adapters.function(forward_raises_sampler, DEN), _z0())
    assert not rep.passed and rep.raised.location == \
        f"tests/test_raised.py:{_line('# FORWARD-RAISES')}"
    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "gradcheck", "run", "--sampler",
                          "tests.test_raised:forward_raises_sampler", "--denoiser", "gaussian",
                          "--mode", "default", "--no-html", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert "the sampler raised RuntimeError in the forward pass" in res.stdout
    assert (out / "report.json").exists()


def test_the_page_of_a_run_that_raised_says_what_raised_and_leaves_out_empty_panels(tmp_path):
    """Issue 30, item 6: the banner says what raised, where, and the hint; the locator section
    does not claim it was switched off; no empty heat map, step graph or plot; no 'nan' cost.
    The mode is called by one name everywhere (the terminal's, the page's, the verdict's)."""
    out = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "gradcheck", "run", "--sampler",
                          "tests.test_raised:forward_raises_sampler", "--denoiser", "gaussian",
                          "--graph", "never", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "nan" not in res.stdout and "cost: " in res.stdout
    assert "mode custom: FAIL" in res.stdout and "custom/sampler_ran" in res.stdout
    page = (out / "index.html").read_text()
    assert "The sampler raised</strong> RuntimeError in the forward pass at " \
           "tests/test_raised.py:" in page
    assert "switched off (--locate never)" not in page
    assert "Nothing to locate: the sampler raised" in page
    assert 'class="heatmap-wrap"' not in page and 'class="mode-graph"' not in page
    assert 'alt="gradient norm per sampler step"' not in page
    import json

    assert list(json.loads((out / "report.json").read_text())["modes"]) == ["custom"]

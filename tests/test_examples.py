"""examples/ run as users run them (each under 40 lines)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _run(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    return subprocess.run([*argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_examples_are_short():
    assert {p.name for p in EXAMPLES} >= {"kdiffusion_sampler.py", "diffusers_scheduler_loop.py",
                                          "own_loop.py", "pytest_suite.py"}
    for p in EXAMPLES:
        assert len(p.read_text().splitlines()) < 40, p.name


def test_kdiffusion_example():
    res = _run(sys.executable, "examples/kdiffusion_sampler.py")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "sample_euler_ancestral, 9 steps" in out and "\n  FAIL" in out
    assert "(unwrapped)" in out and "\n  PASS" in out
    assert "decorated with @torch.no_grad(); function __main__.sample_euler_ancestral" in out


def test_own_loop_example_and_its_cli_form(tmp_path):
    res = _run(sys.executable, "examples/own_loop.py")
    assert res.returncode == 0 and res.stdout.startswith("PASS []"), res.stdout + res.stderr
    res = _run(sys.executable, "-m", "gradcheck", "run", "--sampler", "examples.own_loop:ddim_like",
               "--denoiser", "examples.own_loop:model", "--out", str(tmp_path / "r"),
               "--graph", "never")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ddim_like(denoiser, z0)" in res.stdout and "mode custom: PASS" in res.stdout
    assert (tmp_path / "r" / "index.html").exists()


def test_kdiffusion_example_from_the_cli(tmp_path):
    argv = [sys.executable, "-m", "gradcheck", "run", "--sampler",
            "examples.kdiffusion_sampler:sample_euler_ancestral", "--out", str(tmp_path / "r"),
            "--graph", "never", "--optim-steps", "0", "--no-numeric"]
    res = _run(*argv)
    assert res.returncode == 2 and "--unwrap" in res.stdout
    res = _run(*argv, "--unwrap")
    assert res.returncode == 0, res.stdout + res.stderr


def test_diffusers_example():
    pytest.importorskip("diffusers")
    res = _run(sys.executable, "examples/diffusers_scheduler_loop.py")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "DDIMScheduler, 10 steps: PASS" in lines[0]
    assert "EulerAncestralDiscreteScheduler, 10 steps: PASS" in res.stdout
    assert "9 fresh random draw(s)" in res.stdout  # the 10th is multiplied by sigma_up = 0
    assert "DDIMPipeline.__call__ (UNet2DModel, DDIMScheduler): FAIL" in res.stdout
    assert "DDIMPipeline.__call__ (unwrapped) (UNet2DModel, DDIMScheduler): PASS" in res.stdout


def test_pytest_suite_example(tmp_path):
    res = _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "examples/pytest_suite.py", f"--gradcheck-report={tmp_path / 'rep'}")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "7 passed" in res.stdout
    assert len(list((tmp_path / "rep").glob("*/index.html"))) == 7

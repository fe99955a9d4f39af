"""The idiom catalogue (``benchmarks/idiom_catalogue.py``): everyday torch idioms in a denoiser,
healthy or breaking the gradient at one step, in three sampler styles (a plain loop, the
k-diffusion adapter, the built-in RES sampler with the user's denoiser). Each case's truth is
plain autograd first; a broken one is detected at its step with its cause, a healthy one
passes. The benchmark writes the same table's numbers to ``benchmarks/results/``."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "idiom_catalogue.py"
_spec = importlib.util.spec_from_file_location("idiom_catalogue_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclass looks itself up there
_spec.loader.exec_module(bench)

_CASES = [c for c in bench.cases()
          if c.kind != "compile" or hasattr(torch.compiler, "set_stance")]


@pytest.mark.parametrize("case", _CASES, ids=lambda c: c.name)
def test_idiom(case):
    row = bench.score(case)  # asserts the truth by plain autograd first
    if case.broken:
        assert row["detected"] and row["right_step"] and row["right_cause"], row
    else:
        assert not row["false_alarm"], row

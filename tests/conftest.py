"""Shared fixtures and purpose-built broken samplers (each violates one thing on purpose)."""
from __future__ import annotations

import math

import pytest
import torch

from gradcheck.sampling import GaussianDenoiser, ResSampler, SamplerConfig, build_denoiser

pytest_plugins = ["pytester"]

#: the tests that lean on torch's internals (the locator's wrappers of Function.apply, grad mode,
#: hooks and checkpointing; allow_grad; provenance; the fault catalogue): marked torch_internals,
#: and run again on the newest torch the registry offers (scripts/test-newest-torch.sh)
TORCH_INTERNALS = ("test_locate.py", "test_allow.py", "test_fault_catalogue.py", "test_cosmos.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in TORCH_INTERNALS or item.path.parent.name == "idioms":
            item.add_marker(pytest.mark.torch_internals)

SHAPE = (2, 1, 8, 8)


@pytest.fixture(scope="session", autouse=True)
def _every_written_report_matches_the_schema(tmp_path_factory):
    """At the end of the session, every report.json / optimize.json the suite wrote (all under
    pytest's temporary root: CLI runs, pytester runs, API calls) validates against the JSON
    Schema checked in under docs/ (generated from the records)."""
    yield
    import json
    from pathlib import Path

    import jsonschema

    docs = Path(__file__).resolve().parent.parent / "docs"
    validators = {name: jsonschema.Draft202012Validator(
        json.loads((docs / f"{kind}.schema.json").read_text()))
        for name, kind in (("report.json", "report"), ("optimize.json", "optimize"))}
    bad, seen = [], 0
    for name, validator in validators.items():
        for path in tmp_path_factory.getbasetemp().rglob(name):
            seen += 1
            for err in validator.iter_errors(json.loads(path.read_text())):
                bad.append(f"{path}: {'/'.join(map(str, err.absolute_path))}: "
                           f"{err.message[-300:]}")
                break
    assert not bad, f"{len(bad)} of {seen} written reports break the schema:\n" + "\n".join(bad[:10])


@pytest.fixture(autouse=True)
def _grad_mode_guard():
    """Every test must leave the global grad mode as it found it."""
    before = torch.is_grad_enabled()
    yield
    after = torch.is_grad_enabled()
    torch.set_grad_enabled(before)
    assert after == before, "a test left the global grad mode changed"


@pytest.fixture(autouse=True)
def _cheap_passes_stay_cheap_under_load(monkeypatch):
    """The default level buys the float64 shadow only for a sampler whose recorded pass takes
    under ``SHADOW_BUDGET_S`` (2 s), a wall-clock measure. The suite's samplers take
    milliseconds, but on a loaded 2-core machine a pass can take seconds, and the tests'
    expectations would then follow the load (CI saw one do so). In-process runs here count as
    cheap; tests/test_cost.py sets the budget itself where the budget is what it tests."""
    import gradcheck.diagnosis

    monkeypatch.setattr(gradcheck.diagnosis, "SHADOW_BUDGET_S", 1e9)


@pytest.fixture
def gaussian() -> GaussianDenoiser:
    return GaussianDenoiser(mu=0.1, s=0.5)


@pytest.fixture(scope="session")
def conv32():
    return build_denoiser("conv", seed=0, dtype=torch.float32)


@pytest.fixture(scope="session")
def conv64():
    return build_denoiser("conv", seed=0, dtype=torch.float64)


def z0_like(shape=SHAPE, dtype=torch.float64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def sampler(den, mode="default", **cfg) -> ResSampler:
    cfg.setdefault("steps", 4)
    return ResSampler(den, SamplerConfig(**cfg), mode=mode, seed=0)


class CallFault:
    """Wraps a denoiser; on call number ``at`` applies ``fault`` ('detach_out', 'no_grad',
    'scale_grad', 'flip_grad', 'nan_grad', 'hook_scale': a gradient hook on the output that
    scales its gradient, 'module_hook': a module backward hook that does, 'ckpt_drift': a
    checkpointed call whose recomputation reads a scale changed after the forward)."""

    def __init__(self, inner, at: int, fault: str, factor: float = 2.0) -> None:
        self.inner, self.at, self.fault, self.factor = inner, at, fault, factor
        self.calls = 0

    def __call__(self, x, sigma):
        k = self.calls
        self.calls += 1
        if k != self.at:
            return self.inner(x, sigma)
        if self.fault == "no_grad":
            with torch.no_grad():
                return self.inner(x, sigma)
        if self.fault == "ckpt_drift":
            return self._ckpt(x, sigma)
        if self.fault == "module_hook":
            mod = _Call(self.inner)
            mod.register_full_backward_hook(
                lambda m, gin, gout: tuple(None if g is None else g * self.factor for g in gin))
            return mod(x, sigma)
        out = self.inner(x, sigma)
        if self.fault == "detach_out":
            return out.detach()
        if self.fault == "scale_grad":
            return _GradScale.apply(out, self.factor)
        if self.fault == "flip_grad":
            return _GradScale.apply(out, -1.0)
        if self.fault == "nan_grad":
            return _GradScale.apply(out, math.nan)
        if self.fault == "hook_scale":
            if out.requires_grad:
                out.register_hook(lambda g: g * self.factor)
            return out
        raise ValueError(self.fault)

    def _ckpt(self, x, sigma):
        """A checkpointed call whose recomputation reads a weight changed after the forward:
        the forward's value, the recomputation's gradient (a wrong gradient, no custom code)."""
        held = {"w": torch.ones((), dtype=x.dtype)}
        out = torch.utils.checkpoint.checkpoint(
            lambda u: self.inner(u, sigma) * held["w"], x, use_reentrant=False)
        held["w"] = torch.tensor(self.factor, dtype=x.dtype)
        return out


class _Call(torch.nn.Module):
    """A denoiser as a module (to hang a module backward hook on)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma):
        return self.inner(x, sigma)


class _GradScale(torch.autograd.Function):
    """Identity forward, backward multiplied by a factor: a wrong custom backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class ResetCalls:
    """A sample_fn that resets a CallFault's counter per call, so every run is the same function."""

    def __init__(self, fault: CallFault, smp: ResSampler) -> None:
        self.fault, self.smp = fault, smp
        self.mode = smp.mode
        smp.denoiser = fault

    @property
    def leaves(self):
        return self.smp.leaves

    def __call__(self, z):
        self.fault.calls = 0
        return self.smp(z)

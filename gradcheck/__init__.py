"""gradcheck: does the gradient reach z0 through your diffusion sampler, and if not, where does it stop?

    import torch, gradcheck
    from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser

    sampler = ResSampler(build_denoiser("conv"), SamplerConfig(steps=4), mode="learnable_step_noise")
    report = gradcheck.diagnose(sampler, torch.randn(2, 1, 8, 8))
    print(report.passed, [f.message for f in report.failed])

The torch-facing names (diagnose, instrument, probe, trace) are imported on first use, so that the
records, checks and renderers work in a process without torch (re-rendering a saved report.json).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import ConfigError, DenoiserError, GradcheckError, InputError, OutputError
from .records import Finding, FlowReport, ProbeStats, RunRecord

_LAZY = {
    "diagnose": "gradcheck.diagnosis",
    "instrument": "gradcheck.denoiser_calls",
    "optimize": "gradcheck.optimize_run",
    "probe": "gradcheck.probes",
    "summary": "gradcheck.report.terminal",
    "trace": "gradcheck.probes",
    "watch_grad_mode": "gradcheck.gradmode",
    "write_report": "gradcheck.report.write",
}

__all__ = [
    "__version__",
    "diagnose",
    "instrument",
    "optimize",
    "probe",
    "summary",
    "trace",
    "watch_grad_mode",
    "write_report",
    "Finding",
    "FlowReport",
    "ProbeStats",
    "RunRecord",
    "GradcheckError",
    "ConfigError",
    "DenoiserError",
    "InputError",
    "OutputError",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradcheck' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""gradcheck: does the gradient reach z0 through your diffusion sampler, and if not, where does it stop?

    import torch, gradcheck
    from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser

    sampler = ResSampler(build_denoiser("conv"), SamplerConfig(steps=4), mode="learnable_step_noise")
    report = gradcheck.diagnose(sampler, torch.randn(2, 1, 8, 8))
    print(report.passed, [f.message for f in report.failed])
"""
from __future__ import annotations

__version__ = "0.1.0"

from .diagnose import diagnose
from .errors import ConfigError, DenoiserError, GradcheckError, InputError, OutputError
from .probes import instrument, probe, trace
from .records import Finding, FlowReport, ProbeStats, RunRecord

__all__ = [
    "__version__",
    "diagnose",
    "instrument",
    "probe",
    "trace",
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

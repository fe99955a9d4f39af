"""The built-in sampler as one object: schedule + RES solver + noise mode, ``z0 -> output``."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..probes import probe
from .. import modes
from .noise import StepNoiseSource
from .solvers import SOLVERS, Denoiser, sample_res

#: S_churn used by the step-noise modes when none is given: with the cap of
#: min(S_churn/(N+1), sqrt(1.2)-1) this injects noise at the maximum rate on every step up to N=39.
NOISE_MODE_CHURN = 40.0


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """EDM rho-schedule, i = 0..n: sigma_i = (smax^(1/rho) + i/n (smin^(1/rho) - smax^(1/rho)))^rho.

    Returns a decreasing [n+1] tensor with sigma_0 = sigma_max and sigma_n = sigma_min.
    """
    ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    sig[0], sig[-1] = sigma_max, sigma_min  # exact endpoints
    return sig.to(dtype)


@dataclass
class SamplerConfig:
    """The RES sampler's settings, with the original's defaults (35 steps, 2ab, 80 -> 0.002).

    ``s_churn=None`` means: 0 in mode ``default`` (nothing injected) and ``NOISE_MODE_CHURN`` in
    the step-noise modes. In mode ``default`` an explicit ``s_churn > 0`` only raises sigma (the
    original with S_noise = 0): no noise is ever injected there.
    ``solver_dtype`` is ``"float64"`` (as the original) or ``"input"`` (z0's dtype).
    """

    solver: str = "2ab"
    steps: int = 35
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    s_churn: float | None = None
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0
    solver_dtype: str = "float64"
    checkpoint: bool = False
    truncate: int | None = None
    truncate_kind: str = "state"

    def validate(self) -> SamplerConfig:
        """Raise :class:`ConfigError` naming the first bad value; return self."""
        if self.solver not in SOLVERS:
            raise ConfigError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        for name in ("sigma_min", "sigma_max", "rho"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {v!r}")
        if self.sigma_min >= self.sigma_max:
            raise ConfigError(
                f"sigma_min must be < sigma_max, got sigma_min={self.sigma_min!r} >= "
                f"sigma_max={self.sigma_max!r}"
            )
        for name in ("s_churn", "s_noise"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
        if math.isnan(self.s_min) or math.isnan(self.s_max) or self.s_min >= self.s_max:
            raise ConfigError(f"need s_min < s_max, got s_min={self.s_min!r}, s_max={self.s_max!r}")
        if self.truncate is not None and (isinstance(self.truncate, bool) or
                                          not isinstance(self.truncate, int) or self.truncate < 0):
            raise ConfigError(f"truncate must be an integer >= 0, got {self.truncate!r}")
        if self.truncate is not None and self.truncate >= self.num_solver_steps:
            raise ConfigError(f"truncate must be less than the {self.num_solver_steps} solver "
                              f"steps, got {self.truncate}: truncating the backward to the last "
                              f"{self.truncate} steps of {self.num_solver_steps} cuts nothing")
        if self.truncate_kind not in ("state", "denoiser"):
            raise ConfigError(f"truncate_kind must be 'state' or 'denoiser', got "
                              f"{self.truncate_kind!r}")
        if self.solver_dtype not in ("float64", "input"):
            raise ConfigError(f"solver_dtype must be 'float64' or 'input', got {self.solver_dtype!r}")
        return self

    @property
    def num_solver_steps(self) -> int:
        """N: solver steps. 2mid takes two denoiser calls per step, so N = steps // 2 (at least 1)."""
        return max(1, self.steps // 2) if self.solver == "2mid" else self.steps

    def churn_for(self, mode: str) -> float:
        if self.s_churn is not None:
            return float(self.s_churn)
        return 0.0 if modes.MODES[mode].step_noise == "none" else NOISE_MODE_CHURN

    def sigmas(self) -> torch.Tensor:
        return karras_sigmas(self.num_solver_steps, self.sigma_min, self.sigma_max, self.rho)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_mode(mode: str) -> str:
    """``mode`` if the built-in sampler has it (see :mod:`gradcheck.modes`)."""
    return modes.get(mode, builtin=True).name


class ResSampler:
    """``z0 -> output``: x_T = sigma_max * z0, then :func:`sample_res` with the mode's step noise.

    Each call is a deterministic function of z0 (and, in ``independent_leaves``, of the leaves
    in :attr:`leaves`, created on first use and kept), so it can be differentiated, finite-differenced
    and optimised.

    Args:
        denoiser: ``D(x, sigma) -> x0_hat``.
        config: the :class:`SamplerConfig`.
        mode: one of ``default``, ``learnable_step_noise``, ``fresh_noise``, ``independent_leaves``.
        seed: seeds the step-noise transforms / draws / leaves.
    """

    def __init__(self, denoiser: Denoiser, config: SamplerConfig | None = None,
                 mode: str = "default", seed: int = 0) -> None:
        self.denoiser = denoiser
        self.config = (config or SamplerConfig()).validate()
        self.mode = check_mode(mode)
        self.seed = int(seed)
        self._noise_source = StepNoiseSource(self.mode, self.seed)

    @property
    def leaves(self) -> list[torch.Tensor]:
        """The step-noise leaves (``independent_leaves`` only), in step order."""
        return self._noise_source.leaves

    def _noise(self, z0: torch.Tensor):
        return self._noise_source.for_call(z0)

    def at_dtype(self, dtype: torch.dtype) -> ResSampler | None:
        """The same sampler computing in ``dtype`` (a shadow run for the numeric check): its
        denoiser copied and cast when it is an ``nn.Module``; None when it cannot be cast."""
        import copy

        den = self.denoiser
        if not isinstance(den, torch.nn.Module):
            return None
        shadow = copy.copy(self)
        shadow.denoiser = copy.deepcopy(den).to(dtype)
        shadow.shadow_bytes = sum(t.numel() * t.element_size() for t in
                                  [*shadow.denoiser.parameters(), *shadow.denoiser.buffers()])
        shadow._noise_source = StepNoiseSource(self.mode, self.seed)
        return shadow

    def __call__(self, z0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        z0 = probe(z0, "z0", kind="z0")
        x_T = cfg.sigma_max * z0  # [B, ...]
        return sample_res(
            self.denoiser, x_T, cfg.sigmas(), solver=cfg.solver, s_churn=cfg.churn_for(self.mode),
            s_min=cfg.s_min, s_max=cfg.s_max, s_noise=cfg.s_noise, step_noise=self._noise(z0),
            solver_dtype=torch.float64 if cfg.solver_dtype == "float64" else None,
            checkpoint=cfg.checkpoint, truncate=cfg.truncate, truncate_kind=cfg.truncate_kind,
        )

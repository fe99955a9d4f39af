"""A structural replica of a Cosmos-style ``res_sampler.py``, written for the tests from the math
and the structure described in shared/reference/res-sampler.md (not copied): a ``Sampler``
module whose ``forward`` and ``_forward_impl`` are both ``@torch.no_grad()``, a float64 wrapper
around the denoiser, undecorated module-level helpers (``get_rev_ts``, ``fori_loop``,
``differential_equation_solver`` with EDM churn drawn by ``torch.randn_like``, the multistep
``order2_fn`` with its (x0, sigma) history, the midpoint Runge-Kutta step), ``callback_fns``
called with ``**locals()`` at the end of every step, and the final clean call at sigma_min.

``Sampler.forward`` is what users call; ``undecorated`` runs the same pieces by hand under
``torch.enable_grad()`` (the manual route the originating note had to take): the reference
gradient for ``allow_grad``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class SolverConfig:
    is_multi: bool = True
    rk: str = "2mid"
    multistep: str = "2ab"
    s_churn: float = 0.0
    s_t_max: float = float("inf")
    s_t_min: float = 0.0
    s_noise: float = 1.0


@dataclass
class TimeStampConfig:
    nfe: int = 35
    t_min: float = 0.002
    t_max: float = 80.0
    order: float = 7.0


@dataclass
class SamplerConfig:
    solver: SolverConfig
    timestamps: TimeStampConfig
    sample_clean: bool = True


def get_rev_ts(t_min: float, t_max: float, num_steps: int, ts_order: float) -> torch.Tensor:
    """The Karras rho-schedule from t_max down to t_min, float64, num_steps + 1 values."""
    i = torch.arange(num_steps + 1, dtype=torch.float64)
    hi, lo = t_max ** (1.0 / ts_order), t_min ** (1.0 / ts_order)
    return (hi + i / num_steps * (lo - hi)) ** ts_order


def fori_loop(lower: int, upper: int, body_fun: Callable[[int, Any], Any], init_val: Any) -> Any:
    val = init_val
    for i in range(lower, upper):
        val = body_fun(i, val)
    return val


def _phi1(z: torch.Tensor) -> torch.Tensor:
    return torch.expm1(z) / z


def _phi2(z: torch.Tensor) -> torch.Tensor:
    return (_phi1(z) - 1.0) / z


def res_x0_rk2_step(x_s, t, s, x0_s, s1, x0_s1):
    """The RES second-order core: a second prediction x0_s1 at s1."""
    h = torch.log(s / t)
    c2 = (torch.log(s) - torch.log(s1)) / h
    b2 = _phi2(-h) / c2
    b1 = _phi1(-h) - b2
    return torch.exp(-h) * x_s + h * (b1 * x0_s + b2 * x0_s1)


def reg_x0_euler_step(x_s, s, t, x0_s):
    r = t / s
    return r * x_s + (1.0 - r) * x0_s, x0_s


def order2_fn(x_s, s, t, x0_s, x0_preds):
    """2ab: Euler first, then the core with the previous prediction (linear extrapolation)."""
    if x0_preds:
        x0_prev, s_prev = x0_preds[0]
        x_t = res_x0_rk2_step(x_s, t, s, x0_s, s_prev, x0_prev)
    else:
        x_t = reg_x0_euler_step(x_s, s, t, x0_s)[0]
    return x_t, [(x0_s, s)]


def churn(x, sigma, solver_cfg, num_step):
    """EDM churn: drawn every step inside (S_min, S_max) with torch.randn_like; with S_churn = 0
    the draw is multiplied by zero."""
    if solver_cfg.s_t_min < float(sigma) < solver_cfg.s_t_max:
        eta = min(solver_cfg.s_churn / (num_step + 1), math.sqrt(1.2) - 1)
        sigma_hat = sigma * (1 + eta)
        eps = torch.randn_like(x)
        x = x + (sigma_hat ** 2 - sigma ** 2).sqrt() * solver_cfg.s_noise * eps
        sigma = sigma_hat
    return x, sigma


def differential_equation_solver(x0_fn, sigmas_L, solver_cfg, callback_fns=None):
    num_step = len(sigmas_L) - 1

    def sample_fn(input_xT_B_StateShape):
        in_dtype = input_xT_B_StateShape.dtype
        ones_B = torch.ones(input_xT_B_StateShape.size(0), device=input_xT_B_StateShape.device,
                            dtype=torch.float64)

        def step_fn(i_th, state):
            input_x_B_StateShape, x0_preds = state
            sigma_cur_0, sigma_next_0 = sigmas_L[i_th], sigmas_L[i_th + 1]
            input_x_B_StateShape, sigma_cur_0 = churn(input_x_B_StateShape, sigma_cur_0,
                                                      solver_cfg, num_step)
            if solver_cfg.is_multi:
                x0_pred_B_StateShape = x0_fn(input_x_B_StateShape, sigma_cur_0 * ones_B)
                output_x_B_StateShape, x0_preds = order2_fn(
                    input_x_B_StateShape, sigma_cur_0, sigma_next_0, x0_pred_B_StateShape,
                    x0_preds)
            else:  # 2mid: a midpoint Runge-Kutta step, two calls
                x0_s = x0_fn(input_x_B_StateShape, sigma_cur_0 * ones_B)
                s1 = torch.sqrt(sigma_cur_0 * sigma_next_0)
                x_s1 = reg_x0_euler_step(input_x_B_StateShape, sigma_cur_0, s1, x0_s)[0]
                x0_s1 = x0_fn(x_s1, s1 * ones_B)
                output_x_B_StateShape = res_x0_rk2_step(input_x_B_StateShape, sigma_next_0,
                                                        sigma_cur_0, x0_s, s1, x0_s1)
                x0_pred_B_StateShape = x0_s1
            for callback_fn in callback_fns or []:
                callback_fn(**locals())
            return output_x_B_StateShape, x0_preds

        x_at_eps, _ = fori_loop(0, num_step, step_fn, [input_xT_B_StateShape, None])
        return x_at_eps.to(in_dtype)

    return sample_fn


class Sampler(torch.nn.Module):
    """Holds only a config; both entry points are decorated, as in the original."""

    def __init__(self) -> None:
        super().__init__()

    def _get_sampler_config(self, num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max,
                            S_noise, solver_option):
        multi = solver_option in ("2ab", "1euler")
        nfe = num_steps if multi else num_steps // 2
        return SamplerConfig(
            solver=SolverConfig(is_multi=multi, s_churn=S_churn, s_t_max=S_max, s_t_min=S_min,
                                s_noise=S_noise),
            timestamps=TimeStampConfig(nfe=nfe, t_min=sigma_min, t_max=sigma_max, order=rho))

    @torch.no_grad()
    def forward(self, x0_fn, x_sigma_max, num_steps=35, sigma_min=0.002, sigma_max=80.0, rho=7,
                S_churn=0, S_min=0, S_max=float("inf"), S_noise=1, solver_option="2ab",
                callback_fns=None):
        in_dtype = x_sigma_max.dtype

        def float64_x0_fn(x_B_StateShape, t_B):
            return x0_fn(x_B_StateShape.to(in_dtype), t_B.to(in_dtype)).to(torch.float64)

        cfg = self._get_sampler_config(num_steps, sigma_min, sigma_max, rho, S_churn, S_min,
                                       S_max, S_noise, solver_option)
        if solver_option == "1euler":
            cfg.solver.multistep = "1euler"
        return self._forward_impl(float64_x0_fn, x_sigma_max.to(torch.float64), cfg,
                                  callback_fns=callback_fns).to(in_dtype)

    @torch.no_grad()
    def _forward_impl(self, denoiser_fn, noisy_input_B_StateShape, sampler_cfg,
                      callback_fns=None):
        ts = sampler_cfg.timestamps
        sigmas_L = get_rev_ts(ts.t_min, ts.t_max, ts.nfe, ts.order).to(
            noisy_input_B_StateShape.device)
        solver = sampler_cfg.solver
        if solver.multistep == "1euler":
            solver = SolverConfig(is_multi=True, s_churn=solver.s_churn, s_t_max=solver.s_t_max,
                                  s_t_min=solver.s_t_min, s_noise=solver.s_noise)
            denoise_x = _euler_solver(denoiser_fn, sigmas_L, solver, callback_fns)(
                noisy_input_B_StateShape)
        else:
            denoise_x = differential_equation_solver(denoiser_fn, sigmas_L, solver,
                                                     callback_fns)(noisy_input_B_StateShape)
        if sampler_cfg.sample_clean:
            ones_B = torch.ones(denoise_x.size(0), device=denoise_x.device, dtype=sigmas_L.dtype)
            denoise_x = denoiser_fn(denoise_x, sigmas_L[-1] * ones_B)
        return denoise_x


def _euler_solver(x0_fn, sigmas_L, solver_cfg, callback_fns=None):
    """1euler: the multistep loop with the history never used (one call, an Euler step)."""
    num_step = len(sigmas_L) - 1

    def sample_fn(x):
        ones_B = torch.ones(x.size(0), device=x.device, dtype=torch.float64)

        def step_fn(i_th, state):
            x_s, _ = state
            s, t = sigmas_L[i_th], sigmas_L[i_th + 1]
            x_s, s = churn(x_s, s, solver_cfg, num_step)
            x0 = x0_fn(x_s, s * ones_B)
            x_t, _ = reg_x0_euler_step(x_s, s, t, x0)
            for callback_fn in callback_fns or []:
                callback_fn(**locals())
            return x_t, None

        return fori_loop(0, num_step, step_fn, [x, None])[0]

    return sample_fn


def undecorated(x0_fn, x_sigma_max, num_steps=35, sigma_min=0.002, sigma_max=80.0, rho=7,
                solver_option="2ab"):
    """The same computation from the undecorated pieces, under enable_grad (S_churn = 0)."""
    with torch.enable_grad():
        in_dtype = x_sigma_max.dtype

        def f64(x, t):
            return x0_fn(x.to(in_dtype), t.to(in_dtype)).to(torch.float64)

        smp = Sampler()
        cfg = smp._get_sampler_config(num_steps, sigma_min, sigma_max, rho, 0.0, 0.0,
                                      float("inf"), 1.0, solver_option)
        sig = get_rev_ts(sigma_min, sigma_max, cfg.timestamps.nfe, rho)
        x = x_sigma_max.to(torch.float64)
        if solver_option == "1euler":
            x = _euler_solver(f64, sig, cfg.solver)(x)
        else:
            x = differential_equation_solver(f64, sig, cfg.solver)(x)
        ones = torch.ones(x.size(0), dtype=torch.float64)
        return f64(x, sig[-1] * ones).to(in_dtype)


def factory() -> Sampler:
    """For ``gradcheck run --sampler tests.cosmos_replica:factory --convention cosmos``."""
    return Sampler()

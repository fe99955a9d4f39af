"""RES samplers (Zhang, Song & Chen 2023, as in Cosmos' ``res_sampler.py``), differentiable end to end.

Written from the math in ``shared/reference/res-sampler.md``. The denoiser is ``D(x, sigma) ->
x0_hat`` (EDM convention ``x_sigma = x0 + sigma * eps``); ``sigma`` is passed as a tensor of shape
[B] in the input dtype, as in k-diffusion. With ``lambda = -ln(sigma)`` the probability-flow ODE is
``dx/dlambda = D - x`` and a step s -> t (``h = ln(sigma_s / sigma_t) > 0``) integrates it
exponentially:

    Euler (DDIM):  x_t = (sigma_t/sigma_s) x_s + (1 - sigma_t/sigma_s) x0_s
    RES 2nd order: x_t = e^{-h} x_s + h (b1 x0_s + b2 x0_s1),  b2 = phi2(-h)/c2,  b1 = phi1(-h) - b2

Nothing here runs under ``no_grad``. Every state, denoiser input/output and step noise is probed.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..denoiser_calls import call_denoiser, output_tensor
from ..probes import probe

SOLVERS = ("2ab", "2mid", "1euler")

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``noise(step, x) -> eps`` (or None for "inject nothing"); eps has x's shape.
StepNoiseFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def phi1(z: float) -> float:
    """(e^z - 1)/z, accurate near 0."""
    if abs(z) < 1e-5:
        return 1.0 + z / 2.0 + z * z / 6.0
    return math.expm1(z) / z


def phi2(z: float) -> float:
    """(phi1(z) - 1)/z, accurate near 0."""
    if abs(z) < 1e-4:
        return 0.5 + z / 6.0 + z * z / 24.0
    return (phi1(z) - 1.0) / z


def churn_eta(s_churn: float, num_steps: int) -> float:
    """EDM Algorithm 2's churn amount, capped as in the original: min(S_churn/(N+1), sqrt(1.2)-1)."""
    return min(s_churn / (num_steps + 1), math.sqrt(1.2) - 1.0)


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma_s: float, sigma_t: float) -> torch.Tensor:
    """DDIM / exponential Euler: x_t = r x_s + (1 - r) x0_s with r = sigma_t / sigma_s."""
    r = sigma_t / sigma_s
    return r * x + (1.0 - r) * x0


def res2_step(x: torch.Tensor, x0_s: torch.Tensor, x0_s1: torch.Tensor, sigma_s: float,
              sigma_s1: float, sigma_t: float) -> torch.Tensor:
    """The RES second-order core with a second prediction x0_s1 taken at sigma_s1."""
    h = math.log(sigma_s / sigma_t)
    c2 = (math.log(sigma_s) - math.log(sigma_s1)) / h  # (lambda_s1 - lambda_s) / h
    b2 = phi2(-h) / c2
    b1 = phi1(-h) - b2
    return math.exp(-h) * x + h * (b1 * x0_s + b2 * x0_s1)


# -- the solvers: one step each, from x at sigma_s (its prediction x0 made) to sigma_t ----------
# ``D(x, sigma, suffix)`` is this step's denoiser; ``prev`` the previous step's (x0, sigma).

def step_1euler(D: Callable[..., torch.Tensor], x: torch.Tensor, x0: torch.Tensor,
                sigma_s: float, sigma_t: float, prev: Any) -> torch.Tensor:
    return euler_step(x, x0, sigma_s, sigma_t)


def step_2ab(D: Callable[..., torch.Tensor], x: torch.Tensor, x0: torch.Tensor,
             sigma_s: float, sigma_t: float, prev: Any) -> torch.Tensor:
    """Adams-Bashforth in lambda: the RES core with s1 = the previous step's sigma (Euler first)."""
    if prev is None:
        return euler_step(x, x0, sigma_s, sigma_t)
    x0_prev, sigma_prev = prev
    return res2_step(x, x0, x0_prev, sigma_s, sigma_prev, sigma_t)


def step_2mid(D: Callable[..., torch.Tensor], x: torch.Tensor, x0: torch.Tensor,
              sigma_s: float, sigma_t: float, prev: Any) -> torch.Tensor:
    """Euler to the lambda-midpoint, a second prediction there, the RES core."""
    sigma_mid = math.sqrt(sigma_s * sigma_t)
    x0_mid = D(euler_step(x, x0, sigma_s, sigma_mid), sigma_mid, "@mid")
    return res2_step(x, x0, x0_mid, sigma_s, sigma_mid, sigma_t)


STEPS = {"1euler": step_1euler, "2ab": step_2ab, "2mid": step_2mid}


# -- what wraps the denoiser and the state -----------------------------------------------------

def denoiser_call(denoiser: Denoiser, *, batch: int, in_dtype: torch.dtype,
                  state_dtype: torch.dtype, checkpoint: bool = False,
                  detach_before: int | None = None) -> Callable[..., torch.Tensor]:
    """``D(x, sigma, step, suffix="")``: the denoiser called the way the sampler calls it (sigma
    as a [B] tensor, x in the input dtype, probed as step ``step``), its output in the state's
    dtype; under non-reentrant activation checkpointing with ``checkpoint``; its output
    detached for the steps before ``detach_before`` (AlignProp-style truncation: the skip path
    keeps a gradient)."""
    fn = denoiser
    if checkpoint:
        from torch.utils.checkpoint import checkpoint as _ckpt

        def fn(xs: torch.Tensor, s: torch.Tensor) -> Any:  # noqa: F811 - the checkpointed call
            if not torch.is_grad_enabled():
                return denoiser(xs, s)
            return _ckpt(denoiser, xs, s, use_reentrant=False)

    def D(xs: torch.Tensor, sigma: float, step: int, suffix: str = "") -> torch.Tensor:
        s = torch.full((batch,), sigma, dtype=in_dtype, device=xs.device)  # [B]
        out = output_tensor(call_denoiser(fn, xs.to(in_dtype), s, step=step, suffix=suffix))
        out = out.to(state_dtype)
        return out.detach() if detach_before is not None and step < detach_before else out

    return D


def churn(x: torch.Tensor, i: int, sigma: float, eta: float, *, s_min: float, s_max: float,
          s_noise: float, step_noise: StepNoiseFn | None) -> tuple[torch.Tensor, float]:
    """EDM Algorithm 2: raise sigma to sigma_hat and add the matching (probed) step noise."""
    if not (eta > 0.0 and s_min < sigma < s_max):
        return x, sigma
    sigma_hat = sigma * (1.0 + eta)
    eps = step_noise(i, x) if (step_noise is not None and s_noise != 0.0) else None
    if eps is not None:
        eps = probe(eps, f"eps[{i}]", step=i, kind="step_noise", sigma=sigma)
        x = x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * eps.to(x.dtype)
    return x, sigma_hat


def _called_back(callback: Callable[[dict[str, Any]], Any], x_next: torch.Tensor, i: int,
                 sigma: float, sigma_hat: float, sigma_next: float,
                 x0: torch.Tensor) -> torch.Tensor:
    """Like k-diffusion's callback, plus: a returned tensor replaces the state, which is how real
    callbacks that receive ``**locals()`` end up detaching or mutating it; the state is probed on
    both sides, so a callback that cuts the gradient shows."""
    x_next = probe(x_next, f"x[{i + 1}]@callback", step=i, kind="state", sigma=sigma_next)
    ret = callback({"i": i, "x": x_next, "sigma": sigma, "sigma_hat": sigma_hat,
                    "denoised": x0})
    return ret if isinstance(ret, torch.Tensor) else x_next


def _check(solver: str, truncate_kind: str) -> None:
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if truncate_kind not in ("state", "denoiser"):
        raise ConfigError(f"truncate_kind must be 'state' or 'denoiser', got {truncate_kind!r}")


def sample_res(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | list[float],
    *,
    solver: str = "2ab",
    s_churn: float = 0.0,
    s_min: float = 0.0,
    s_max: float = math.inf,
    s_noise: float = 1.0,
    step_noise: StepNoiseFn | None = None,
    solver_dtype: torch.dtype | None = torch.float64,
    final_denoise: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: bool = False,
    truncate: int | None = None,
    truncate_kind: str = "state",
) -> torch.Tensor:
    """Run a RES sampler from ``x = x_T`` down the schedule ``sigmas`` (length N+1, decreasing).

    Args:
        denoiser: ``D(x, sigma) -> x0_hat``; sees x in its input dtype, sigma as a [B] tensor.
        x: the initial state ``sigma_max * z0``, shape [B, ...].
        sigmas: the noise levels sigma_0 = sigma_max > ... > sigma_N = sigma_min.
        solver: ``"2ab"`` (multistep, one call per step), ``"2mid"`` (midpoint, two calls per
            step) or ``"1euler"``.
        s_churn, s_min, s_max, s_noise: EDM churn; step i injects noise when s_min < sigma_i < s_max.
        step_noise: ``noise(i, x)`` giving the eps of step i's churn, or None for no injection
            (the churn then only raises sigma, as with S_noise = 0).
        solver_dtype: dtype of the solver state (float64 as in the original); None keeps x's.
        final_denoise: return ``D(x_N, sigma_N)`` (the original's behaviour) rather than x_N.
        callback: called after every step with ``{"i", "x", "sigma", "sigma_hat", "denoised"}``
            (x is the new state); if it returns a tensor, that tensor becomes the state.
        checkpoint: run every denoiser call under non-reentrant activation checkpointing (store
            only its input and output; recompute in backward, with the RNG state restored).
        truncate: back-propagate through the last ``truncate`` solver steps only:
            ``truncate_kind="state"`` detaches the whole state (and the multistep history) before
            them, as DRaFT-K; ``"denoiser"`` detaches only the denoiser outputs before them, as
            AlignProp (a biased "skip" gradient still reaches z0).

    Returns:
        The clean prediction at sigma_min (or x_N), in x's input dtype.
    """
    _check(solver, truncate_kind)
    sig = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    n, in_dtype = len(sig) - 1, x.dtype
    cut = None if truncate is None else max(0, n - int(truncate))
    D = denoiser_call(denoiser, batch=x.shape[0], in_dtype=in_dtype,
                      state_dtype=solver_dtype or in_dtype, checkpoint=checkpoint,
                      detach_before=cut if truncate_kind == "denoiser" else None)
    eta, step = churn_eta(s_churn, n), STEPS[solver]
    x = x.to(solver_dtype or in_dtype)
    prev: tuple[torch.Tensor, float] | None = None  # the previous step's (x0, sigma)
    for i in range(n):
        sigma, sigma_next = sig[i], sig[i + 1]
        if cut is not None and truncate_kind == "state" and i == cut and i > 0:
            # DRaFT-K truncation: nothing before the last K steps receives gradient
            x, prev = x.detach(), (prev[0].detach(), prev[1]) if prev is not None else None
        x = probe(x, "x_T" if i == 0 else f"x[{i}]", step=i, kind="x_T" if i == 0 else "state",
                  sigma=sigma)
        x, sigma_hat = churn(x, i, sigma, eta, s_min=s_min, s_max=s_max, s_noise=s_noise,
                             step_noise=step_noise)
        x0 = D(x, sigma_hat, i)
        x_next = step(lambda xs, s, suffix, i=i: D(xs, s, i, suffix), x, x0, sigma_hat,
                      sigma_next, prev)
        prev = (x0, sigma_hat)
        if callback is not None:
            x_next = _called_back(callback, x_next, i, sigma, sigma_hat, sigma_next, x0)
        x = x_next
    x = probe(x, f"x[{n}]", step=n, kind="state", sigma=sig[n])
    return D(x, sig[n], n).to(in_dtype) if final_denoise else x.to(in_dtype)

"""Noise optimisation: Adam on z0 (and the step noises, where they are learnable) through the
sampler, for an objective, with gradient clipping and a norm regulariser that keeps z0 on the
Gaussian shell. The originating note's experiment is the ``diverge`` objective.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ConfigError, GradcheckError, InputError
from .checks import optimize_checks
from .records import OptimizeRecord, OptimizeResult

NORM_REGS = ("none", "chi", "renorm")


@dataclass
class Objective:
    """``loss(output) -> scalar`` to *minimise*; ``value`` is what is reported (its sign as the
    user thinks of it), ``direction`` says which way ``value`` should move."""

    name: str
    loss: Callable[[torch.Tensor], torch.Tensor]
    value: Callable[[torch.Tensor], torch.Tensor]
    direction: str  # "up" | "down"
    description: str
    extra: dict[str, Any] = field(default_factory=dict)


def parse_objective(spec: str, *, sampler, z0: torch.Tensor, classifier=None,
                    perturb: float = 1e-2, seed: int = 0,
                    start_noise: torch.Tensor | None = None,
                    like: torch.Tensor | None = None) -> tuple[Objective, torch.Tensor]:
    """``diverge`` | ``class:K`` | ``target:PATH``. Returns the objective and the starting z0
    (``diverge`` starts from a seeded perturbation of z0: at z0 itself the output equals the
    baseline and the gradient is exactly zero). ``start_noise`` replaces that seeded draw (a
    shard of the global one), ``like`` the shape a target image is broadcast to (the whole
    latent, where z0 is a slice of it)."""
    if spec == "diverge":
        with torch.no_grad():
            baseline = sampler(z0).detach()
        if start_noise is None:
            g = torch.Generator().manual_seed(seed + 7919)
            start_noise = torch.randn(z0.shape, generator=g, dtype=torch.float64).to(z0)
        start = z0 + perturb * start_noise

        def mse(out):
            return torch.nn.functional.mse_loss(out, baseline.to(out.dtype))

        return Objective("diverge", lambda out: -mse(out), mse, "up",
                         f"maximise MSE(output, baseline output of the starting z0); starts from "
                         f"z0 + {perturb:g} * seeded noise (at z0 itself the gradient is exactly "
                         f"zero)", {"perturb": perturb}), start
    if spec.startswith("class:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"objective {spec!r}: class must be a digit 0..9") from None
        if not 0 <= k <= 9:
            raise ConfigError(f"objective {spec!r}: class must be 0..9, got {k}")
        if classifier is None:
            raise ConfigError(f"objective {spec!r} needs the built-in digit classifier")

        def logp(out):
            return torch.log_softmax(classifier(out.to(next(classifier.parameters()).dtype)),
                                     dim=1)[:, k].mean()

        return Objective(f"class:{k}", lambda out: -logp(out), logp, "up",
                         f"maximise the classifier's log-probability of digit {k}",
                         {"class": k}), z0.clone()
    if spec.startswith("target:"):
        path = spec.split(":", 1)[1]
        target = load_image(path, like=z0 if like is None else like)

        def dist(out):
            return torch.nn.functional.mse_loss(out, target.to(out.dtype))

        return Objective("target", dist, dist, "down",
                         f"minimise MSE(output, image {path})", {"path": path}), z0.clone()
    raise ConfigError(f"unknown objective {spec!r}; use diverge, class:K or target:PATH")


def load_image(path: str, *, like: torch.Tensor) -> torch.Tensor:
    """A target image: .png (grayscale, scaled to [-1, 1]), .pt or .npy, shaped like one sample
    of ``like`` and broadcast over its batch."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".png":
            import matplotlib.image as mpimg
            import numpy as np

            arr = mpimg.imread(p)
            if arr.ndim == 3:
                arr = arr[..., :3].mean(axis=2)
            img = torch.from_numpy(np.asarray(arr, dtype="float64")) * 2 - 1
        elif p.suffix.lower() == ".npy":
            import numpy as np

            img = torch.from_numpy(np.load(p, allow_pickle=False)).double()
        else:
            img = torch.load(p, map_location="cpu", weights_only=True).double()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot load target image {path!r}: {type(exc).__name__}: {exc}") from None
    shape = tuple(like.shape[1:])
    if img.numel() != math.prod(shape):
        raise InputError(f"target image {path!r} has shape {tuple(img.shape)}, expected "
                         f"{math.prod(shape)} values like a sample {shape}")
    return img.reshape(1, *shape).expand(like.shape).to(like)


def chi_nll(z: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each sample's norm under chi(d): 0.5||z||^2 - (d-1) log||z||,
    summed over the batch (its minimum is at ||z|| = sqrt(d-1))."""
    d = z[0].numel()
    n = z.reshape(z.shape[0], -1).norm(dim=1)
    return (0.5 * n**2 - (d - 1) * n.log()).sum()


def check_options(*, iters: int, lr: float, clip: float | None, norm_reg: str,
                  chi_weight: float, perturb: float = 0.0) -> None:
    """Raise :class:`ConfigError` naming the first bad optimisation option (before any work)."""
    if norm_reg not in NORM_REGS:
        raise ConfigError(f"unknown norm regulariser {norm_reg!r}; choose one of "
                          f"{', '.join(NORM_REGS)}")
    if iters < 1:
        raise ConfigError(f"iters must be >= 1, got {iters}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be > 0 (and finite), got {lr}")
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ConfigError(f"clip must be > 0 (and finite), got {clip}")
    if not (math.isfinite(chi_weight) and chi_weight >= 0):
        raise ConfigError(f"chi-weight must be >= 0 (and finite: the weight of the chi "
                          f"penalty), got {chi_weight}")
    if not (math.isfinite(perturb) and perturb >= 0):
        raise ConfigError(f"perturb must be >= 0 (and finite), got {perturb}")


def run_optimize(sampler, z0: torch.Tensor, objective: Objective, *, iters: int = 50,
                 lr: float = 0.05, clip: float | None = None, norm_reg: str = "none",
                 chi_weight: float = 1.0, progress: bool = False,
                 sharding: Any = None) -> tuple[OptimizeResult, torch.Tensor]:
    """Adam on z0 (and on the step-noise leaves in ``independent_leaves``; in
    ``learnable_step_noise`` the step noises are functions of z0, so optimising z0 optimises
    them). Returns the result and the final z0.

    ``sharding`` (a :class:`gradcheck.distributed.Sharding`): z0 is this rank's shard; the
    objective, the clipping norm, the chi term and the reported numbers are global, so every rank
    takes the step the single-process optimisation of the whole z0 would take."""
    check_options(iters=iters, lr=lr, clip=clip, norm_reg=norm_reg, chi_weight=chi_weight)
    z = z0.detach().clone().requires_grad_(True)
    sh = sharding
    d = z[0].numel() if sh is None or not sh.replicated else int(sh.sum(float(z[0].numel())))

    def sample_norms(t: torch.Tensor) -> torch.Tensor:
        return t.detach().reshape(t.shape[0], -1).norm(dim=1) if sh is None else \
            sh.sample_norms(t)

    norm0 = sample_norms(z)  # [B]
    with torch.no_grad():  # create any step-noise leaves before building the optimiser
        sampler(z.detach())
    params = [z] + [leaf for leaf in getattr(sampler, "leaves", [])]
    opt = torch.optim.Adam(params, lr=lr)
    values, losses, gnorms, znorms = [], [], [], []
    it = range(iters + 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=iters, desc=f"optimize {objective.name}", unit="it", leave=False)
    t0 = time.perf_counter()
    for k in it:
        out = sampler(z)
        if k == 0:
            _refuse_cut(out)
        total, value, loss, znorm = _objective_terms(out, z, objective, sh, norm_reg,
                                                     chi_weight, sample_norms)
        values.append(value)
        losses.append(loss)
        znorms.append(znorm)
        if k == iters:
            break
        opt.zero_grad(set_to_none=True)
        total.backward()
        gn = _clip_grads(params, clip, sh)
        gnorms.append(gn)
        opt.step()
        if norm_reg == "renorm":
            with torch.no_grad():
                n = sample_norms(z)
                z.mul_((norm0 / n).reshape(-1, *([1] * (z.ndim - 1))))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(value=f"{values[-1]:.4g}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(z).all())
    if sh is not None:
        finite = sh.all(finite)
    res = OptimizeResult(
        objective=objective.name, description=objective.description,
        direction=objective.direction, iters=iters, lr=lr, clip=clip, norm_reg=norm_reg,
        mode=getattr(sampler, "mode", "default"), values=values, losses=losses,
        grad_norms=gnorms, z_norms=znorms, sqrt_d=math.sqrt(d), z_finite=finite,
        seconds=seconds, extra=dict(objective.extra),
        batch=z.shape[0] if sh is None or sh.replicated else int(sh.sum(float(z.shape[0]))),
    )
    res.checks = optimize_checks(res)
    return res, z.detach()


def _refuse_cut(out: torch.Tensor) -> None:
    """Refuse to optimise an objective whose gradient cannot reach z0 (the sampler's output
    does not require grad): the z0 regulariser alone would move z0, and a 'diverge' objective
    would rise for that reason only, a false success."""
    if not out.requires_grad:
        raise GradcheckError(
            "the objective's gradient cannot reach z0: the sampler's output does not require "
            "grad (a @torch.no_grad() entry point or a cut inside; --allow-grad looks past the "
            "decorators, gradcheck run locates the cut)")


def _objective_terms(out: torch.Tensor, z: torch.Tensor, objective: Objective, sh: Any,
                     norm_reg: str, chi_weight: float, sample_norms: Callable[..., torch.Tensor]
                     ) -> tuple[torch.Tensor, float, float, float]:
    """(what is minimised, the objective's value, its loss, the mean |z| per sample): global
    numbers on every rank of a sharded run, the part to differentiate this rank's."""
    if sh is None:
        value, loss = objective.value(out), objective.loss(out)
        total = loss + chi_weight * chi_nll(z) if norm_reg == "chi" else loss
        return (total, float(value.detach()), float(loss.detach()),
                float(sample_norms(z).mean()))
    full = sh.full(out)
    value, loss = objective.value(full), objective.loss(full)
    total = sh.part(loss)
    if norm_reg == "chi":
        chi = chi_nll(sh.full(z))
        total = total + chi_weight * (sh.part(chi) if sh.replicated else chi)
    return (total, sh.value(float(value.detach())), sh.value(float(loss.detach())),
            sh.mean_norm(z))


def _clip_grads(params: list[torch.Tensor], clip: float | None, sh: Any) -> float:
    """The gradient norm (global in a sharded run), gradients clipped to ``clip`` with the same
    factor on every rank."""
    if sh is None:
        return float(torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf")))
    local = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)
    gn = sh.sum(local) ** 0.5
    if clip and gn > clip:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(clip / (gn + 1e-6))
    return gn


def optimize_record(config: dict[str, Any], environment: dict[str, Any], res: OptimizeResult,
                    shape: tuple[int, ...], before: torch.Tensor, after: torch.Tensor, *,
                    classifier: Any = None) -> OptimizeRecord:
    """The record of an optimisation (``optimize.json``): the result, the outputs before and
    after (flattened per sample), and the classifier's labels and class hits where there is one."""

    def labels(x: torch.Tensor) -> list[list[float]] | None:
        if classifier is None:
            return None
        p = classifier(x.clamp(-1, 1)).softmax(1)
        conf, k = p.max(1)
        return [[int(a), round(float(b), 4)] for a, b in zip(k, conf)]

    def flat(x: torch.Tensor) -> list[list[float]]:
        return [[round(v, 4) for v in row] for row in
                x.detach().double().cpu().reshape(x.shape[0], -1).tolist()]

    rec = OptimizeRecord(config=config, environment=environment, result=res,
                         sample_shape=list(shape), samples_before=flat(before),
                         samples_after=flat(after), labels_before=labels(before),
                         labels_after=labels(after))
    if "class" in res.extra and rec.labels_after:
        k = res.extra["class"]
        rec.class_hits = sum(lab == k for lab, _ in rec.labels_after)
        rec.class_hits_before = sum(lab == k for lab, _ in rec.labels_before)
    return rec

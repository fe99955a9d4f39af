"""``gradcheck optimize`` as a configuration and a run: :class:`OptimizeConfig` is validated once;
:func:`run` builds the denoiser, the classifier, z0, the sampler (one process, or this rank's shard
of a process group) and the objective, optimises (:func:`gradcheck.optimizing.run_optimize`) and
returns the record. The command line only turns options into a config and the record into files
and lines."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from . import distributed, modes
from .errors import ConfigError
from .optimizing import Objective, check_options, optimize_record, parse_objective, run_optimize
from .records import OptimizeRecord
from .runner import DTYPES, environment, load_denoiser, resolve_device
from .sampling import BUILTIN_SHAPES, ResSampler, SamplerConfig


@dataclass
class OptimizeConfig:
    """What ``gradcheck optimize`` runs (its options; the defaults are the command's)."""

    objective: str = "diverge"
    iters: int = 50
    lr: float = 0.1
    clip: float | None = None
    norm_reg: str = "chi"
    chi_weight: float = 1.0
    perturb: float = 1e-2
    mode: str = "default"
    denoiser: str = "digits"
    solver: str = "2ab"
    steps: int = 20
    batch: int = 8
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    checkpoint: bool = False
    nproc: int = 1
    parallel: str = "ddp"
    dist_timeout: float = 120.0
    progress: bool = True
    sampler_spec: str | None = None  # package.module:fn (or :factory), a sampler of the user's
    convention: str = "auto"  # how it is called: auto, kdiffusion, function, cosmos
    allow_grad: bool = False  # neutralise its grad-disabling sites (gradcheck.allow)
    unwrap: bool = False  # run inspect.unwrap of a @torch.no_grad()-decorated sampler

    def validate(self) -> OptimizeConfig:
        check_options(iters=self.iters, lr=self.lr, clip=self.clip, norm_reg=self.norm_reg,
                      chi_weight=self.chi_weight, perturb=self.perturb)
        if self.mode not in modes.BUILTIN_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of "
                              f"{', '.join(modes.BUILTIN_MODES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        distributed.check_options(self.nproc, self.parallel, self.batch, self.dist_timeout)
        if self.nproc > 1 and self.checkpoint:
            raise ConfigError("--nproc runs without --checkpoint")
        if self.convention not in CONVENTIONS:
            raise ConfigError(f"unknown convention {self.convention!r}; choose one of "
                              f"{', '.join(CONVENTIONS)}")
        if self.convention != "auto" and not self.sampler_spec:
            raise ConfigError(f"--convention {self.convention} applies to --sampler (the "
                              f"built-in sampler has its own)")
        if self.sampler_spec and self.nproc > 1:
            raise ConfigError("--sampler runs in one process (--nproc 1)")
        self.sampler_config()
        resolve_device(self.device)
        return self

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(solver=self.solver, steps=self.steps,
                             checkpoint=self.checkpoint).validate()

    def recorded(self) -> dict[str, Any]:
        """The configuration as optimize.json records it."""
        keep = ("objective", "iters", "lr", "clip", "norm_reg", "chi_weight", "perturb", "mode",
                "denoiser", "batch", "seed", "dtype", "device")
        d = asdict(self)
        own = {k: d[k] for k in ("sampler_spec", "convention", "allow_grad", "unwrap")} \
            if self.sampler_spec else {}
        return {**{k: d[k] for k in keep}, "sampler": self.sampler_config().to_dict(), **own}


#: --convention of gradcheck optimize --sampler
CONVENTIONS = ("auto", "kdiffusion", "function", "cosmos")


def user_sampler(cfg: OptimizeConfig, den: Any, dtype: torch.dtype) -> Any:
    """``--sampler``: the user's sampler as ``z0 -> output`` through its adapter (as ``gradcheck
    run`` builds it), its grad-disabling sites neutralised with ``allow_grad``."""
    from . import adapters
    from .runner import RunConfig, load_sampler, user_sampler as adapted

    fn = load_sampler(cfg.sampler_spec)
    if cfg.convention == "kdiffusion" and not adapters.is_kdiffusion(fn):
        raise ConfigError(f"--convention kdiffusion: {cfg.sampler_spec} does not take "
                          f"(model, x, sigmas, ...)")
    if cfg.convention == "function":
        sampler = adapters.function(fn, den, unwrap=cfg.unwrap, seed=cfg.seed,
                                    noise=modes.MODES[cfg.mode].adapter_noise)
    else:
        rc = RunConfig(sampler=cfg.sampler_config(), sampler_spec=cfg.sampler_spec,
                       unwrap=cfg.unwrap, seed=cfg.seed,
                       convention="cosmos" if cfg.convention == "cosmos" else "auto")
        sampler = adapted(rc, fn, den, cfg.mode, dtype)
    if cfg.allow_grad:
        from .allow import Allowing

        sampler = Allowing(sampler)
    return sampler


@dataclass
class Outcome:
    """What :func:`run` gives back: the record (rank 0 only) and the objective."""

    record: OptimizeRecord | None
    objective: Objective


def _sampler_and_start(cfg: OptimizeConfig, den: Any, z0: torch.Tensor, clf: Any, ctx: Any
                       ) -> tuple[Any, Objective, torch.Tensor, Any, Callable[..., Any]]:
    """(the sampler, the objective, the starting z0, the sharding or None, the whole batch's
    output of a z0): in one process, or this rank's shard of the global problem."""
    sc = cfg.sampler_config()
    if ctx is None:
        sampler = user_sampler(cfg, den, z0.dtype) if cfg.sampler_spec else \
            ResSampler(den, sc, mode=cfg.mode, seed=cfg.seed)
        objective, start = parse_objective(cfg.objective, sampler=sampler, z0=z0, classifier=clf,
                                           perturb=cfg.perturb, seed=cfg.seed)
        return sampler, objective, start, None, sampler
    # every rank optimises its shard; the objective and the step are the global ones
    sampler = distributed.parallel_sampler(den, sc, cfg.mode, cfg.seed, cfg.parallel, ctx)
    sharding = distributed.Sharding(ctx, sampler.shard_dim)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    noise = torch.randn(z0.shape, generator=gen, dtype=torch.float64).to(z0)
    objective, start = parse_objective(
        cfg.objective, sampler=lambda z: sharding.full(sampler(z)),
        z0=distributed.shard(z0, sampler.shard_dim, ctx), classifier=clf, perturb=cfg.perturb,
        seed=cfg.seed, start_noise=distributed.shard(noise, sampler.shard_dim, ctx),
        like=z0 if sharding.replicated else None)

    def full_out(z: torch.Tensor) -> torch.Tensor:
        out = sharding.full(sampler(z))
        if sharding.replicated:
            return out
        parts = ctx.gather(out.detach().cpu())  # rank 0: the whole batch
        return torch.cat(parts) if parts is not None else out

    return sampler, objective, start, sharding, full_out


def run(cfg: OptimizeConfig, ctx: Any = None) -> Outcome:
    """Optimise z0 as ``cfg`` says (``ctx``: this process's place in a process group, or None);
    the record is rank 0's."""
    dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
    rank = ctx.rank if ctx is not None else 0
    den, shape = load_denoiser(cfg.denoiser, seed=cfg.seed, dtype=dtype, device=device)
    shape = shape or BUILTIN_SHAPES["digits"]
    clf = None
    if cfg.denoiser in ("digits", "conv") or cfg.objective.startswith("class:"):
        from .models import load_classifier

        clf = load_classifier(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(cfg.seed)
    z0 = torch.randn((cfg.batch, *shape), generator=g, dtype=torch.float64).to(device, dtype)
    sampler, objective, start, sharding, full_out = _sampler_and_start(cfg, den, z0, clf, ctx)
    with torch.no_grad():
        before = full_out(start)
    res, z_final = run_optimize(sampler, start, objective, iters=cfg.iters, lr=cfg.lr,
                                clip=cfg.clip, norm_reg=cfg.norm_reg, chi_weight=cfg.chi_weight,
                                progress=cfg.progress and rank == 0, sharding=sharding)
    with torch.no_grad():
        after = full_out(z_final)
    if rank != 0:
        return Outcome(None, objective)
    rec = optimize_record(cfg.recorded(), environment(cfg.dtype, device), res, shape, before,
                          after, classifier=clf)
    return Outcome(rec, objective)


def lines(rec: OptimizeRecord, objective: Objective, batch: int) -> list[str]:
    """What the command prints about an optimisation (its checks as PASS / FAIL / WARN)."""
    res = rec.result
    out = [f"optimize {res.objective} ({objective.description})",
           f"  {res.objective}: {res.values[0]:.6g} -> {res.values[-1]:.6g} in {res.iters} "
           f"iterations ({res.seconds:.1f} s), mode {res.mode}, lr {res.lr:g}"
           + (f", clip {res.clip:g}" if res.clip else "") + f", norm-reg {res.norm_reg}"]
    if rec.class_hits is not None:
        out.append(f"  classified as {res.extra['class']}: {rec.class_hits_before} -> "
                   f"{rec.class_hits} of {batch}")
    for c in res.checks:
        tag = "WARN" if c.level == "warning" else ("PASS" if c.passed else "FAIL")
        out.append(f"  {tag}  {c.name}: {c.message}")
    return out


def optimize(sample_fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *,
             objective: str | Callable[[torch.Tensor], torch.Tensor] = "diverge",
             iters: int = 50, lr: float = 0.05, clip: float | None = None,
             norm_reg: str = "chi", chi_weight: float = 1.0, perturb: float = 1e-2,
             seed: int = 0, progress: bool = False) -> tuple[Any, torch.Tensor]:
    """Optimise the initial noise of *your* sampler: Adam on z0 (and on its step-noise leaves,
    where it has ``.leaves``) through ``sample_fn`` (an adapted sampler or any ``z0 -> output``).

    ``objective``: ``"diverge"`` (the originating note's experiment: maximise MSE(output, the
    output at the starting z0), starting from ``z0 + perturb * seeded noise``), ``"class:K"``
    (the built-in digit classifier), ``"target:PATH"``, or a callable ``output -> scalar`` to
    *maximise*. ``norm_reg`` keeps z0 on the Gaussian shell (``chi``, ``renorm`` or ``none``).
    Returns (an :class:`~gradcheck.records.OptimizeResult` with the objective curve and the
    checks, ``z0_plausible`` among them; the final z0).
    """
    if callable(objective):
        f = objective
        obj = Objective(getattr(f, "__name__", "custom"), lambda out: -f(out), f, "up",
                        f"maximise {getattr(f, '__qualname__', 'the objective')}(output)")
        start = z0.detach().clone()
    else:
        clf = None
        if objective.startswith("class:"):
            from .models import load_classifier

            clf = load_classifier(dtype=z0.dtype, device=z0.device)
        obj, start = parse_objective(objective, sampler=sample_fn, z0=z0.detach(),
                                     classifier=clf, perturb=perturb, seed=seed)
    return run_optimize(sample_fn, start, obj, iters=iters, lr=lr, clip=clip,
                        norm_reg=norm_reg, chi_weight=chi_weight, progress=progress)
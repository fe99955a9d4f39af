"""``gradcheck run`` as a function: build the denoiser and z0, diagnose each mode, collect a RunRecord."""
from __future__ import annotations

import importlib
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .diagnosis import diagnose, validate_z0
from .errors import ConfigError, DenoiserError, InputError
from .records import RunRecord
from . import progress
from .modes import BOTH, BUILTIN_MODES, MODES
from .sampling import BUILTIN_SHAPES, ResSampler, SamplerConfig, build_denoiser

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass
class RunConfig:
    """Everything ``gradcheck run`` needs; defaults are the CLI's."""

    modes: list[str] = field(default_factory=lambda: list(BOTH))
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=4))
    denoiser: str = "digits"
    nproc: int = 1  # processes (torch.distributed); > 1 needs parallel
    parallel: str = "ddp"  # ddp, fsdp or cp (with nproc > 1)
    dist_timeout: float = 120.0  # seconds any collective may wait (a dead rank fails, not hangs)
    sampler_spec: str | None = None  # package.module:fn, a sampler of the user's own
    unwrap: bool = False  # run inspect.unwrap of a @torch.no_grad()-decorated sampler
    allow_grad: bool = False  # neutralise the sampler's grad-disabling sites (gradcheck.allow)
    convention: str = "auto"  # --sampler's calling convention: auto (k-diffusion or fn), cosmos
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"
    batch: int = 2
    shape: tuple[int, ...] | None = None
    z0_path: str | None = None
    numeric: bool = True
    optim_steps: int | None = None  # None: as the checks level says
    checks: str = "default"
    threads: int | None = None  # torch CPU threads; None: 1 for the tiny built-in models
    lr: float = 1e-2
    locate: str = "auto"
    op_detail: str = "auto"
    grad_weights: bool = False
    vanishing_rel: float = 1e-8
    exploding_ratio: float = 1e4

    def validate(self) -> RunConfig:
        for m in self.modes:
            if m not in BUILTIN_MODES:
                raise ConfigError(
                    f"unknown mode {m!r}; choose one of {', '.join(BUILTIN_MODES)} or both"
                )
        if not self.modes:
            raise ConfigError("no mode given")
        self.sampler.validate()
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch!r}")
        if self.shape is not None and (not self.shape or any(d < 1 for d in self.shape)):
            raise ConfigError(f"shape must be positive sizes like 1,8,8, got {self.shape!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads!r}")
        if self.checks not in ("quick", "default", "full"):
            raise ConfigError(f"checks must be quick, default or full, got {self.checks!r}")
        if self.optim_steps is not None and self.optim_steps < 0:
            raise ConfigError(f"optim_steps must be >= 0, got {self.optim_steps!r}")
        if not (self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.locate not in ("auto", "always", "never"):
            raise ConfigError(f"locate must be auto, always or never, got {self.locate!r}")
        if self.op_detail not in ("auto", "always", "never"):
            raise ConfigError(f"op_detail must be auto, always or never, got {self.op_detail!r}")
        if not (0 < self.vanishing_rel < 1):
            raise ConfigError(f"vanishing threshold must be in (0, 1), got {self.vanishing_rel!r}")
        if not (self.exploding_ratio > 1):
            raise ConfigError(f"exploding ratio must be > 1, got {self.exploding_ratio!r}")
        if self.sampler_spec and (self.sampler.truncate is not None or self.sampler.checkpoint):
            raise ConfigError("--truncate and --checkpoint apply to the built-in sampler, not to "
                              f"--sampler {self.sampler_spec}")
        if self.nproc > 1 and (self.sampler_spec or self.sampler.truncate is not None
                               or self.sampler.checkpoint):
            raise ConfigError("--nproc runs the built-in sampler without --sampler, "
                              "--truncate or --checkpoint")
        from .distributed import check_options

        check_options(self.nproc, self.parallel, None if self.z0_path else self.batch,
                      self.dist_timeout)
        if self.unwrap and not self.sampler_spec:
            raise ConfigError("--unwrap applies to --sampler (the built-in sampler is not "
                              "decorated)")
        if self.convention not in ("auto", "cosmos"):
            raise ConfigError(f"unknown convention {self.convention!r}: auto or cosmos")
        if self.convention != "auto" and not self.sampler_spec:
            raise ConfigError(f"--convention {self.convention} applies to --sampler (the "
                              f"built-in sampler has its own)")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler"] = self.sampler.to_dict()
        d["shape"] = list(self.shape) if self.shape else None
        return d


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def import_object(spec: str, what: str, error: type[Exception] = ConfigError) -> Any:
    """``package.module:attr.attr``, imported (which executes the module's code) from
    ``sys.path`` as it is: the working directory is not added, so a folder there named like an
    installed package (``./diffusers/``) cannot replace it. The CLI's ``--path DIR`` appends
    directories to search."""
    from .gradmode import watch_grad_mode

    watch_grad_mode()  # a module that switches grad mode off at import: its line is named
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise error(f"{what} {spec!r} is not of the form package.module:name")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's bad input
        hint = (" (the working directory is not searched: add --path DIR)"
                if isinstance(exc, ModuleNotFoundError) else "")
        raise error(f"cannot import {what} {spec!r}: {type(exc).__name__}: {exc}{hint}") from exc
    return obj


def user_sampler(cfg: RunConfig, fn: Callable[..., Any], den: Callable[..., Any], mode: str,
                 dtype: torch.dtype):
    """``--sampler package.module:fn`` as a diagnosable ``z0 -> output``: a k-diffusion-convention
    function ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, ...)`` gets the
    run's Karras sigmas (with k-diffusion's final 0) and, if it takes a ``noise_sampler``, the
    mode's step noise (default: its own); any other function is called as ``fn(denoiser, z0)``."""
    from . import adapters

    if cfg.convention == "cosmos":  # fn is a factory (a class): its instance, called unmodified
        try:
            obj = fn()
        except TypeError as exc:
            raise ConfigError(f"--convention cosmos: {getattr(fn, '__qualname__', fn)!r} must "
                              f"be a factory taking no arguments (a Sampler class): {exc}") \
                from exc
        sc = cfg.sampler
        return adapters.cosmos(obj, den, num_steps=sc.steps, sigma_min=sc.sigma_min,
                               sigma_max=sc.sigma_max, rho=sc.rho, S_churn=sc.churn_for(mode),
                               S_min=sc.s_min, S_max=sc.s_max, S_noise=sc.s_noise,
                               solver_option=sc.solver, noise=MODES[mode].adapter_noise,
                               seed=cfg.seed)
    if adapters.is_kdiffusion(fn):
        sig = cfg.sampler.sigmas()
        sigmas = torch.cat([sig, sig.new_zeros(1)]).to(dtype)
        return adapters.kdiffusion(fn, den, sigmas, noise=MODES[mode].adapter_noise,
                                   unwrap=cfg.unwrap, seed=cfg.seed)
    return adapters.function(fn, den, unwrap=cfg.unwrap, noise=MODES[mode].adapter_noise,
                             seed=cfg.seed)


def load_sampler(spec: str) -> Callable[..., Any]:
    """``--sampler package.module:fn``: the user's sampler function."""
    fn = import_object(spec, "sampler")
    if not callable(fn):
        raise ConfigError(f"sampler {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def user_modes(cfg: RunConfig, fn: Callable[..., Any]) -> list[str]:
    """The modes a user sampler can run: a k-diffusion-convention sampler that takes a
    noise_sampler is handed the mode's step noise; a Cosmos-convention one (with S_churn > 0)
    and a plain function get their own randn_like/randn draws made the mode's step noise
    (:mod:`gradcheck.draws`). ``both`` falls back to ``default`` where there is no step noise
    to make (a Cosmos sampler at S_churn = 0, a k-diffusion sampler without a noise_sampler, a
    plain function, which may draw nothing)."""
    from . import adapters

    both = cfg.modes == list(BOTH)
    if cfg.convention == "cosmos":  # S_churn: --s-churn, or the step-noise modes' default
        noisy = [m for m in cfg.modes if MODES[m].step_noise != "none"]
        if noisy and cfg.sampler.churn_for(noisy[0]) <= 0:
            if both:
                return ["default"]
            raise ConfigError(f"--mode {noisy[0]} with --convention cosmos needs --s-churn > 0: "
                              f"at S_churn = 0 the churn draw is multiplied by zero")
        return list(cfg.modes)
    kdiff = adapters.is_kdiffusion(fn)
    if kdiff and adapters.takes_noise_sampler(fn):
        return list(cfg.modes)
    if both:
        return ["default"]
    bad = [m for m in cfg.modes if m != "default"]
    if bad and kdiff:
        raise ConfigError(f"--mode {bad[0]} needs a k-diffusion sampler that takes a "
                          f"noise_sampler; {cfg.sampler_spec} does not")
    return list(cfg.modes)


def load_denoiser(spec: str, *, seed: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[Callable[..., Any], tuple[int, ...] | None]:
    """A built-in name, or ``package.module:factory`` (called with no arguments).

    Returns the denoiser and the sample shape it expects (from BUILTIN_SHAPES, or the factory
    result's ``sample_shape`` attribute), if known.
    """
    if ":" not in spec:
        return build_denoiser(spec, seed=seed, dtype=dtype, device=device), BUILTIN_SHAPES.get(spec)
    factory = import_object(spec, "denoiser", DenoiserError)
    try:
        den = factory()
    except Exception as exc:  # noqa: BLE001
        raise DenoiserError(f"denoiser factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not callable(den):
        raise DenoiserError(f"denoiser factory {spec!r} returned {type(den).__name__}, not a callable")
    if isinstance(den, torch.nn.Module):
        den = den.to(device=device, dtype=dtype)
    shape = getattr(den, "sample_shape", None)
    return den, tuple(shape) if shape else None


#: Built-in denoisers whose network fixes the layout of a sample (channels first, 2-d images);
#: the Gaussian one takes any shape.
_FIXED_LAYOUT = {"digits", "conv"}


def check_sample_shape(cfg: RunConfig, shape: tuple[int, ...],
                       expected: tuple[int, ...] | None) -> None:
    """z0's per-sample ``shape`` against what the denoiser takes (a built-in network's layout, or
    a factory result's ``sample_shape``): the same number of dimensions and channels, or a
    one-line error naming both, before anything runs."""
    if expected is None or (":" not in cfg.denoiser and cfg.denoiser not in _FIXED_LAYOUT):
        return
    if len(shape) == len(expected) and shape[0] == expected[0]:
        return
    given = (f"--z0 {cfg.z0_path}" if cfg.z0_path else
             f"--shape {','.join(map(str, cfg.shape))}" if cfg.shape else "z0")
    layout = "C,H,W" if len(expected) == 3 else ("C,T,H,W" if len(expected) == 4 else "")
    raise ConfigError(f"{given} gives samples of shape {shape}, but denoiser {cfg.denoiser!r} "
                      f"takes samples of shape {expected}" + (f" ({layout})" if layout else ""))


def load_z0(path: str, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """z0 from a ``.pt`` (a tensor, loaded with weights_only) or ``.npy`` file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"cannot load z0 from {path!r}: no such file")
    try:
        if p.suffix == ".npy":
            import numpy as np

            z = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            z = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise InputError(f"cannot load z0 from {path!r}: it is not a tensor saved with "
                         f"torch.save (.pt) or numpy.save (.npy) "
                         f"({type(exc).__name__}: {first})") from exc
    if not isinstance(z, torch.Tensor):
        raise InputError(f"z0 file {path!r} holds {type(z).__name__}, expected a tensor")
    return validate_z0(z).to(device=device, dtype=dtype)


def environment(dtype: str, device: torch.device) -> dict[str, Any]:
    env = {
        "gradcheck": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else (platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype,
    }
    return env


def compare_truncation(rep, den, cfg: RunConfig, mode: str, z0: torch.Tensor) -> dict[str, Any]:
    """What truncated backprop does to dL/dz0: the truncated gradient (from the diagnosis)
    against the full one of the same loss and seed."""
    from dataclasses import replace

    from .rng import seeded

    full = ResSampler(den, replace(cfg.sampler, truncate=None), mode=mode, seed=cfg.seed)
    z = z0.detach().clone().requires_grad_(True)
    with seeded(cfg.seed, z.device):
        loss = rep.handles["loss_of"](full(z))
    (g_full,) = torch.autograd.grad(loss, [z])
    g_tr = rep.handles.get("z0_grad")
    k, kind = cfg.sampler.truncate, cfg.sampler.truncate_kind
    d: dict[str, Any] = {"k": k, "kind": kind, "full_norm": float(g_full.norm())}
    if g_tr is None or not bool((g_tr != 0).any()):
        d.update(cosine=None, norm_ratio=0.0, truncated_norm=0.0,
                 effect=(f"truncate {k} ({kind}): z0 receives "
                         f"{'no gradient (None)' if g_tr is None else 'an exactly zero gradient'}"
                         f"; the full gradient has norm {float(g_full.norm()):.3g}"))
    else:
        cos = float(torch.nn.functional.cosine_similarity(g_tr.flatten().double(),
                                                          g_full.flatten().double(), dim=0))
        ratio = float(g_tr.norm() / g_full.norm())
        d.update(cosine=cos, norm_ratio=ratio, truncated_norm=float(g_tr.norm()),
                 effect=(f"truncate {k} ({kind}): z0 receives a biased gradient: cosine "
                         f"similarity {cos:.4f} to the full gradient, norm ratio {ratio:.3g}"))
    return d


#: built-in denoisers whose ops are so small that one CPU thread is fastest: a 35-step run took
#: 6 s with 1 thread and 85 s with torch's default 2 on a busy 2-core machine
TINY_BUILTINS = ("digits", "conv", "gaussian")


def run(cfg: RunConfig, *, raw_graph_cap: int = 600, keep_raw_graph: bool = False) -> RunRecord:
    """Diagnose the built-in (or the given) sampler in every mode of ``cfg``.

    ``raw_graph_cap`` and ``keep_raw_graph`` are passed to :func:`gradcheck.diagnose`; the live
    reports (with their transient handles) stay reachable as ``record.modes[m]``.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    threads = cfg.threads
    if threads is None and device.type == "cpu" and cfg.denoiser in TINY_BUILTINS and \
            not cfg.sampler_spec:
        threads = 1  # ops of a few microseconds: more threads only fight on a shared machine
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(cfg, raw_graph_cap=raw_graph_cap, keep_raw_graph=keep_raw_graph)
    finally:  # the caller's process keeps its own setting
        torch.set_num_threads(before)


def _run(cfg: RunConfig, *, raw_graph_cap: int, keep_raw_graph: bool) -> RunRecord:
    dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
    ctx = None
    if cfg.nproc > 1:  # first: it picks this rank's GPU before anything is put on one
        from . import distributed

        ctx = distributed.init_from_env(cfg.dist_timeout, device)
        if ctx.world != cfg.nproc:
            raise ConfigError(f"--nproc {cfg.nproc} but the process group has {ctx.world}")
    den, default_shape = load_denoiser(cfg.denoiser, seed=cfg.seed, dtype=dtype, device=device)
    if cfg.z0_path:
        z0 = load_z0(cfg.z0_path, dtype=dtype, device=device)
    else:
        shape = cfg.shape or default_shape
        if shape is None:
            raise ConfigError(
                f"denoiser {cfg.denoiser!r} does not say its sample shape: pass --shape C,H,W "
                f"or give the factory's result a sample_shape attribute"
            )
        g = torch.Generator().manual_seed(cfg.seed)
        z0 = torch.randn((cfg.batch, *shape), generator=g, dtype=torch.float64)
        z0 = z0.to(device=device, dtype=dtype)  # [B, C, H, W]
    check_sample_shape(cfg, tuple(z0.shape[1:]), default_shape)
    modes = {}
    user_fn = load_sampler(cfg.sampler_spec) if cfg.sampler_spec else None
    run_modes = user_modes(cfg, user_fn) if user_fn else cfg.modes
    description = None
    for mode in run_modes:
        progress.event("mode", mode)
        z_in = z0
        if ctx is not None:
            # a fresh denoiser per mode: DDP and fully_shard take the module over
            den_m, _ = load_denoiser(cfg.denoiser, seed=cfg.seed, dtype=dtype, device=device)
            sampler = distributed.parallel_sampler(den_m, cfg.sampler, mode, cfg.seed,
                                                   cfg.parallel, ctx)
            z_in = distributed.shard(z0, sampler.shard_dim, ctx)
        elif user_fn is not None:
            sampler = user_sampler(cfg, user_fn, den, mode, dtype)
            description = sampler.description
        else:
            sampler = ResSampler(den, cfg.sampler, mode=mode, seed=cfg.seed)
        rep = diagnose(sampler, z_in, mode=sampler.mode, seed=cfg.seed,
                                     numeric=cfg.numeric, optim_steps=cfg.optim_steps,
                                     checks=cfg.checks,
                                     lr=cfg.lr, raw_graph_cap=raw_graph_cap,
                                     keep_raw_graph=keep_raw_graph, locate=cfg.locate,
                                     vanishing_rel=cfg.vanishing_rel,
                                     exploding_ratio=cfg.exploding_ratio,
                                     allow_grad=cfg.allow_grad, op_detail=cfg.op_detail,
                                     grad_weights=cfg.grad_weights)
        # one name everywhere (terminal, page, verdict, report.json keys, file names): the mode
        # the sampler was diagnosed in ("custom" for a sampler of the user's own)
        modes[rep.mode if rep.mode not in modes else mode] = rep
        if cfg.sampler.truncate is not None:
            rep.truncation = compare_truncation(rep, den, cfg, mode, z0)
    config = cfg.to_dict()
    config["z0_shape"] = list(z0.shape)
    config["sigmas"] = cfg.sampler.sigmas().tolist()
    config["s_churn_by_mode"] = {m: cfg.sampler.churn_for(m) for m in cfg.modes}
    if ctx is not None:
        config["rank"] = ctx.rank
    if cfg.sampler_spec:
        config["sampler_description"] = description
        config["modes"] = list(modes)
        del config["s_churn_by_mode"]
    return RunRecord(config=config, environment=environment(cfg.dtype, device), modes=modes)

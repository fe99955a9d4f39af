"""Diagnose samplers written for other libraries, unmodified: each adapter turns one into a
``z0 -> output`` function for :func:`gradcheck.diagnose`, with its denoiser instrumented (steps
numbered by denoiser call) and its state probed where the convention exposes it.

    from gradcheck import adapters, diagnose

    fn = adapters.kdiffusion(sample_euler_ancestral, model, sigmas, noise="learnable")
    fn = adapters.diffusers_loop(unet, DDIMScheduler(...), steps=20)
    fn = adapters.diffusers_pipeline(pipe, num_inference_steps=20)
    report = diagnose(fn, z0)

A sampler or pipeline whose entry point is decorated with ``@torch.no_grad()`` (13 of
k-diffusion's samplers, every diffusers pipeline's ``__call__``) cannot pass a gradient; the
diagnosis names the decorated function, and ``unwrap=True`` (``gradcheck run --unwrap``) runs
``inspect.unwrap`` of it instead. (``pipe.__call__ = pipe.__call__.__wrapped__`` does not work:
``pipe(...)`` looks ``__call__`` up on the type.)
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .errors import ConfigError, GradcheckError
from .modes import NOISE_TO_MODE
from .denoiser_calls import instrument, output_tensor
from .adapted import AdaptedSampler  # noqa: F401 - public here too
from .draws import draw_replacer
from .probes import probe
from .torch_internals import grad_decorator, grad_decorators  # noqa: F401 - public here too
from .sampling.noise import StepNoiseSource

#: noise= choices for samplers that take a noise_sampler, and the diagnosis mode each one is
#: (the mode registry's adapter_noise column, read backwards)
NOISE_CHOICES = NOISE_TO_MODE

def unwrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``inspect.unwrap(fn)`` if a grad-disabling decorator is in its chain, else ``fn``."""
    return inspect.unwrap(fn) if grad_decorators(fn) else fn


def _accepts(fn: Callable[..., Any], name: str, var_keyword: bool = True) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (or, with ``var_keyword``, any via ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (var_keyword and
                              any(p.kind is p.VAR_KEYWORD for p in params.values()))


def _decorator_notes(fn: Any, label: str, unwrap: bool, flag: str) -> tuple[list[str], str]:
    decs = grad_decorators(fn)
    if not decs:
        return [], ""
    said = ", ".join(f"{d} on {name}" for d, name in decs)
    if unwrap:
        return [f"{label} is decorated ({said}); diagnosed inspect.unwrap of it instead"], \
            " (unwrapped)"
    return [f"{label} is decorated ({said}): no gradient can leave it. Pass {flag} to diagnose "
            f"inspect.unwrap of it, the function without the decorator"], ""


def _entry(fn: Callable[..., Any], label: str, unwrap: bool) -> tuple[Callable[..., Any],
                                                                     list[str], str]:
    """What an adapter calls (``fn``, or ``inspect.unwrap(fn)`` with ``unwrap`` where a
    grad-disabling decorator wraps it), the report's notes about that decorator, and the
    description's tag."""
    notes, tag = _decorator_notes(fn, label, unwrap, "unwrap=True (CLI: --unwrap)")
    return (unwrapped(fn) if unwrap else fn), notes, tag


# -- k-diffusion ---------------------------------------------------------------------------------

def _check_kdiffusion(sampler: Any, sigmas: Any, noise: str) -> None:
    if not callable(sampler):
        raise ConfigError(f"sampler must be callable, got {type(sampler).__name__}")
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ConfigError(f"sigmas must be a 1-d tensor of >= 2 noise levels, got {sigmas!r:.80}")
    if noise not in NOISE_CHOICES:
        raise ConfigError(f"unknown noise {noise!r}; choose one of {', '.join(NOISE_CHOICES)}")


def kdiffusion(sampler: Callable[..., torch.Tensor], model: Callable[..., torch.Tensor],
               sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
               noise: str = "fresh", unwrap: bool = False, seed: int = 0,
               callback: Callable[[dict[str, Any]], Any] | None = None,
               **kwargs: Any) -> AdaptedSampler:
    """A k-diffusion-convention sampler ``sampler(model, x, sigmas, extra_args=None,
    callback=None, disable=None, ...)`` as ``z0 -> output`` with ``x = z0 * sigmas[0]``.

    The model ``model(x, sigma, **extra_args) -> denoised`` is instrumented; the state is probed
    through the callback (``x[i]``, the state the step starts from, as k-diffusion passes it). For
    samplers that take a ``noise_sampler`` (the ancestral and SDE ones), ``noise`` chooses it:

    - ``"fresh"`` (default): a seeded ``randn`` per step, probed as step noise: reproducible, and
      reported as disconnected from z0 (what k-diffusion's default does, minus the global RNG);
    - ``"learnable"``: derived from z0 differentiably (a seeded orthogonal map per step), so the
      gradient reaches z0 through the noise too and optimising z0 optimises it;
    - ``"leaves"``: one learnable leaf per step (``.leaves``);
    - ``"own"``: the sampler's default (not probed; the randomness scan finds it).

    Args:
        sampler: the sampler function (decorated or not).
        model: the denoiser.
        sigmas: the noise levels, ``sigmas[0]`` the largest, ending with 0 as k-diffusion's do.
        extra_args: passed to the model on every call.
        noise: see above (ignored for samplers without a ``noise_sampler`` parameter).
        unwrap: run ``inspect.unwrap(sampler)`` if it is wrapped in ``@torch.no_grad()``.
        seed: seeds the step noise.
        callback: also called with k-diffusion's per-step dict.
        **kwargs: the sampler's own options (``eta``, ``s_churn``, ...).
    """
    _check_kdiffusion(sampler, sigmas, noise)
    name = getattr(inspect.unwrap(sampler), "__qualname__", repr(sampler))
    fn, notes, tag = _entry(sampler, name, unwrap)
    den = instrument(model)
    takes_noise = takes_noise_sampler(sampler)
    if not takes_noise:
        noise = "own"
    mode = NOISE_CHOICES[noise]
    source = StepNoiseSource(mode, seed)
    extra = dict(extra_args or {})
    sig_list = [float(s) for s in sigmas]

    def sample(z0: torch.Tensor) -> torch.Tensor:
        sig = sigmas.to(z0.device)
        current = {"i": 0}

        def cb(d: dict[str, Any]) -> None:
            i = int(d["i"])
            current["i"] = i + 1
            probe(d["x"], "x_T" if i == 0 else f"x[{i}]", step=i,
                  kind="x_T" if i == 0 else "state", sigma=d.get("sigma"))
            if callback is not None:
                callback(d)

        kw = dict(kwargs)
        if takes_noise and noise != "own":
            step_noise = source.for_call(z0)
            calls = {"n": 0}

            def noise_sampler(sigma: Any, sigma_next: Any) -> torch.Tensor:
                i = current["i"] - 1 if current["i"] > 0 else calls["n"]
                calls["n"] += 1
                eps = step_noise(i, x_T)
                return probe(eps, f"eps[{i}]", step=i, kind="step_noise", sigma=sigma)

            kw["noise_sampler"] = noise_sampler
        x_T = z0 * sig[0]
        out = fn(den, x_T, sig, extra_args=extra, callback=cb, disable=True, **kw)
        if not isinstance(out, torch.Tensor):
            raise GradcheckError(f"{name} returned {type(out).__name__}, expected a tensor")
        return probe(out, f"x[{len(sig_list) - 1}]", step=len(sig_list) - 1, kind="state",
                     sigma=sig_list[-1])

    desc = (f"k-diffusion {name}{tag}, {len(sig_list) - 1} steps, sigma {sig_list[0]:.4g} -> "
            f"{sig_list[-1]:.4g}")
    return AdaptedSampler(sample, mode=mode, description=desc, notes=notes, noise_source=source,
                          denoiser=model, rebuild=lambda d: kdiffusion(
                              sampler, d, sigmas.to(torch.float64), extra_args=extra_args,
                              noise=noise, unwrap=unwrap, seed=seed, callback=callback,
                              **kwargs))


def function(sampler: Callable[..., torch.Tensor], denoiser: Callable[..., Any], *,
             unwrap: bool = False, noise: str = "own", seed: int = 0) -> AdaptedSampler:
    """A sampler of your own with the signature ``sampler(denoiser, z0) -> output``, its denoiser
    instrumented (``gradcheck run --sampler pkg.mod:fn`` for a function that is not in
    k-diffusion's convention). ``noise``: what its own ``torch.randn_like`` / ``torch.randn``
    draws shaped like z0 become (:mod:`gradcheck.draws`): ``"own"`` (default: left as they
    are), ``"learnable"`` (derived from z0, differentiably), ``"fresh"`` (seeded) or
    ``"leaves"`` (one learnable leaf each)."""
    if not callable(sampler):
        raise ConfigError(f"sampler must be callable, got {type(sampler).__name__}")
    _check_noise(noise)
    name = getattr(inspect.unwrap(sampler), "__qualname__", repr(sampler))
    fn, notes, tag = _entry(sampler, name, unwrap)
    den = instrument(denoiser)
    draws, mode = draw_replacer(noise, seed)

    def sample(z0: torch.Tensor) -> torch.Tensor:
        with draws.replacing(z0) if draws else contextlib.nullcontext():
            return fn(den, z0)

    if draws:
        notes.append(f"noise={noise!r}: the sampler's own randn_like/randn draws shaped like z0 "
                     f"are made {_NOISE_WORDS[noise]}")
    return AdaptedSampler(sample, mode=mode, description=f"{name}(denoiser, z0){tag}",
                          notes=notes, noise_source=draws.source if draws else None,
                          denoiser=denoiser, rebuild=lambda d: function(
                              sampler, d, unwrap=unwrap, noise=noise, seed=seed))


_NOISE_WORDS = {"learnable": "differentiable functions of z0 (a seeded orthogonal map each)",
                "fresh": "seeded fresh draws", "leaves": "learnable leaves (.leaves)"}


def _check_noise(noise: str) -> None:
    if noise not in NOISE_CHOICES:
        raise ConfigError(f"unknown noise {noise!r}; choose one of {', '.join(NOISE_CHOICES)}")


def is_kdiffusion(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` follows k-diffusion's sampler convention: ``(model, x, sigmas, ...)`` with
    a ``callback`` parameter."""
    try:
        params = list(inspect.signature(inspect.unwrap(fn)).parameters)
    except (TypeError, ValueError):
        return False
    return len(params) >= 3 and params[1:3] == ["x", "sigmas"] and "callback" in params


def takes_noise_sampler(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (decorated or not) names a ``noise_sampler`` parameter (a ``**kwargs``
    alone does not count: the noise it would be handed might go unused)."""
    return _accepts(inspect.unwrap(fn), "noise_sampler", var_keyword=False)


# -- diffusers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _generator(seed: int | None, device: torch.device) -> Iterator[torch.Generator | None]:
    if seed is None:
        yield None
    else:
        yield torch.Generator(device=device).manual_seed(int(seed))


def diffusers_loop(model: Any, scheduler: Any, *, steps: int, seed: int | None = 0,
                   model_kwargs: dict[str, Any] | None = None,
                   step_kwargs: dict[str, Any] | None = None,
                   check_shape: bool = True) -> AdaptedSampler:
    """The canonical diffusers sampling loop around any model and scheduler, as ``z0 -> output``::

        scheduler.set_timesteps(steps); x = z0 * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x, generator=g).prev_sample

    The model is instrumented (its ``.sample`` probed), the state probed per step. ``seed`` seeds
    a fresh ``torch.Generator`` per call for schedulers that draw noise in ``step`` (ancestral,
    DDPM, DDIM with eta > 0), so every call is the same function of z0; that noise is fresh
    randomness, which the diagnosis reports as disconnected from z0.
    """
    if int(steps) < 1:
        raise ConfigError(f"steps must be >= 1, got {steps!r}")
    den = instrument(model, label="unet", check_shape=check_shape)
    mkw, skw = dict(model_kwargs or {}), dict(step_kwargs or {})
    takes_gen = _accepts(scheduler.step, "generator")
    sched = type(scheduler).__name__

    def sample(z0: torch.Tensor) -> torch.Tensor:
        scheduler.set_timesteps(int(steps), device=z0.device)
        x = z0 * scheduler.init_noise_sigma
        ts = scheduler.timesteps
        with _generator(seed if takes_gen else None, z0.device) as gen:
            for i, t in enumerate(ts):
                x = probe(x, "x_T" if i == 0 else f"x[{i}]", step=i,
                          kind="x_T" if i == 0 else "state")
                inp = scheduler.scale_model_input(x, t)
                pred = output_tensor(den(inp, t, **mkw))
                if pred.shape[1] != x.shape[1]:  # a learned-variance model: its epsilon half
                    pred = pred[:, : x.shape[1]]
                kw = dict(skw, generator=gen) if takes_gen else skw
                x = scheduler.step(pred, t, x, **kw).prev_sample
        return probe(x, f"x[{len(ts)}]", step=len(ts), kind="state")

    desc = f"diffusers loop: {type(model).__name__} + {sched}, {int(steps)} steps"
    return AdaptedSampler(sample, mode="custom", description=desc, notes=[])


class _InitialNoise(TorchFunctionMode):
    """Returns ``z0`` for the first ``torch.randn`` of z0's shape (a pipeline's initial latents)."""

    def __init__(self, z0: torch.Tensor) -> None:
        super().__init__()
        self.z0 = z0
        self.used = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.used and func is torch.randn:
            shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) \
                else args
            if tuple(int(s) for s in shape) == tuple(self.z0.shape):
                self.used = True
                return self.z0.to(device=kwargs.get("device") or self.z0.device,
                                  dtype=kwargs.get("dtype") or self.z0.dtype)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _quiet_progress(pipe: Any) -> Iterator[None]:
    """The pipeline's progress bar off for the diagnosed call, the user's setting back after."""
    if not hasattr(pipe, "set_progress_bar_config"):
        yield
        return
    saved = dict(getattr(pipe, "_progress_bar_config", None) or {})
    had = hasattr(pipe, "_progress_bar_config")
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if had:
            pipe._progress_bar_config = saved
        else:
            del pipe._progress_bar_config


def diffusers_pipeline(pipe: Any, *, unwrap: bool = False, seed: int | None = None,
                       check_shape: bool = True, **call_kwargs: Any) -> AdaptedSampler:
    """A diffusers pipeline call as ``z0 -> output``.

    z0 goes in as ``latents=`` where the pipeline takes it, otherwise as the pipeline's first
    ``torch.randn`` draw of z0's shape (its initial noise); ``output_type="pt"`` is asked for.
    ``pipe.unet`` (or ``pipe.transformer``) is instrumented for the call. Pipelines decorate
    ``__call__`` with ``@torch.no_grad()``: the diagnosis names it, and ``unwrap=True`` calls
    ``inspect.unwrap(type(pipe).__call__)`` instead.

    Args:
        pipe: the pipeline.
        unwrap: call the undecorated ``__call__``.
        seed: pass ``generator=torch.Generator().manual_seed(seed)`` (fresh per call); default:
            no generator (the pipeline draws from the global RNG, which the diagnosis seeds).
        check_shape: see :func:`gradcheck.instrument`.
        **call_kwargs: the pipeline's own arguments (``num_inference_steps``, ``eta``, ...).
    """
    cls = type(pipe)
    call = cls.__call__
    name = f"{cls.__name__}.__call__"
    target, notes, tag = _entry(call, name, unwrap)
    attr = next((a for a in ("unet", "transformer", "prior", "decoder")
                 if isinstance(getattr(pipe, a, None), torch.nn.Module)), None)
    if attr is None:
        raise ConfigError(f"{cls.__name__} has no unet or transformer module to instrument")
    inner = getattr(pipe, attr)
    wrapped = instrument(inner, label=attr, check_shape=check_shape)
    sig_fn = inspect.unwrap(call)
    takes_latents, takes_output_type, takes_batch_size = (
        _accepts(sig_fn, a) for a in ("latents", "output_type", "batch_size"))

    def sample(z0: torch.Tensor) -> torch.Tensor:
        kw = dict(call_kwargs)
        if takes_output_type:
            kw.setdefault("output_type", "pt")
        if takes_batch_size:
            kw.setdefault("batch_size", z0.shape[0])
        if seed is not None:
            kw["generator"] = torch.Generator(device=z0.device).manual_seed(int(seed))
        if takes_latents:
            kw["latents"] = z0
            feed = contextlib.nullcontext()
        else:
            feed = _InitialNoise(z0)
        # instance attribute, not pipe.unet = ...: DiffusionPipeline.__setattr__ would rewrite
        # the pipeline's config with the wrapper's class
        pipe.__dict__[attr] = wrapped
        try:
            with feed, _quiet_progress(pipe):
                res = target(pipe, **kw)
        finally:
            pipe.__dict__[attr] = inner
        if isinstance(feed, _InitialNoise) and not feed.used:
            raise GradcheckError(
                f"{name} drew no torch.randn of z0's shape {tuple(z0.shape)} and takes no "
                f"latents=: cannot feed z0 in (is the shape the pipeline's latent shape?)")
        out = output_tensor(res, field="images")
        if out is None:
            got = getattr(res, "images", res[0] if isinstance(res, (tuple, list)) and res else res)
            raise GradcheckError(f"{name} returned {type(got).__name__} images, not a tensor "
                                 f"(it ignored output_type='pt')")
        return out

    desc = f"diffusers {name}{tag} ({type(inner).__name__}, {type(pipe.scheduler).__name__})" \
        if hasattr(pipe, "scheduler") else f"diffusers {name}{tag}"
    return AdaptedSampler(sample, mode="custom", description=desc, notes=notes)


#: Cosmos ``Sampler.forward`` keywords the adapter passes on
COSMOS_KEYWORDS = ("num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max",
                   "S_noise", "solver_option")
#: the names a Cosmos-style step's locals give the state after the step, the step index
_COSMOS_STATE = ("output_x_B_StateShape", "x_t", "x_next", "x")
_COSMOS_INDEX = ("i_th", "i", "step")


def cosmos(sampler: Any, x0_fn: Callable[..., Any], *, noise: str = "own", seed: int = 0,
           **sampler_kwargs: Any) -> AdaptedSampler:
    """An NVIDIA Cosmos-style ``Sampler`` (``sampler(x0_fn, x_sigma_max=..., num_steps=...,
    sigma_min=..., sigma_max=..., rho=..., S_churn=..., S_min=..., S_max=..., S_noise=...,
    solver_option=...)``), called unmodified as ``sampler(x0_fn, x_sigma_max=sigma_max * z0,
    **sampler_kwargs)``.

    Every ``x0_fn`` call is a probed denoiser call (its float64 wrapper and the final clean call
    at sigma_min included); ``x_sigma_max`` is probed as x_T; where the sampler takes
    ``callback_fns``, a callback probes the state after each step (its ``**locals()``). Churn
    noise drawn with ``torch.randn_like`` from the global RNG is fresh randomness: with
    ``S_churn > 0`` it is reported at each step (a warning); with ``S_churn = 0`` the draw is
    multiplied by zero and raises nothing. Its ``@torch.no_grad()`` entry points are named as the
    break; ``diagnose(..., allow_grad=True)`` looks past them. ``noise`` makes the churn draws
    step noise (:mod:`gradcheck.draws`): ``"learnable"`` (the seed note's second mode: derived
    from z0, differentiably; needs ``S_churn > 0``), ``"fresh"``, ``"leaves"``, or ``"own"``
    (default: the sampler's own draws).
    """
    if not callable(sampler):
        raise ConfigError(f"sampler must be callable, got {type(sampler).__name__}")
    unknown = sorted(set(sampler_kwargs) - set(COSMOS_KEYWORDS) - {"callback_fns"})
    if unknown:
        raise ConfigError(f"cosmos: unknown sampler keyword(s) {', '.join(unknown)}; it takes "
                          f"{', '.join(COSMOS_KEYWORDS)}")
    sigma_max = float(sampler_kwargs.get("sigma_max", 80.0))
    churn = float(sampler_kwargs.get("S_churn", 0.0) or 0.0)
    _check_noise(noise)
    if noise != "own" and churn <= 0:
        raise ConfigError(f"cosmos: noise={noise!r} needs S_churn > 0 (with S_churn=0 the churn "
                          f"draw is multiplied by zero: there is no step noise to make {noise})")
    draws, mode = draw_replacer(noise, seed)
    den = instrument(x0_fn)
    entry = getattr(sampler, "forward", sampler)
    try:
        takes_callbacks = "callback_fns" in inspect.signature(entry).parameters
    except (TypeError, ValueError):
        takes_callbacks = False
    name = type(sampler).__name__ if not inspect.isfunction(sampler) else sampler.__qualname__

    def on_step(**loc: Any) -> None:
        state = next((loc[k] for k in _COSMOS_STATE if isinstance(loc.get(k), torch.Tensor)),
                     None)
        i = next((loc[k] for k in _COSMOS_INDEX if isinstance(loc.get(k), int)), None)
        if state is not None and i is not None:
            probe(state, f"x[{i + 1}]@callback", step=i + 1, kind="state")

    def sample(z0: torch.Tensor) -> torch.Tensor:
        x_T = probe(sigma_max * z0, "x_T", step=0, kind="x_T", sigma=sigma_max)
        kw = dict(sampler_kwargs)
        if takes_callbacks:
            kw["callback_fns"] = list(kw.get("callback_fns") or []) + [on_step]
        with draws.replacing(z0) if draws else contextlib.nullcontext():
            return sampler(den, x_sigma_max=x_T, **kw)

    notes = [f"Cosmos convention: {name}(x0_fn, x_sigma_max=sigma_max * z0, "
             + ", ".join(f"{k}={v!r}" for k, v in sampler_kwargs.items()) + ")"]
    if draws:
        notes.append(f"S_churn={churn:g}, noise={noise!r}: the churn draws (torch.randn_like) are "
                     f"made {_NOISE_WORDS[noise]}")
    elif churn > 0:
        notes.append(f"S_churn={churn:g}: the churn noise is drawn with torch.randn_like from the "
                     f"global RNG each step: fresh randomness, not derived from z0")
    else:
        notes.append("S_churn=0: the churn draw (torch.randn_like) is multiplied by zero; it "
                     "does not enter the state")
    if not draws:
        mode = "custom" if churn > 0 else "default"
    return AdaptedSampler(sample, mode=mode, description=f"{name} (Cosmos convention)",
                          notes=notes, noise_source=draws.source if draws else None,
                          denoiser=x0_fn, rebuild=lambda d: cosmos(
                              sampler, d, noise=noise, seed=seed, **sampler_kwargs))

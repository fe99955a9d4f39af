"""A denoiser call, probed: its input and output tagged in the active trace, its result checked
(a tensor of the input's shape, or an output object holding one), and :func:`instrument`, which
wraps a denoiser function or module so that every call is probed.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Callable

import torch

from .errors import DenoiserError, GradcheckError
from . import progress
from .probes import alias, current_trace
from .torch_internals import in_backward


def output_tensor(out: Any, field: str = "sample") -> torch.Tensor | None:
    """The tensor inside a model's result: the tensor itself, a diffusers-style output object's
    ``.sample`` (a pipeline's: ``field="images"``), or the first element of a tuple or list."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, field, None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def call_denoiser(fn: Callable[..., Any], x: torch.Tensor, sigma: Any, *args: Any,
                  step: int | None = None, label: str = "D", suffix: str = "",
                  check_shape: bool = True, **kwargs: Any) -> Any:
    """Call a denoiser ``fn(x, sigma, ...)``, probing input and output and checking the result is
    a tensor of ``x``'s shape (or an output object holding one: diffusers' ``.sample``, a tuple's
    first element; it is returned as it came). ``step`` defaults to the call index within the
    active trace. ``check_shape=False`` allows an output of another shape (a learned-variance
    model's 2C channels)."""
    progress.event("call")
    tr = current_trace()
    if tr is not None and in_backward():  # a checkpoint recomputing the call: not a new one
        tr = None
    call = tr.next_call() if tr is not None else None
    if step is None:
        step = call
    if tr is not None:
        x = alias(x)
        x = tr.add(x, f"{label}_in[{step}]{suffix}", step=step, kind="denoiser_in",
                   sigma=sigma, call=call)
    try:
        out = fn(x, sigma, *args, **kwargs)
    except GradcheckError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        if not _SHAPE_WORDS.search(first):
            raise  # not about the input's layout (out of memory, a bug): the error as it came
        # the input does not fit the network: say which shape came, and which it takes
        raise DenoiserError(
            f"denoiser {_fn_name(fn)} raised {type(exc).__name__} on an input of shape "
            f"{tuple(x.shape)} ({str(x.dtype).replace('torch.', '')}): {first}"
            + (f"; it takes samples of shape {tuple(want)}" if (want := _sample_shape(fn))
               else "")) from exc
    pred = output_tensor(out)
    if pred is None:
        raise DenoiserError(
            f"denoiser {_fn_name(fn)} returned {type(out).__name__}, expected a tensor of shape "
            f"{tuple(x.shape)}"
        )
    if check_shape and pred.shape != x.shape:
        raise DenoiserError(
            f"denoiser {_fn_name(fn)} returned shape {tuple(pred.shape)}, expected the input's "
            f"shape {tuple(x.shape)}"
        )
    if tr is not None:
        seen = tr.add(pred, f"{label}_out[{step}]{suffix}", step=step, kind="denoiser_out",
                      sigma=sigma, call=call)
        if seen is not pred:  # a perturbed value (numeric localisation): go on with it
            out = _with_output(out, pred, seen)
    return out


def _with_output(out: Any, pred: torch.Tensor, new: torch.Tensor) -> Any:
    """``out`` (a tensor, a tuple or list, an output object) with ``pred`` replaced by ``new``;
    ``out`` itself where that cannot be done (the perturbation is then seen not to propagate)."""
    if out is pred:
        return new
    if isinstance(out, (tuple, list)) and out and out[0] is pred:
        return type(out)([new, *out[1:]]) if isinstance(out, list) else (new, *out[1:])
    try:
        dup = copy.copy(out)
        setattr(dup, "sample", new)
        return dup if getattr(dup, "sample", None) is new else out
    except Exception:  # noqa: BLE001 - an output object that cannot be copied
        return out


#: Words of torch's messages about an input that does not fit a layer (conv, linear, view, ...).
_SHAPE_WORDS = re.compile(r"shape|size|dimension|channel|mat1|mat2", re.IGNORECASE)


def _sample_shape(fn: Any) -> tuple[int, ...] | None:
    """The per-sample shape a denoiser says it takes (a ``sample_shape`` attribute), if any."""
    shape = getattr(getattr(fn, "inner", fn), "sample_shape", None)
    return tuple(shape) if shape else None


def _fn_name(fn: Any) -> str:
    inner = getattr(fn, "inner", fn)
    return getattr(inner, "__qualname__", None) or type(inner).__name__


class _InstrumentedFn:
    """A denoiser callable whose every call is probed (see :func:`instrument`)."""

    def __init__(self, inner: Callable[..., Any], label: str, check_shape: bool = True) -> None:
        self.inner = inner
        self.label = label
        self.check_shape = check_shape

    def __call__(self, x: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> Any:
        return call_denoiser(self.inner, x, sigma, *args, label=self.label,
                             check_shape=self.check_shape, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"instrument({self.inner!r})"


class _InstrumentedModule(torch.nn.Module):
    """An ``nn.Module`` wrapper whose forward is probed; parameters stay the inner module's."""

    def __init__(self, inner: torch.nn.Module, label: str, check_shape: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.label = label
        self.check_shape = check_shape

    def forward(self, x: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> Any:
        return call_denoiser(self.inner, x, sigma, *args, label=self.label,
                             check_shape=self.check_shape, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:  # the inner model's attributes (diffusers' .config, .dtype, ...)
            return getattr(super().__getattr__("inner"), name)


def instrument(denoiser: Callable[..., Any], label: str = "D", *,
               check_shape: bool = True) -> Callable[..., Any]:
    """Wrap a denoiser ``D(x, sigma, ...) -> x0_hat`` so that every call's input and output are
    probed, numbered by call index (a sampler's steps are numbered by denoiser call), and its
    output is checked to be a tensor of x's shape. Any call convention ``D(x, t_or_sigma, *args,
    **kwargs)`` works; a result that is an output object (diffusers' ``UNet2DOutput``: its
    ``.sample``) or a tuple (its first element) is probed inside and returned unchanged.

    Results are unchanged (the input is passed through a value-preserving view so the input probe
    measures only the gradient that flows through the denoiser). Works on ``nn.Module`` (the
    wrapper is a Module sharing the parameters) and on any callable. Outside a trace it only
    checks the output.

    Args:
        denoiser: the callable or module.
        label: prefix of the probe names (``D_in[3]``, ``D_out[3]``).
        check_shape: require the prediction to have the input's shape (off for a model that
            predicts more channels, e.g. a learned variance).
    """
    if isinstance(denoiser, (_InstrumentedFn, _InstrumentedModule)):
        return denoiser
    if isinstance(denoiser, torch.nn.Module):
        return _InstrumentedModule(denoiser, label, check_shape)
    if not callable(denoiser):
        raise DenoiserError(f"instrument() needs a callable denoiser, got {type(denoiser).__name__}")
    return _InstrumentedFn(denoiser, label, check_shape)

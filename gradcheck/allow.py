"""``allow_grad``: what would the gradient be if the sampler's grad-disabling sites allowed it?

Third-party samplers switch grad mode off on purpose (Cosmos decorates ``Sampler.forward`` *and*
``Sampler._forward_impl`` with ``@torch.no_grad()``; pipelines wrap ``encode``/``decode`` and
conditioners in ``torch.inference_mode``). Editing their code to ask "would the gradient flow
otherwise?" is what this replaces. Inside :class:`AllowGrad`, every ``no_grad`` /
``set_grad_enabled(False)`` switch and every ``inference_mode`` entered *by the user's or a
library's code* (a decorator on a function defined outside torch, a ``with`` block or a call in
such code) is neutralised: grad mode stays as it was, and the site is recorded (the API, the
function, its file:line, how often). torch's own internal uses are left alone, and so is
gradcheck's.

Mechanism: this thread subscribes to ``torch._C._set_grad_enabled`` (what ``no_grad``,
``set_grad_enabled`` and their decorators call) and ``torch.inference_mode.__enter__/__exit__``
(:mod:`gradcheck.patches`: one wrapper each, dispatching to the calling thread's subscribers)
while at least one ``AllowGrad`` is active in it (nesting and re-entry share one subscription),
and the grad mode the block started with is restored afterwards, also on exceptions and
``KeyboardInterrupt``. Another thread is untouched: its ``no_grad`` blocks switch grad off as
usual and are not listed.

Limits (reported, not silently ignored: a cut that remains under ``allow_grad`` is located as
usual, and says that ``allow_grad`` could not reach it): code compiled by ``torch.compile`` (its
grad mode is part of the compiled graph), switches made in C++ (``torch._C._InferenceMode``
used directly, extensions), and work the sampler hands to other threads (grad mode is per
thread; only the diagnosing thread's switches are neutralised).
"""
from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import patches
from .torch_internals import is_user_file, qualname, rel_path

_GRAD_FILES = ("grad_mode.py", "_contextlib.py")


@dataclass
class Site:
    """One neutralised grad-disabling site."""

    api: str  # "@torch.no_grad()", "with torch.no_grad():", "torch.set_grad_enabled(False)", ...
    function: str | None
    location: str | None
    count: int = 0


def _switch_site(api_hint: str) -> tuple[str, str | None, str | None] | None:
    """Who is disabling grad now, if it is the user's or a library's code (else None): the API
    as written, the function, its file:line. Walks out of torch's grad-mode plumbing; a
    decorator is named by the function it wraps."""
    f = patches.caller_frame()
    api = api_hint
    while f is not None:
        code = f.f_code
        if code.co_name == "decorate_context" and code.co_filename.endswith("_contextlib.py"):
            fn = f.f_locals.get("func")
            fcode = getattr(fn, "__code__", None)
            if fcode is None or not is_user_file(fcode.co_filename):
                return None
            return f"@{api}", qualname(fn), f"{rel_path(fcode.co_filename)}:{fcode.co_firstlineno}"
        if code.co_filename.endswith(_GRAD_FILES):
            owner = type(f.f_locals.get("self", None)).__name__
            if owner == "no_grad":
                api = "torch.no_grad()"
            elif owner == "set_grad_enabled":
                api = "torch.set_grad_enabled(False)"
            f = f.f_back
            continue
        if not is_user_file(code.co_filename):
            return None  # torch's own use (or gradcheck's): left alone
        from .torch_internals import _opens_a_with_block

        if _opens_a_with_block(f):
            api = f"with {api}:"
        return api, code.co_name, f"{rel_path(code.co_filename)}:{f.f_lineno}"
    return None


class _Installation:
    """One thread's AllowGrads, and its subscriptions while any of them is active."""

    def __init__(self) -> None:
        self.active: list[AllowGrad] = []
        self.subscriptions: contextlib.ExitStack | None = None

    def record(self, api: str, function: str | None, location: str | None) -> None:
        for a in self.active:
            a._record(api, function, location)

    def _allowed(self, api: str) -> bool:
        """Whether the grad-disabling call now made is the user's or a library's (then it is
        recorded and neutralised); never breaks the call: a site that cannot be read is left."""
        try:
            site = _switch_site(api)
        except Exception:  # noqa: BLE001 - never break the switch: it happens unallowed
            site = None
        if site is not None:
            self.record(*site)
        return site is not None

    def switch(self, call_next: Callable[..., Any], mode: bool) -> Any:
        if not mode and self.active and torch.is_grad_enabled() and \
                self._allowed("torch.set_grad_enabled(False)"):
            return None  # neutralised: grad mode stays as it is
        return call_next(mode)

    def enter(self, call_next: Callable[..., Any], ctx: Any) -> Any:
        ctx._gradcheck_allowed = bool(getattr(ctx, "mode", True) and self.active
                                      and self._allowed("torch.inference_mode()"))
        return None if ctx._gradcheck_allowed else call_next(ctx)

    def exit(self, call_next: Callable[..., Any], ctx: Any, *exc: Any) -> Any:
        if getattr(ctx, "_gradcheck_allowed", False):
            ctx._gradcheck_allowed = False
            return None
        return call_next(ctx, *exc)

    def install(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(patches.GRAD_MODE.subscribe(self.switch))
        stack.enter_context(patches.INFERENCE_ENTER.subscribe(self.enter))
        stack.enter_context(patches.INFERENCE_EXIT.subscribe(self.exit))
        self.subscriptions = stack

    def uninstall(self) -> None:
        if self.subscriptions is not None:
            self.subscriptions.close()
            self.subscriptions = None


_THREAD = threading.local()


def _installation() -> _Installation:
    inst = getattr(_THREAD, "installation", None)
    if inst is None:
        inst = _THREAD.installation = _Installation()
    return inst


class AllowGrad:
    """A context in which grad-disabling sites entered inside are neutralised and recorded
    (see the module docs). ``sites``: what was neutralised, in first-seen order."""

    def __init__(self) -> None:
        self.sites: list[Site] = []
        self._index: dict[tuple[str, str | None, str | None], Site] = {}
        self._grad_mode = True

    def _record(self, api: str, function: str | None, location: str | None) -> None:
        key = (api, function, location)
        site = self._index.get(key)
        if site is None:
            site = self._index[key] = Site(api, function, location)
            self.sites.append(site)
        site.count += 1

    def __enter__(self) -> AllowGrad:
        self._grad_mode = torch.is_grad_enabled()
        inst = _installation()
        if not inst.active:
            inst.install()
        inst.active.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        inst = _installation()
        try:
            inst.active.remove(self)
        finally:
            if not inst.active:
                inst.uninstall()
            torch._C._set_grad_enabled(self._grad_mode)


def active() -> bool:
    """Whether an AllowGrad is in effect in this thread (a cut still seen under it is one it
    cannot reach)."""
    return bool(_installation().active)


class Allowing:
    """``sample_fn`` called under :class:`AllowGrad` each time; the sites of its first call
    (the record pass) are kept in ``sites``. Everything else is the sampler's (its mode,
    ``at_dtype``, leaves, ...)."""

    def __init__(self, sample_fn: Callable[[torch.Tensor], Any]) -> None:
        self.inner = sample_fn
        self.sites: list[Site] | None = None

    def __call__(self, z: torch.Tensor) -> Any:
        grad_on = torch.is_grad_enabled()
        with AllowGrad() as allow:
            out = self.inner(z)
        if self.sites is None and grad_on:  # the first pass with grad: the record pass
            self.sites = allow.sites
        return out

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self.inner, name)  # AttributeError when the sampler has none
        if name == "at_dtype":  # a shadow run of the same sampler, allowed the same way
            @functools.wraps(value)  # its signature too: an adapter's takes wrap=
            def at_dtype(dtype: torch.dtype, **kw: Any) -> Any:
                shadow = value(dtype, **kw)
                return None if shadow is None else Allowing(shadow)
            return at_dtype
        return value

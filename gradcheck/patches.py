"""Touch torch in one place: every torch function gradcheck intercepts is wrapped here, once, and
the wrapper hands each call to the subscribers of the *calling thread* (a stack: the last to
subscribe sees the call first, as nested wrappers would). A thread with no subscriber calls torch
directly, so another thread's grad mode, ``no_grad`` blocks, hooks and Functions are untouched
while a diagnosis runs. The wrapper is installed when the first subscriber (of any thread) arrives
and the original is put back exactly when the last one leaves, so torch is as it was afterwards.

A subscriber is middleware: ``sub(call_next, *args, **kwargs)`` (a classmethod's class first among
the arguments, a method's instance likewise); it may look at the call, change
its arguments, call ``call_next`` (the next subscriber, in the end torch) or not (a neutralised
switch), and return what the call returns. Process-wide observers (:meth:`Point.observe`: the
grad-mode watcher) sit below every thread's subscribers and never change a call.

:func:`caller_frame` is where every frame walk starts: the frame that called the patched torch
function, whatever the depth of the subscribers in between.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from types import FrameType
from typing import Any, Callable, Iterator

Sub = Callable[..., Any]
_MISSING = object()
_WRAPPER_CODES: set[Any] = set()


class Point:
    """One attribute of torch (``owner.name``), wrapped while anyone subscribes.

    Args:
        owner: the object holding it, or a function returning it (imported when first needed);
            None where this torch lacks it (subscribing is then a no-op, see ``available``).
        name: the attribute.
        kind: ``function`` (a plain function or method), ``classmethod`` or ``staticmethod``.
    """

    def __init__(self, owner: Any, name: str, kind: str = "function") -> None:
        self._owner = owner
        self.name = name
        self.kind = kind
        self._lock = threading.Lock()
        self._count = 0
        self._saved: Any = _MISSING
        self._local = threading.local()
        self._observers: list[Sub] = []

    def owner(self) -> Any:
        o = self._owner
        if callable(o) and not isinstance(o, type):
            o = self._owner = o()
        return o

    @property
    def available(self) -> bool:
        o = self.owner()
        return o is not None and hasattr(o, self.name)

    def _stack(self) -> list[Sub]:
        subs = getattr(self._local, "subs", None)
        if subs is None:
            subs = self._local.subs = []
        return subs

    def _install(self) -> None:
        owner = self.owner()
        saved = owner.__dict__.get(self.name, _MISSING)
        self._saved = saved
        current = saved if saved is not _MISSING else getattr(owner, self.name)
        point = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            subs = [*point._observers, *getattr(point._local, "subs", ())]
            if point.kind == "classmethod":  # subscribers see the class as the first argument
                def real(cls: Any, *a: Any, **k: Any) -> Any:
                    return current.__get__(None, cls)(*a, **k)
            elif point.kind == "staticmethod":
                real = current.__get__(None, owner)
            else:
                real = current
            return _chain(subs, len(subs) - 1, real, args, kwargs)

        _WRAPPER_CODES.add(wrapper.__code__)
        installed: Any = wrapper
        if self.kind == "classmethod":
            installed = classmethod(wrapper)
        elif self.kind == "staticmethod":
            installed = staticmethod(wrapper)
        setattr(owner, self.name, installed)

    def _uninstall(self) -> None:
        owner = self.owner()
        if self._saved is _MISSING:
            delattr(owner, self.name)
        else:
            setattr(owner, self.name, self._saved)
        self._saved = _MISSING

    def _acquire(self) -> None:
        with self._lock:
            if self._count == 0:
                self._install()
            self._count += 1

    def _release(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                self._uninstall()

    @contextlib.contextmanager
    def subscribe(self, sub: Sub) -> Iterator[None]:
        """``sub`` sees this thread's calls while the block runs (nothing where this torch lacks
        the attribute)."""
        if not self.available:
            yield
            return
        self._acquire()
        stack = self._stack()
        stack.append(sub)
        try:
            yield
        finally:
            for i in range(len(stack) - 1, -1, -1):  # the last of its kind (out of order too)
                if stack[i] is sub:
                    del stack[i]
                    break
            self._release()

    def observe(self, sub: Sub) -> None:
        """``sub`` sees every thread's calls from now on, for good, below every subscriber."""
        if not self.available:
            return
        with self._lock:
            self._observers.append(sub)
        self._acquire()

    @property
    def installed(self) -> bool:
        return self._count > 0


def _chain(subs: list[Sub], i: int, real: Callable[..., Any], args: tuple,
           kwargs: dict[str, Any]) -> Any:
    if i < 0:
        return real(*args, **kwargs)
    return subs[i](lambda *a, **k: _chain(subs, i - 1, real, a, k), *args, **kwargs)


def caller_frame(frame: FrameType | None = None) -> FrameType | None:
    """The frame that called the patched torch function now being handled (the start of every
    frame walk of a subscriber)."""
    f = frame or sys._getframe(1)
    while f is not None and f.f_code not in _WRAPPER_CODES:
        f = f.f_back
    return f.f_back if f is not None else None


# -- the points ---------------------------------------------------------------------------------

def _torch() -> Any:
    import torch

    return torch


def _attr(path: str) -> Callable[[], Any]:
    """``lambda: torch.<path>`` or None where this torch has no such thing."""
    def get() -> Any:
        obj: Any = _torch()
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj
    return get


def _module(name: str) -> Callable[[], Any]:
    def get() -> Any:
        import importlib

        try:
            return importlib.import_module(name)
        except ImportError:
            return None
    return get


def _distributed() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() else None


GRAD_MODE = Point(_attr("_C"), "_set_grad_enabled")
INFERENCE_ENTER = Point(_attr("inference_mode"), "__enter__")
INFERENCE_EXIT = Point(_attr("inference_mode"), "__exit__")
FUNCTION_APPLY = Point(_attr("autograd.Function"), "apply", "classmethod")
TENSOR_FLOAT = Point(_attr("Tensor"), "__float__")
REGISTER_HOOK = Point(_attr("Tensor"), "register_hook")
BACKWARD_HOOK_INIT = Point(lambda: getattr(_module("torch.utils.hooks")(), "BackwardHook", None),
                           "__init__")
CHECKPOINT_FRAME_INIT = Point(
    lambda: getattr(_module("torch.utils.checkpoint")(), "_CheckpointFrame", None), "__init__")
CHECKPOINT_FORWARD = Point(
    lambda: getattr(_module("torch.utils.checkpoint")(), "CheckpointFunction", None), "forward",
    "staticmethod")
RANDN_LIKE = Point(_torch, "randn_like")
RANDN = Point(_torch, "randn")
_COLLECTIVES: dict[str, Point] = {}


def collective(name: str) -> Point:
    """The point of ``torch.distributed.<name>``."""
    if name not in _COLLECTIVES:
        _COLLECTIVES[name] = Point(_distributed, name)
    return _COLLECTIVES[name]


def every_point() -> list[Point]:
    return [GRAD_MODE, INFERENCE_ENTER, INFERENCE_EXIT, FUNCTION_APPLY, TENSOR_FLOAT,
            REGISTER_HOOK, BACKWARD_HOOK_INIT, CHECKPOINT_FRAME_INIT, CHECKPOINT_FORWARD,
            RANDN_LIKE, RANDN, *_COLLECTIVES.values()]

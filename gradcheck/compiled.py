"""``torch.compile``'d code during a diagnosis: run eagerly, and checked against itself compiled.

gradcheck sees a sampler through TorchFunctionModes, tensor hooks and patched functions. Traced by
dynamo, those are compiled into the user's graphs (and recompiled at every change of gradcheck's
state, up to the recompile limit), and a TorchFunctionMode on the stack sets off torch bugs in
traced code (``float(sigma)`` on a compiled forward: "'NoneType' object has no attribute
'item'"). So while a diagnosis runs, compiled code runs as its eager original, through the public
``torch.compiler.set_stance("force_eager")`` (torch 2.6 and later): gradcheck's own code is
never compiled, every op inside compiled code is seen (cuts located at their line), and the
diagnosis costs what the eager twin's does.

The eager original is what the compiled code means; the compiled code is what runs. Where
compiled regions were entered, one forward+backward of the sampler as the user runs it (compiled,
no gradcheck mode active) gives dL/dz0 and the loss, which the check ``compiled_matches_eager``
compares with the diagnosed ones (the recorded pass's): a compiler that changes the gradient, or
a sampler that behaves differently compiled (a graph break that drops a side effect, a guard on
state), is a finding, never a silent pass.

Counting the compiled regions entered leans on a torch internal (the stance lookup each compiled
call makes, ``torch._dynamo.eval_frame._callback_from_stance``), feature-detected: without it
the regions run eagerly all the same and ``compiled_matches_eager`` is not asked. The stance is
process-wide: another thread's compiled code runs eagerly too while a diagnosis runs (the same
results, at eager speed). Nothing here imports ``torch._dynamo``: a process that compiled nothing
pays nothing.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Iterator

import torch

_local = threading.local()
_lock = threading.Lock()
_installed: list[Any] = []  # the module patched, once


class EagerCompiled:
    """What :func:`eager_compiled` saw: compiled regions entered on this thread (None: not
    countable on this torch), and why compiled code could not be run eagerly (``unsupported``)."""

    def __init__(self) -> None:
        self.regions: int | None = None
        self.unsupported: str | None = None

    @property
    def note(self) -> str | None:
        if self.regions:
            return (f"{self.regions} call(s) into torch.compile'd code ran as their eager "
                    f"original during gradcheck's passes (torch.compiler.set_stance"
                    f"('force_eager')): gradcheck's hooks are never compiled; the compiled "
                    f"gradient is compared with the eager one (compiled_matches_eager)")
        return self.unsupported if self.regions is None and self.unsupported else None


def _count_entries(eval_frame: Any) -> bool:
    """Wrap the stance lookup every compiled call makes (once per process) so that this
    thread's diagnosis counts its compiled regions. False where torch has no such lookup."""
    with _lock:
        if _installed:
            return _installed[0] is eval_frame
        original = getattr(eval_frame, "_callback_from_stance", None)
        if not callable(original):
            return False

        def counted(callback: Any) -> Any:
            seen = getattr(_local, "seen", None)
            # a compiling context's callback, not torch's own disable (None) or run-only (False)
            # contexts, which torch wraps around its optimizers and checkpoints
            if seen is not None and callback not in (None, False):
                seen.regions = (seen.regions or 0) + 1
            return original(callback)
        eval_frame._callback_from_stance = counted
        _installed.append(eval_frame)
        return True


@contextlib.contextmanager
def eager_compiled() -> Iterator[EagerCompiled]:
    """While the block runs, ``torch.compile``'d code runs as its eager original; the result
    counts the compiled regions this thread entered."""
    seen = EagerCompiled()
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if eval_frame is None:  # nothing was ever compiled in this process (dynamo not imported)
        seen.regions = 0
        yield seen
        return
    if set_stance is None:
        seen.unsupported = (f"torch {torch.__version__} has no torch.compiler.set_stance "
                            f"(2.6 and later): compiled code ran compiled under gradcheck's "
                            f"hooks")
        yield seen
        return
    if _count_entries(eval_frame):
        seen.regions = 0
    prior = getattr(_local, "seen", None)
    _local.seen = seen
    try:
        with set_stance("force_eager"):
            yield seen
    finally:
        _local.seen = prior


@contextlib.contextmanager
def as_compiled() -> Iterator[None]:
    """Inside :func:`eager_compiled`: compiled code runs compiled again (the user's own run)."""
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None or "torch._dynamo.eval_frame" not in sys.modules:
        yield
        return
    prior = getattr(_local, "seen", None)
    _local.seen = None  # the user's run is not counted
    try:
        with set_stance("default"):
            yield
    finally:
        _local.seen = prior


def compiled_run(run: Callable[[torch.Tensor], torch.Tensor], loss_of: Callable[..., Any],
                 z: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """The loss and dL/dz0 of the sampler as the user runs it (compiled), at ``z``."""
    zc = z.detach().clone().requires_grad_(True)
    with as_compiled():
        loss = loss_of(run(zc))
        grad = torch.autograd.grad(loss, zc, allow_unused=True)[0] if loss.requires_grad \
            else None
    return float(loss.detach()), grad

"""Reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``, still
the default in many codebases) run as the non-reentrant kind during gradcheck's passes.

The reentrant kind cannot be differentiated with ``torch.autograd.grad`` (nor with
``backward(inputs=...)``), which every backward gradcheck takes uses: it leaves the user's
``.grad`` fields alone. The non-reentrant kind computes the same gradient with the same
recomputation, so each differentiable reentrant call (grad mode on, a tensor input that requires
grad) is handed to it, through the one patch point on ``autograd.Function.apply``
(:mod:`gradcheck.patches`), for this thread and only while a diagnosis runs. A reentrant call
with no input that requires grad is left as it is: its output carries no gradient, for the
user's own backward too, and the checks must see that cut.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from . import patches


class NonReentrant:
    """Counts the reentrant checkpoint calls it ran as non-reentrant (:func:`non_reentrant`)."""

    def __init__(self) -> None:
        self.calls = 0
        self.reentrant = _checkpoint_function()  # looked up once, not at every apply

    @property
    def note(self) -> str | None:
        if not self.calls:
            return None
        return (f"{self.calls} reentrant torch.utils.checkpoint call(s) ran as non-reentrant "
                f"during gradcheck's passes: the same gradient, which torch.autograd.grad "
                f"cannot take through the reentrant kind (your own loss.backward() can)")

    def __call__(self, call_next: Callable[..., Any], cls: Any, *args: Any,
                 **kwargs: Any) -> Any:
        if self.reentrant is None or cls is not self.reentrant or kwargs or len(args) < 2:
            return call_next(cls, *args, **kwargs)
        function, preserve, *inputs = args
        if not (torch.is_grad_enabled() and any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)):
            return call_next(cls, *args, **kwargs)
        self.calls += 1
        return torch.utils.checkpoint.checkpoint(function, *inputs, use_reentrant=False,
                                                 preserve_rng_state=bool(preserve))


def _checkpoint_function() -> Any:
    import torch.utils.checkpoint as ck

    return getattr(ck, "CheckpointFunction", None)


@contextlib.contextmanager
def non_reentrant() -> Iterator[NonReentrant]:
    """While the block runs, this thread's reentrant checkpoints run as non-reentrant."""
    conv = NonReentrant()
    with patches.FUNCTION_APPLY.subscribe(conv):
        yield conv

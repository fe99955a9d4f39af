"""The words of a break: what each cause is called, how to fix it, what each probe kind reads as,
and one sentence for a break event. Pure, and below the records (a :class:`BreakEvent` describes
itself with these), so nothing here imports a record."""
from __future__ import annotations

from typing import Any

# -- breaks ---------------------------------------------------------------------------------------

#: Break causes the locator names, and how they read.
CAUSES = {
    "non_autograd_collective": "a torch.distributed collective, which autograd does not see "
                               "(the autograd-aware ones are in torch.distributed.nn.functional)",
    "no_grad": "no_grad region",
    "grad_mode_off": "grad mode switched off by a call (not a with-block)",
    "inference_mode": "inference_mode region",
    "detach": ".detach()",
    "data_read": ".data read",
    "data_write": ".data write",
    "requires_grad_false": "requires_grad_(False)",
    "non_differentiable": "non-differentiable op",
    "int_cast": "integer/bool cast",
    "python_roundtrip": "round trip through Python",
    "numpy_roundtrip": "round trip through NumPy",
    "decorated_no_grad": "entry point decorated with @torch.no_grad()",
    "reentrant_checkpoint": "reentrant checkpoint with no input requiring grad",
    "distribution_sample": "a torch.distributions .sample() (drawn under no_grad)",
    "copy_constructor": "a copy by torch.tensor() / new_tensor() (values only, no graph)",
    "inplace_no_grad": "in-place write under no_grad",
    "disconnected_randomness": "disconnected randomness",
    "zero_grad_op": "op passes exactly zero gradient",
    "constant_zero": "multiplied by a constant exact zero (structural)",
    "nonfinite_backward": "op produces NaN/Inf in backward",
    "custom_backward": "a custom autograd.Function's backward does not match its forward",
    "gradient_hook": "a gradient hook changes the gradient (register_hook)",
    "module_hook": "a module backward hook changes the gradient (register_full_backward_hook)",
    "wrong_vjp": "an op's backward is not the derivative of its forward (found numerically)",
    "unknown": "unclassified op",
}

#: What to change, per break cause (the report's break panel and the terminal say it).
FIXES = {
    "non_autograd_collective": "use the autograd-aware collectives of "
                               "torch.distributed.nn.functional (all_reduce, all_gather) here",
    "no_grad": "remove the `with torch.no_grad()` block around this line (or move the sampling "
               "out of it); every site listed must change",
    "grad_mode_off": "remove the torch.set_grad_enabled(False) call, or switch grad mode back on "
                     "before the sampler runs",
    "inference_mode": "do not sample under torch.inference_mode(): its tensors can never carry "
                      "gradient; use nothing (or no_grad only where no gradient is wanted)",
    "detach": "drop the .detach() here (if it is meant to truncate backprop, as DRaFT-K does, "
              "no gradient reaches z0 by design)",
    "data_read": "use the tensor itself instead of its .data",
    "data_write": "write out of place (x = x + d) instead of through .data",
    "requires_grad_false": "do not call requires_grad_(False) on a value computed from z0",
    "non_differentiable": "replace the op by a differentiable surrogate (a softmax-weighted "
                          "average instead of argmax, a sigmoid instead of a comparison)",
    "int_cast": "keep the value in a floating dtype: integer and bool tensors carry no gradient",
    "python_roundtrip": "keep the value a tensor: no .item(), float(), int() or .tolist() on a "
                        "value computed from z0",
    "numpy_roundtrip": "keep the computation in torch (no .numpy(), np.asarray)",
    "decorated_no_grad": "remove the @torch.no_grad() / @torch.inference_mode() decorator from "
                         "the entry point (or diagnose with allow_grad=True to see what else "
                         "blocks it); every site listed must change",
    "reentrant_checkpoint": "call torch.utils.checkpoint.checkpoint(..., use_reentrant=False)",
    "copy_constructor": "use the tensor itself, or x.clone() for a copy that keeps the gradient; "
                        "torch.tensor(x), x.new_tensor(x) and torch.as_tensor of another "
                        "tensor copy its values only",
    "distribution_sample": "draw with .rsample() (the reparameterised sample): its gradient "
                           "reaches the distribution's parameters; .sample() never passes one",
    "inplace_no_grad": "do the in-place update with grad mode on, or out of place",
    "disconnected_randomness": "derive the step noise from a learnable tensor (mode "
                               "learnable_step_noise) or leave it out of what you optimise",
    "zero_grad_op": "round/floor/sign pass zero gradient: use a straight-through estimator, "
                    "x + (x.round() - x).detach()",
    "constant_zero": "a factor is exactly zero (a zero sigma, weight or mask): check the schedule "
                     "or the mask",
    "nonfinite_backward": "keep the op's input inside its domain (sqrt/log of 0: add an epsilon "
                          "or clamp) so its backward stays finite",
    "custom_backward": "fix the custom autograd.Function's backward; check it with "
                       "torch.autograd.gradcheck in float64",
    "gradient_hook": "remove or fix the register_hook callback that changes the gradient",
    "module_hook": "remove or fix the module's backward hook that changes the gradient",
    "wrong_vjp": "check the ops between these probes with torch.autograd.gradcheck in float64",
    "unknown": "look at the op on this line: it cuts the gradient",
}

KIND_WORDS = {"z0": "z0", "x_T": "x_T", "state": "state update", "step_noise": "step noise",
              "denoiser_in": "denoiser input", "denoiser_out": "denoiser output",
              "output": "output", "loss": "loss", "custom": "custom probe"}

_VERBS = {"bias": "is bypassed", "escape": "escapes", "randomness": "takes in fresh noise",
          "zero": "becomes exactly zero", "nonfinite": "becomes non-finite"}


def break_where(ev: Any) -> str:
    """'step 2 (denoiser output -> state update)'."""
    head = f"step {ev.step}" if ev.step is not None else "before the first step"
    if ev.before_kind or ev.after_kind:
        a = KIND_WORDS.get(ev.before_kind or "", ev.before or "start")
        b = KIND_WORDS.get(ev.after_kind or "", ev.after or "end")
        head += f" ({a} -> {b})"
    return head


def describe_break(ev: Any) -> str:
    """'breaks at step 2 (denoiser output -> state update), op detach at my_sampler.py:41
    (cause: .detach())'."""
    at = (f" at {ev.location}" if ev.location else "") + \
        (f" on rank {ev.rank}" if ev.rank is not None else "")
    cause = CAUSES.get(ev.cause, ev.cause)
    detail = f"; {ev.detail}" if ev.detail else ""
    return (f"{_VERBS.get(ev.kind, 'breaks')} at {break_where(ev)}, op {ev.op}{at} "
            f"(cause: {cause}{detail})")

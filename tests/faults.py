"""The fault catalogue: ways real sampler code breaks the gradient path, each injectable at several
positions of the RES sampler, with the step and cause the break locator must name.

Used by tests/test_fault_catalogue.py and benchmarks/fault_catalogue.py. Every fault is written as
plain user code here, so the locator's ``file:line`` points into this file.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

import gradcheck
from gradcheck.sampling import LearnableStepNoise, SamplerConfig, sample_res

#: Where a fault is injected: the x_T scaling, the state after the first / a middle / the last
#: solver step, the final clean denoiser call, the derivation of a step's noise (learnable mode).
POSITIONS = ("x_T", "first", "middle", "last", "final", "noise")


# -- the faults: tensor -> tensor, as they appear in the field -------------------------------

def f_no_grad(x):
    with torch.no_grad():
        return x * 1.0


def f_inference_mode(x):
    with torch.inference_mode():
        y = x * 1.0
    return y.clone()


def f_detach(x):
    return x.detach()


def f_data_read(x):
    return x.data


def f_data_write(x):
    y = x * 1.0
    y.data = x.data * 0.5
    return y


def f_round(x):
    return torch.round(x * 1e3) / 1e3


def f_argmax(x):
    idx = x.flatten(1).argmax(dim=1)
    return torch.nn.functional.one_hot(idx, x[0].numel()).to(x.dtype).view_as(x)


def f_compare(x):
    return (x > 0).to(x.dtype) * 2.0 - 1.0


def f_uint8(x):
    return (x.clamp(-128, 127) + 128).to(torch.uint8).to(x.dtype) - 128


def f_tolist(x):
    return torch.tensor(x.tolist(), dtype=x.dtype)


def f_numpy(x):
    return torch.from_numpy(x.detach().cpu().numpy().copy())


def f_item(x):
    return x / x.std().item()


def f_float(x):
    return x * (1.0 / float(x.abs().mean()))


@torch.no_grad()
def decorated_helper(x):
    return x * 1.0


def f_decorated(x):
    return decorated_helper(x)


def f_checkpoint(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return checkpoint(lambda s: x * s, torch.ones((), dtype=x.dtype), use_reentrant=True)


def f_inplace_no_grad(x):
    y = x * 1.0
    with torch.no_grad():
        y.mul_(0.5)
    return y


def f_clamp(x):
    return x.clamp(min=1e4)


def f_where(x):
    return torch.where(x.abs() > 1e9, x, torch.zeros_like(x) + 0.5)


def f_fresh_randn(x):
    return torch.randn_like(x)


def f_requires_grad_false(z):
    z.requires_grad_(False)
    return z


def f_data_inplace(x):  # thresholding code's habit: an in-place write through .data
    y = x * 1.0
    y.data.mul_(0.9)
    return y


def f_grad_mode_off(x):  # switched off by a call, never switched back on
    torch.set_grad_enabled(False)
    return x * 1.0


class _Skewed(torch.autograd.Function):
    """Identity forward; a backward 30% too large (a hand-written backward with a bug)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.3


def f_custom_backward(x):
    return _Skewed.apply(x)


def f_gradient_hook(x):  # a "stabilising" hook that rescales the gradient
    y = x * 1.0
    if y.requires_grad:
        y.register_hook(lambda g: g * 1.3)
    return y


def f_checkpoint_drift(x):  # the recomputation reads a weight changed after the forward
    held = {"w": torch.ones((), dtype=x.dtype)}
    y = checkpoint(lambda u: u * held["w"], x, use_reentrant=False)
    held["w"] = torch.full((), 1.3, dtype=x.dtype)
    return y


@dataclass(frozen=True)
class Fault:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    cause: str
    positions: tuple[str, ...]
    #: positions where the fault is a break in learnable_step_noise mode too (default: all)
    learnable: tuple[str, ...] | None = None


STATE = ("x_T", "first", "middle", "last", "final")
ALL = STATE + ("noise",)

FAULTS = [
    Fault("no_grad", f_no_grad, "no_grad", ALL),
    Fault("inference_mode", f_inference_mode, "inference_mode", ALL),
    Fault("detach", f_detach, "detach", ALL),
    Fault("data_read", f_data_read, "data_read", ALL),
    Fault("data_write", f_data_write, "data_write", ALL),
    Fault("requires_grad_false", f_requires_grad_false, "requires_grad_false", ("x_T", "noise")),
    Fault("round", f_round, "non_differentiable", ALL),
    Fault("argmax", f_argmax, "non_differentiable", ALL),
    Fault("comparison", f_compare, "non_differentiable", ALL),
    Fault("uint8_roundtrip", f_uint8, "int_cast", ALL),
    Fault("tolist_roundtrip", f_tolist, "python_roundtrip", ALL),
    Fault("numpy_roundtrip", f_numpy, "numpy_roundtrip", ALL),
    Fault("item_scalar", f_item, "python_roundtrip", ALL),
    Fault("float_scalar", f_float, "python_roundtrip", ALL),
    Fault("decorated_no_grad", f_decorated, "decorated_no_grad", ALL),
    Fault("reentrant_checkpoint", f_checkpoint, "reentrant_checkpoint", ALL),
    Fault("inplace_no_grad", f_inplace_no_grad, "inplace_no_grad", ALL),
    # a saturated x_T in learnable mode is no break: z0 still gets its exact, non-zero gradient
    # through the step noises (the x_T path is legitimately flat), so nothing is to be detected
    Fault("clamp_saturates", f_clamp, "zero_grad_op", STATE, STATE[1:]),
    Fault("where_drops_branch", f_where, "zero_grad_op", STATE, STATE[1:]),
    Fault("fresh_randn_noise", f_fresh_randn, "disconnected_randomness", ("noise",)),
    Fault("data_inplace", f_data_inplace, "data_write", ALL),
    Fault("grad_mode_off", f_grad_mode_off, "grad_mode_off", ALL),
    # connected but wrong: found by the numeric check, located by VJP checks and bisection
    Fault("custom_backward", f_custom_backward, "custom_backward", ALL),
    Fault("gradient_hook", f_gradient_hook, "gradient_hook", ALL),
    Fault("checkpoint_drift", f_checkpoint_drift, "wrong_vjp", ALL),
]


def expected_step(position: str, n: int) -> int:
    """The sampler step the locator must name for a fault at ``position`` (N solver steps)."""
    return {"x_T": 0, "first": 0, "middle": n // 2, "last": n - 1, "final": n,
            "noise": n // 2}[position]


class FaultySampler:
    """The RES sampler with one fault injected at one position. ``mode`` is ``default`` or
    ``learnable_step_noise`` (the ``noise`` position needs the latter)."""

    def __init__(self, den, fault: Fault | None, position: str | None, *, solver: str = "2ab",
                 steps: int = 4, mode: str = "default", seed: int = 0) -> None:
        self.den, self.fault, self.position = den, fault, position
        self.mode = mode
        self.config = SamplerConfig(solver=solver, steps=steps)
        self.n = self.config.num_solver_steps
        self.seed = seed

    def _apply(self, where: str, x: torch.Tensor) -> torch.Tensor:
        if self.fault is not None and self.position == where:
            return self.fault.fn(x)
        return x

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        cfg, n = self.config, self.n
        z = gradcheck.probe(z, "z0", kind="z0")
        if self.fault is not None and self.fault.name == "requires_grad_false":
            x_T = cfg.sigma_max * self._apply("x_T", z)
        else:
            x_T = self._apply("x_T", cfg.sigma_max * z)
        calls = {"k": 0}
        total_calls = (2 * n if cfg.solver == "2mid" else n) + 1

        def den(x, sigma):
            k = calls["k"]
            calls["k"] += 1
            out = self.den(x, sigma)
            return self._apply("final", out) if k == total_calls - 1 else out

        def callback(d):
            i = d["i"]
            for pos, at in (("first", 0), ("middle", n // 2), ("last", n - 1)):
                if i == at and self.position == pos:
                    return self._apply(pos, d["x"])
            return None

        noise = None
        churn = 0.0
        if self.mode == "learnable_step_noise":
            derive = LearnableStepNoise(z, self.seed)
            churn = 40.0

            def noise(i, x):
                if i == n // 2 and self.position == "noise":
                    if self.fault.name == "requires_grad_false":
                        self.fault.fn(z)
                        return derive(i, x)
                    return self.fault.fn(derive(i, x))
                return derive(i, x)

        return sample_res(den, x_T, cfg.sigmas(), solver=cfg.solver, s_churn=churn,
                          step_noise=noise, callback=callback)


def cases(solvers=("2ab", "2mid", "1euler"), modes=("default", "learnable_step_noise")):
    """Every (fault, position, solver, mode) the catalogue injects."""
    for fault in FAULTS:
        for pos in fault.positions:
            for solver in solvers:
                for mode in modes:
                    if pos == "noise" and mode != "learnable_step_noise":
                        continue
                    if mode == "learnable_step_noise" and fault.learnable is not None \
                            and pos not in fault.learnable:
                        continue
                    yield fault, pos, solver, mode


def run_case(den, fault, pos, solver, mode, z0, target):
    """Diagnose one injected fault; returns (report, detected, right_step, right_cause).

    The loss is MSE to a fixed ``target``: with the default baseline (the same sampler from other
    noise), a fault that makes the output constant also makes the baseline equal to it, and the
    diagnosis (rightly) reports a stationary loss instead of the fault."""
    steps = 8 if solver == "2mid" else 4
    smp = FaultySampler(den, fault, pos, solver=solver, steps=steps, mode=mode)
    rep = gradcheck.diagnose(smp, z0, mode=mode, target=target, optim_steps=1)
    prim = rep.locator.primary if rep.locator else None
    detected = not rep.passed
    right_step = prim is not None and prim.step == expected_step(pos, smp.n)
    right_cause = prim is not None and prim.cause == fault.cause
    return rep, detected, right_step, right_cause

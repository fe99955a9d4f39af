"""A second sampler family for the fault catalogue: a variance-preserving DDIM loop (eta = 0) around
an epsilon-predicting MLP, written the way such loops are written outside this repo (a linear beta
schedule, alphas_cumprod, x0 from eps, no RES, no Karras sigmas). Each fault of tests/faults.py is
injected into the state after a step, into the model's output, or into the x0 prediction.
"""
from __future__ import annotations

import math

import torch

import gradcheck

from .faults import FAULTS, Fault

#: Where a fault goes in the VP loop: the state after the first / a middle / the last step, the
#: network's epsilon at a middle step, the x0 prediction at a middle step.
VP_POSITIONS = ("first", "middle", "last", "eps", "x0")
#: Faults that act on a state-like tensor (the noise-derivation fault has no place here).
VP_FAULTS = [f for f in FAULTS if f.name not in ("fresh_randn_noise", "requires_grad_false")]


class EpsMLP(torch.nn.Module):
    """eps(x, t): an MLP on the flattened sample and a sinusoidal embedding of t (seeded)."""

    def __init__(self, dim: int = 64, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.inp = torch.nn.Linear(dim + 8, hidden)
        self.mid = torch.nn.Linear(hidden, hidden)
        self.out = torch.nn.Linear(hidden, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / math.sqrt(p.shape[-1])))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        freqs = torch.arange(4, dtype=x.dtype, device=x.device)
        emb = torch.cat([torch.sin(t * 10 ** -freqs), torch.cos(t * 10 ** -freqs)])  # [8]
        h = torch.cat([x.reshape(b, -1), emb.expand(b, 8)], dim=1)
        h = torch.nn.functional.silu(self.inp(h))
        h = torch.nn.functional.silu(self.mid(h))
        return self.out(h).reshape(x.shape)


class VPSampler:
    """DDIM (eta = 0) on a linear beta schedule: x_T = z0; per step eps = model(x, t),
    x0 = (x - sqrt(1 - a) eps) / sqrt(a), x = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""

    mode = "default"

    def __init__(self, model: torch.nn.Module, steps: int = 6, fault: Fault | None = None,
                 position: str | None = None) -> None:
        self.model = gradcheck.instrument(model)
        self.steps, self.fault, self.position = steps, fault, position
        betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
        self.alphas = torch.cumprod(1 - betas, 0)
        self.ts = torch.linspace(999, 0, steps + 1).round().long()

    def _apply(self, where: str, at: int, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.fault is not None and self.position == where and i == at:
            return self.fault.fn(x)
        return x

    def __call__(self, z0: torch.Tensor) -> torch.Tensor:
        n = self.steps
        x = gradcheck.probe(z0, "x_T", step=0, kind="x_T")
        for i in range(n):
            t, t_prev = self.ts[i], self.ts[i + 1]
            a = self.alphas[t].to(x)
            a_prev = self.alphas[t_prev].to(x) if i + 1 < n else torch.ones((), dtype=x.dtype)
            eps = self._apply("eps", n // 2, i, self.model(x, t.to(x.dtype) / 1000))
            x0 = self._apply("x0", n // 2, i, (x - (1 - a).sqrt() * eps) / a.sqrt())
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            for pos, at in (("first", 0), ("middle", n // 2), ("last", n - 1)):
                x = self._apply(pos, at, i, x)
            x = gradcheck.probe(x, f"x[{i + 1}]", step=i + 1, kind="state")
        return x


def vp_expected_step(position: str, n: int) -> int:
    """The step the locator must name (probes: x_T is step 0, the model call i is step i, the
    state after step i is step i + 1)."""
    return {"first": 0, "middle": n // 2, "last": n - 1, "eps": n // 2, "x0": n // 2}[position]


#: Not a break in this loop: x0 only enters the state through sqrt(a_prev) * x0, and these
#: faults make x0 piecewise constant (argmax, a comparison, a uint8 cast) or saturate it (a
#: clamp, a where that drops it), so the state depends on z0 through eps alone, with its exact
#: gradient: reverse mode is right, nothing is cut that the loss could see (as a saturated x_T
#: in the RES sampler's learnable mode). They stay in the catalogue's healthy side.
NOT_A_BREAK = {("argmax", "x0"), ("comparison", "x0"), ("uint8_roundtrip", "x0"),
               ("clamp_saturates", "x0"), ("where_drops_branch", "x0")}


def vp_cases():
    for fault in VP_FAULTS:
        for pos in VP_POSITIONS:
            if (fault.name, pos) not in NOT_A_BREAK:
                yield fault, pos


def run_vp_case(model, fault, pos, z0, target, steps: int = 6):
    """Diagnose one injected fault in the VP loop: (report, detected, right step, right cause)."""
    rep = gradcheck.diagnose(VPSampler(model, steps, fault, pos), z0, target=target,
                             optim_steps=1)
    prim = rep.locator.primary if rep.locator else None
    return (rep, not rep.passed, prim is not None and prim.step == vp_expected_step(pos, steps),
            prim is not None and prim.cause == fault.cause)

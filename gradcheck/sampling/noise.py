"""Where each step's churn noise comes from: the four noise modes.

- ``default``: no per-step noise; the gradient reaches z0 through ``x_T = sigma_max * z0`` only.
- ``learnable_step_noise``: eps_i = S_i P_i z0, a fixed seeded permutation P_i of each sample's
  elements followed by seeded sign flips S_i. The map is orthogonal, so eps_i is *exactly*
  N(0, I) whenever z0 is, and it passes gradient back to z0 unchanged in norm
  (dL/dz0 += P_i^T S_i dL/deps_i). P_i is a uniformly random single cycle (a derangement), so
  no element of eps_i is +-the same element of z0: each pair (z0_j, eps_i,j) is independent.
  The vector eps_i is of course not independent of z0 as a whole: it is a deterministic function
  of it, which is the point (the sampler stays a function of z0 alone, and every injected noise
  can be optimised through z0).
- ``fresh_noise``: the stock behaviour, independent ``randn`` per step from a seeded generator:
  it does not block the gradient to z0 through the state, but the step noise is not connected to
  z0 and cannot be optimised.
- ``independent_leaves``: every step noise is its own leaf tensor with ``requires_grad`` (as in
  Direct Noise Optimization), created on first use from a seeded generator and kept across calls.

Seeds: every draw comes from a ``torch.Generator`` on the CPU seeded from (seed, stream, step), then
moved to the device, so the same seed gives the same numbers on any device.
"""
from __future__ import annotations

import torch

from ..modes import BUILTIN_MODES as NOISE_MODES  # noqa: F401 - re-exported (gradcheck.modes)

_STREAM_PERM, _STREAM_FRESH, _STREAM_LEAF = 1, 2, 3


def sub_seed(seed: int, stream: int, index: int) -> int:
    """A deterministic 63-bit seed for draw ``index`` of ``stream`` under the master ``seed``."""
    return (int(seed) * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (2**63)


def path_cotangent(out: torch.Tensor, seed: int, rank: int = 0) -> torch.Tensor:
    """The seeded random output direction the path probe (and the locator) send back."""
    g = torch.Generator().manual_seed(sub_seed(seed, 5, rank))
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)


def _gen(seed: int, stream: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sub_seed(seed, stream, index))


class LearnableStepNoise:
    """eps_i = signs_i * z0[:, perm_i]: a seeded orthogonal transform of z0 per step."""

    def __init__(self, z0: torch.Tensor, seed: int) -> None:
        self.z0 = z0
        self.seed = seed
        self._maps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def transform(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(perm [d], signs [d]) of step i, d = elements per sample; cached per step.
        eps[:, j] = signs[j] * z0[:, perm[j]]."""
        if i not in self._maps:
            d = self.z0[0].numel()
            g = _gen(self.seed, _STREAM_PERM, i)
            order = torch.randperm(d, generator=g)
            perm = torch.empty_like(order)
            perm[order] = order.roll(-1)  # one d-cycle: element order[k] takes order[k+1]
            signs = torch.randint(0, 2, (d,), generator=g).mul_(2).sub_(1)
            self._maps[i] = (perm.to(self.z0.device),
                             signs.to(device=self.z0.device, dtype=self.z0.dtype))
        return self._maps[i]

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        perm, signs = self.transform(i)
        flat = self.z0.reshape(self.z0.shape[0], -1)  # [B, d]
        return (flat[:, perm] * signs).reshape(self.z0.shape)  # [B, ...] as z0


class FreshStepNoise:
    """Independent seeded ``randn`` per step, not connected to anything learnable."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        eps = torch.randn(x.shape, generator=_gen(self.seed, _STREAM_FRESH, i), dtype=torch.float64)
        return eps.to(device=x.device, dtype=x.dtype)


class LeafStepNoise:
    """One learnable leaf per step, created on first use and kept (``leaves`` maps step -> leaf)."""

    def __init__(self, seed: int, dtype: torch.dtype) -> None:
        self.seed = seed
        self.dtype = dtype
        self.leaves: dict[int, torch.Tensor] = {}

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        leaf = self.leaves.get(i)
        if leaf is None or leaf.shape != x.shape:
            eps = torch.randn(x.shape, generator=_gen(self.seed, _STREAM_LEAF, i),
                              dtype=torch.float64)
            leaf = eps.to(device=x.device, dtype=self.dtype).requires_grad_(True)
            self.leaves[i] = leaf
        return leaf


class StepNoiseSource:
    """The step noise of a noise mode, made per sampler call: derived from that call's z0
    (``learnable_step_noise``), seeded fresh draws (``fresh_noise``), one learnable leaf per step
    kept across calls (``independent_leaves``), or none (``default`` and anything else)."""

    def __init__(self, mode: str, seed: int) -> None:
        self.mode = mode
        self.seed = int(seed)
        self.leaf_noise: LeafStepNoise | None = None

    def for_call(self, z0: torch.Tensor):
        """The ``(i, x) -> eps`` of one call with initial noise ``z0`` (None: no step noise)."""
        if self.mode == "learnable_step_noise":
            return LearnableStepNoise(z0, self.seed)
        if self.mode == "fresh_noise":
            return FreshStepNoise(self.seed)
        if self.mode == "independent_leaves":
            if self.leaf_noise is None:
                self.leaf_noise = LeafStepNoise(self.seed, z0.dtype)
            return self.leaf_noise
        return None

    @property
    def leaves(self) -> list[torch.Tensor]:
        """The step-noise leaves made so far (``independent_leaves``), in step order."""
        if self.leaf_noise is None:
            return []
        return [self.leaf_noise.leaves[k] for k in sorted(self.leaf_noise.leaves)]

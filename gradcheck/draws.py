"""A sampler's own step-noise draws (``torch.randn_like(x)``, ``torch.randn(x.shape)`` inside
it: Cosmos's churn, a hand-written ancestral loop) made into the step noise of a noise mode,
for samplers that take no ``noise_sampler`` (:func:`gradcheck.adapters.cosmos`,
:func:`gradcheck.adapters.function`, ``noise=``).

While the adapted sampler runs, on its thread only (the one patch point per torch function,
:mod:`gradcheck.patches`), each draw shaped like z0 (an unseeded one: a draw from a generator
object of the user's is theirs) becomes draw ``i`` of the mode's source:

- ``learnable``: eps_i = a seeded orthogonal map of z0 (:class:`~gradcheck.sampling.noise.
  LearnableStepNoise`): exactly N(0, I) when z0 is, differentiable, optimised with z0;
- ``fresh``: a seeded ``randn`` per draw (reproducible, not connected to z0);
- ``leaves``: one learnable leaf per draw, kept across calls (``.leaves``);
- ``own``: the sampler's draws as they are (not replaced; the randomness scan finds them).

Each replaced draw is probed as step noise ``eps[i]``, numbered by draw: the ``step_noise``
check then sees whether every one receives gradient. Draws of another shape (a dropout mask, a
random crop) are left alone.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from . import patches
from .modes import NOISE_TO_MODE
from .probes import probe
from .sampling.noise import StepNoiseSource


class DrawReplacer:
    """The draws of one adapted sampler, made into ``mode``'s step noise (see the module)."""

    def __init__(self, mode: str, seed: int) -> None:
        self.source = StepNoiseSource(mode, seed)
        self.replaced = 0  # draws replaced in the last call

    @property
    def leaves(self) -> list[torch.Tensor]:
        return self.source.leaves

    @contextlib.contextmanager
    def replacing(self, z0: torch.Tensor) -> Iterator[None]:
        """While the block runs, this thread's unseeded draws shaped like ``z0`` are step
        noise."""
        noise = self.source.for_call(z0)
        if noise is None:
            yield
            return
        self.replaced = 0
        like = z0.shape

        def step_noise(shape: Any, dtype: Any, device: Any) -> torch.Tensor:
            i = self.replaced
            self.replaced += 1
            ref = torch.empty(0, dtype=dtype or z0.dtype, device=device or z0.device)
            eps = noise(i, ref.new_empty(like))
            eps = eps.to(dtype=ref.dtype, device=ref.device)
            return probe(eps, f"eps[{i}]", step=i, kind="step_noise")

        def on_randn_like(call_next: Callable[..., Any], x: Any, *a: Any, **k: Any) -> Any:
            if a or k.get("generator") is not None or not isinstance(x, torch.Tensor) \
                    or tuple(x.shape) != tuple(like) or not x.is_floating_point():
                return call_next(x, *a, **k)
            return step_noise(like, k.get("dtype") or x.dtype, k.get("device") or x.device)

        def on_randn(call_next: Callable[..., Any], *a: Any, **k: Any) -> Any:
            shape = tuple(a[0]) if len(a) == 1 and isinstance(a[0], (tuple, list, torch.Size)) \
                else tuple(a)
            if k.get("generator") is not None or k.get("out") is not None \
                    or shape != tuple(like) or not all(isinstance(n, int) for n in shape):
                return call_next(*a, **k)
            return step_noise(like, k.get("dtype"), k.get("device"))

        with patches.RANDN_LIKE.subscribe(on_randn_like), patches.RANDN.subscribe(on_randn):
            yield


def draw_replacer(noise: str, seed: int) -> tuple[DrawReplacer | None, str]:
    """``noise=`` of an adapter: the replacer (None for ``own``) and the diagnosis mode."""
    mode = NOISE_TO_MODE[noise]
    return (None if noise == "own" else DrawReplacer(mode, seed)), mode

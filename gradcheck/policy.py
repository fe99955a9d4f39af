"""How a diagnosis behaves across processes, as one object handed to every stage.

:class:`Local` is the trivial policy of a single process: sums are the value, decisions are the
rank's own, nothing is merged. :class:`Sharded` is the policy under a torch.distributed process
group of 2+ ranks, where each rank holds one shard of z0: the built-in losses are the rank's share
of the global mean, scalars are summed over ranks, decisions that start more passes (the locator,
a re-measured numeric check) are taken by all ranks together, and rank 0 merges the records.
The stages never ask "am I distributed?": they call the policy.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .records import FlowReport


class Local:
    """A single process."""

    rank = 0
    world = 1

    def sum(self, x: float) -> float:
        return x

    def max(self, x: float) -> float:
        return x

    def any(self, flag: bool) -> bool:
        """Whether any rank says yes (every rank gets the same answer)."""
        return bool(flag)

    def mse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """MSE of the output ``a`` to ``b`` (this rank's part of the global mean)."""
        return torch.nn.functional.mse_loss(a, b.to(a.dtype))

    def numeric_kw(self) -> dict[str, Any]:
        """Extra arguments of :func:`gradcheck.numeric.directional_check`."""
        return {}

    def baseline_noise(self, z0: torch.Tensor, seed: int) -> torch.Tensor:
        """The noise the default baseline is sampled from (its own stream: never the user's
        ``randn(seed)`` draw), shaped like z0."""
        return torch.randn(z0.shape, generator=_baseline_generator(seed),
                           dtype=torch.float64).to(z0)

    def merge(self, report: FlowReport, sample_fn: Any) -> FlowReport:
        """The report the caller gets (rank 0: every rank's, merged)."""
        return report


class Sharded(Local):
    """Each of ``ctx.world`` ranks diagnoses its shard of z0 (see the module docs)."""

    def __init__(self, ctx: Any, shard_dim: int = 0) -> None:
        self.ctx = ctx
        self.rank = ctx.rank
        self.world = ctx.world
        self.shard_dim = shard_dim  # the dimension z0 is split along
        self._numel: float | None = None
        self._sizes: list[int] | None = None

    def shard_of(self, like: torch.Tensor,
                 draw: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """This rank's part of ``draw(whole_shape)``: the tensor one process would draw for the
        whole z0, cut where this rank's shard ``like`` lies (shards may differ in size)."""
        dim = self.shard_dim
        if self._sizes is None:
            self._sizes = self.ctx.all_gather_int(int(like.shape[dim]))  # a collective, once
        sizes = self._sizes
        shape = list(like.shape)
        shape[dim] = sum(sizes)
        return draw(shape).narrow(dim, sum(sizes[:self.rank]), sizes[self.rank])

    def baseline_noise(self, z0: torch.Tensor, seed: int) -> torch.Tensor:
        """This rank's part of the single-process baseline noise, so N processes compute the
        loss one process does."""
        g = _baseline_generator(seed)
        return self.shard_of(z0, lambda shape: torch.randn(shape, generator=g,
                                                            dtype=torch.float64)).to(z0)

    def sum(self, x: float) -> float:
        return self.ctx.sum(x)

    def max(self, x: float) -> float:
        return self.ctx.max(x)

    def any(self, flag: bool) -> bool:
        return self.ctx.any(flag)

    def mse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sum over the shard / global element count: dL/dz0 of every shard is then the
        # single-process gradient of the whole batch (a loss_fn must do the same)
        if self._numel is None:
            self._numel = self.sum(float(a.numel()))  # a collective, once
        return (a - b.to(a.dtype)).square().sum() / self._numel

    def numeric_kw(self) -> dict[str, Any]:
        return {"reduce": self.sum, "shard_of": self.shard_of}

    def merge(self, report: FlowReport, sample_fn: Any) -> FlowReport:
        """Rank 0 gets every rank's record and returns the merged report (per-rank detail in
        ``.ranks``); the other ranks return their own, marked with the world size."""
        from .distributed import merge

        t0 = time.perf_counter()
        every = self.ctx.gather(report.to_dict())
        report.world_size = self.world
        report.parallel = getattr(sample_fn, "parallel_layout", None)
        if every is None:
            return report
        merged = merge([FlowReport.from_dict(d) for d in every],
                       shard_dim=getattr(sample_fn, "shard_dim", 0), layout=report.parallel)
        merged.handles = report.handles
        merged.timings = dict(report.timings, merge_s=time.perf_counter() - t0)
        return merged


def _baseline_generator(seed: int) -> torch.Generator:
    from .sampling.noise import sub_seed

    return torch.Generator().manual_seed(sub_seed(seed, 4, 0))


def current(shard_dim: int = 0) -> Local:
    """The policy of the process group this process is in (:class:`Local` outside one);
    ``shard_dim``: the dimension z0 is split along there."""
    from .distributed import context

    ctx = context()
    return Local() if ctx is None else Sharded(ctx, shard_dim)

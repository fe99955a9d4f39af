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
from typing import Any

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

    def merge(self, report: FlowReport, sample_fn: Any) -> FlowReport:
        """The report the caller gets (rank 0: every rank's, merged)."""
        return report


class Sharded(Local):
    """Each of ``ctx.world`` ranks diagnoses its shard of z0 (see the module docs)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.rank = ctx.rank
        self.world = ctx.world
        self._numel: float | None = None

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
        return {"reduce": self.sum, "direction_stream": self.rank}

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


def current() -> Local:
    """The policy of the process group this process is in (:class:`Local` outside one)."""
    from .distributed import context

    ctx = context()
    return Local() if ctx is None else Sharded(ctx)

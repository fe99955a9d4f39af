"""The op detail of the record pass: which line of the user's code made each autograd node (during
the forward pass), and how large the gradient at each node's output was (during the backward pass).

Both ride on the one recorded forward+backward; neither makes a pass of its own:

- :class:`OpSources` is a ``TorchFunctionMode`` that notes, for every tensor an op returns with a
  ``grad_fn``, the first frame outside torch and gradcheck (``path:line``). Nodes are keyed by
  ``(id, sequence number)``, so a node freed during the forward cannot lend its line to a later
  one at the same address.
- :class:`OpGrads` puts a pre-hook on every node of the op-level view that stores the norm of the
  gradient arriving at the node's output as a 0-d tensor (no device sync); the norms are read
  once, after the backward.

Cost: together about 2x the record phase on the built-in model, whose ops take microseconds, and
about 1.3x on a model with 10x its parameters (``benchmarks/overhead.py``); relatively less on big
models.
``auto`` keeps it bounded in absolute terms: when the recorded forward runs past
:data:`AUTO_BUDGET_S`, the sources are dropped and the gradients not hooked (the report says so,
and ``op_detail="always"`` records them anyway).
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .records import OpRegion
from .torch_internals import is_user_file, rel_path

POLICIES = ("auto", "always", "never")
#: ``auto`` records the op detail while the recorded forward pass takes at most this many seconds
AUTO_BUDGET_S = 2.0


def node_key(node: Any) -> tuple[int, int]:
    return id(node), node._sequence_nr()


class OpSources(TorchFunctionMode):
    """Notes the user's ``path:line`` that made each autograd node during the forward pass."""

    def __init__(self, budget_s: float | None) -> None:
        super().__init__()
        self.where: dict[tuple[int, int], tuple[str, str]] = {}
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.skipped: str | None = None
        self.failed = 0
        self._user: dict[str, bool] = {}
        self._n = 0

    def _location(self) -> str | None:
        f = sys._getframe(2)
        user = self._user
        while f is not None:
            name = f.f_code.co_filename
            ok = user.get(name)
            if ok is None:
                ok = user[name] = is_user_file(name)
            if ok:
                return f"{rel_path(name)}:{f.f_lineno}"
            f = f.f_back
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.skipped is None:
            try:
                self._note(out)
            except Exception:  # noqa: BLE001  the bookkeeping never breaks the user's code
                self.failed += 1
        return out

    def _note(self, out: Any) -> None:
        outs = out if isinstance(out, (tuple, list)) else (out,)
        loc = None
        for t in outs:
            gf = getattr(t, "grad_fn", None) if isinstance(t, torch.Tensor) else None
            if gf is None:
                continue
            k = node_key(gf)
            if k not in self.where:
                if loc is None:
                    loc = self._location() or "?"
                self.where[k] = (type(gf).__name__, loc)
        self._n += 1
        if self.budget_s is not None and self._n % 64 == 0 and \
                time.perf_counter() - self.t0 > self.budget_s:
            self.drop(f"the forward pass ran past {self.budget_s:g} s (op_detail='auto'); "
                      f"op_detail='always' (--op-detail always) records it anyway, at more "
                      f"time (about 2x the record on tiny models)")

    def drop(self, why: str) -> None:
        self.skipped = why
        self.where.clear()

    def sources(self, nodes: list[Any]) -> list[str | None]:
        out = []
        for n in nodes:
            hit = self.where.get(node_key(n))
            out.append(hit[1] if hit is not None and hit[0] == type(n).__name__ else None)
        return out


class OpGrads:
    """Pre-hooks on the op-level view's nodes: |dL/d(output)| at each, as 0-d tensors."""

    def __init__(self, regions: list[tuple[OpRegion, list[Any]]]) -> None:
        self.regions = regions
        self.stats: list[list[torch.Tensor | None]] = [[None] * len(nodes)
                                                       for _, nodes in regions]
        self.handles: list[Any] = []

    def install(self) -> list[Any]:
        for r, (_, nodes) in enumerate(self.regions):
            slot = self.stats[r]
            for i, n in enumerate(nodes):
                self.handles.append(n.register_prehook(self._hook(slot, i)))
        return self.handles

    @staticmethod
    def _hook(slot: list[torch.Tensor | None], i: int):
        def pre(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            with torch.no_grad():
                sq = None
                for g in grad_outputs:
                    if g is None or not g.is_floating_point():
                        continue
                    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
                    v = torch.linalg.vector_norm(g.detach(), dtype=acc).square()
                    sq = v if sq is None else sq + v.to(sq.dtype)
                if sq is not None:
                    slot[i] = sq
        return pre

    def materialise(self) -> None:
        """Write the norms into the regions: one transfer per device."""
        flat = [(r, i, t) for r, row in enumerate(self.stats) for i, t in enumerate(row)
                if t is not None]
        by_dev: dict[Any, list[tuple[int, int, torch.Tensor]]] = {}
        for item in flat:
            by_dev.setdefault(item[2].device, []).append(item)
        grads = [[None] * len(nodes) for _, nodes in self.regions]
        for items in by_dev.values():
            vals = torch.stack([t.double() for _, _, t in items]).sqrt().tolist()
            for (r, i, _), v in zip(items, vals):
                grads[r][i] = v
        for (reg, _), g in zip(self.regions, grads):
            reg.grads = g
        self.stats = []
        self.regions = [(reg, []) for reg, _ in self.regions]  # let the graph go

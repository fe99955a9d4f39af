"""The op detail of the record pass: which line of the user's code made each autograd node (during
the forward pass), and how large the gradient at each node's output was (during the backward pass).

Both ride on the one recorded forward+backward; neither makes a pass of its own:

- :class:`OpSources` is a ``TorchFunctionMode`` that notes, for every tensor an op returns with a
  ``grad_fn``, the first frame outside torch and gradcheck (``path:line``). Nodes are keyed by
  ``(id, sequence number)``, so a node freed during the forward cannot lend its line to a later
  one at the same address.
- the same mode puts a hook on every op's output tensors, which holds the gradient arriving there
  (small ones: :class:`gradcheck.gradstats.HeldGrads`) or its norm as a 0-d tensor (no device sync);
  :class:`OpGrads` reads the norms of the op-level view's nodes once, after the backward. In the
  record pass (``capture=True``) the small outputs get no hook: their gradient edges are inputs of
  the record's backward (:meth:`OpSources.capture_edges`), which hands their gradients over at
  the end.

Cost (``benchmarks/overhead.py``, ``results/overhead.json``): large relative to the record phase
of the tiny built-in model, whose ops take microseconds (a Python call per op and per op output),
small on models whose ops take milliseconds.
``auto`` keeps it bounded in absolute terms, and the same on any machine under any load: when the
recorded forward makes more than :data:`AUTO_BUDGET_OPS` torch calls, the sources are dropped and
the gradients not hooked (the report says so, and ``op_detail="always"`` records them anyway).
A count, not a clock: the same seed gives the same report on a busy machine.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode

from .gradstats import DEFER_BYTES, DEFER_NUMEL, CaptureBudget, HeldGrads
from .probes import ObservingHook, scalars_to_floats
from .records import OpRegion
from .torch_internals import is_user_file, rel_path

POLICIES = ("auto", "always", "never")
#: ``auto`` records the op detail while the recorded forward pass makes at most this many torch
#: calls (about 2 s of detail on an idle 2-core machine: the built-in model makes ~130 a step,
#: so 150 steps keep it)
AUTO_BUDGET_OPS = 20_000
#: with ``capture``, op outputs of at most this many elements get no hook: their gradients are
#: captured by the record's backward, all alive together when it returns, within CAPTURE_BYTES
#: (beyond it, hooks as before). A hook costs a Python call in the forward and one in the
#: backward, more than the op itself on a small model; a captured gradient cannot have its
#: memory reused by the rest of the backward, which costs more than the hook for larger
#: gradients (``benchmarks/capture_cost.py``: capture is the cheaper up to 4,096 elements, the
#: dearer at 16,384, no cheaper beyond): the same bounds as the small gradients a hook holds
#: (gradstats.DEFER_*)
CAPTURE_NUMEL = DEFER_NUMEL
CAPTURE_BYTES = DEFER_BYTES


def node_key(node: Any) -> tuple[int, int]:
    return id(node), node._sequence_nr()


class OpSources(TorchFunctionMode):
    """Notes the user's ``path:line`` that made each autograd node during the forward pass."""

    def __init__(self, budget_ops: int | None, grads: bool = True, capture: bool = False) -> None:
        super().__init__()
        # capture: the caller differentiates the small outputs' gradient edges itself (see
        # capture_edges); they get no hook: node key -> the output numbers left unhooked
        self.capture = capture
        self.unhooked: dict[tuple[int, int], list[int]] = {}
        self._budget = CaptureBudget(CAPTURE_NUMEL, CAPTURE_BYTES)
        self._captured: list[tuple[tuple[int, int], int]] = []
        self.where: dict[tuple[int, int], tuple[str, str]] = {}
        # |dL/d(output)| of each noted op, by a hook on the output tensor registered here (a
        # tensor hook costs a fifth of a node pre-hook registered after the forward)
        self.grads = grads
        self.hooks: list[Any] = []
        self.held = HeldGrads()
        self.squares: dict[tuple[tuple[int, int], int], torch.Tensor] = {}
        self.budget_ops = budget_ops
        self.skipped: str | None = None
        self.failed = 0
        self._user: dict[str, str] = {}
        self.label: str | None = None
        self._n = 0

    @contextlib.contextmanager
    def labelled(self, label: str | None) -> Iterator[OpSources]:
        """This mode, active; the ops made inside are located at ``label`` (not by the frame
        that made them) when one is given."""
        self.label = label
        try:
            with self:
                yield self
        finally:
            self.label = None

    def _location(self) -> str | None:
        if self.label is not None:
            return self.label
        f = sys._getframe(2)
        user = self._user  # file name -> its relative path for a user file, "" otherwise
        while f is not None:
            name = f.f_code.co_filename
            rel = user.get(name)
            if rel is None:
                rel = user[name] = rel_path(name) if is_user_file(name) else ""
            if rel:
                return f"{rel}:{f.f_lineno}"
            f = f.f_back
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # the common cases first, in few bytecodes: most calls return a tensor without a new
        # node (a property, a view of a constant) or exactly one tensor with one
        if self.skipped is None and (type(out) is not torch.Tensor or out.grad_fn is not None):
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
            new = k not in self.where
            if new:
                if loc is None:
                    loc = self._location() or "?"
                self.where[k] = (type(gf).__name__, loc)
            if self.grads and (new or len(outs) > 1):  # each output of a new node
                if self.capture and self._capturable(t):
                    self.unhooked.setdefault(k, []).append(t.output_nr)
                else:
                    self.hooks.append(t.register_hook(self._grad_hook((k, t.output_nr))))
        self._n += 1
        if self.budget_ops is not None and self._n > self.budget_ops:
            self.drop(f"the forward pass made more than {self.budget_ops:,} torch calls "
                      f"(op_detail='auto'); op_detail='always' (--op-detail always) records it "
                      f"anyway, at a Python call per op and per op output")

    def _grad_hook(self, key: tuple[tuple[int, int], int]) -> _OpHook:
        return _OpHook(key, self.held, self.squares)

    def _capturable(self, t: torch.Tensor) -> bool:
        """An output whose gradient the caller captures (no hook): a plain strided floating
        tensor of at most CAPTURE_NUMEL elements, while the captured gradients, all alive at
        once when the backward returns, stay within CAPTURE_BYTES."""
        return t.is_floating_point() and self._budget.take(t)

    def capture_edges(self, regions: list[tuple[OpRegion, list[Any]]]) -> list[Any]:
        """The gradient edges of the unhooked outputs of the regions' nodes, but for the ops
        marked not asked (``OpRegion.not_asked``: capturing their outputs would make the
        backward compute them); their gradients go to :meth:`deliver`, in this order."""
        from torch.autograd.graph import GradientEdge

        edges: list[Any] = []
        keys = self._captured = []
        unhooked = self.unhooked
        if not unhooked:
            return edges
        for reg, nodes in regions:
            skip = set(reg.not_asked) if reg.not_asked else ()
            for i, n in enumerate(nodes):
                k = node_key(n)
                nrs = unhooked.get(k)
                if nrs is None or i in skip:
                    continue
                for nr in nrs:
                    edges.append(GradientEdge(n, nr))
                    keys.append((k, nr))
                del unhooked[k]  # a node in two regions' lists: captured once
        return edges

    def deliver(self, grads: list[torch.Tensor | None]) -> None:
        """The gradients of :meth:`capture_edges`' edges: recorded as the hooks record."""
        held, squares = self.held, self.squares
        for key, g in zip(self._captured, grads):
            if g is not None:
                _OpHook(key, held, squares)(g)
        self._captured = []

    def grad_norms(self) -> dict[tuple[int, int], float]:
        """After the backward: node key -> |dL/d(outputs)| (the outputs' norms combined);
        lets go of the held gradients."""
        sq: dict[tuple[int, int], float] = {}
        for (k, _), row in self.held.flush(norms=(2,)).items():
            sq[k] = sq.get(k, 0.0) + row[0] ** 2
        if self.squares:
            keys = list(self.squares)
            vals = scalars_to_floats([self.squares[k] for k in keys])
            for (k, _), v in zip(keys, vals):
                sq[k] = sq.get(k, 0.0) + v
        self.squares = {}
        return {k: v ** 0.5 for k, v in sq.items()}

    def drop(self, why: str) -> None:
        self.skipped = why
        self.where.clear()
        self.grads = False
        for h in self.hooks:
            h.remove()
        self.held = type(self.held)()
        self.squares = {}
        self.unhooked = {}
        self._captured = []

    def sources(self, nodes: list[Any]) -> list[str | None]:
        out = []
        for n in nodes:
            hit = self.where.get(node_key(n))
            out.append(hit[1] if hit is not None and hit[0] == type(n).__name__ else None)
        return out


class _OpHook(ObservingHook):
    """The hook on an op's output: holds the gradient, or keeps its squared norm."""

    __slots__ = ("key", "held", "squares")

    def __init__(self, key: tuple[tuple[int, int], int], held: HeldGrads,
                 squares: dict[tuple[tuple[int, int], int], torch.Tensor]) -> None:
        self.key, self.held, self.squares = key, held, squares

    def __call__(self, g: torch.Tensor) -> None:
        if g is None or self.held.take(self.key, g) or not g.is_floating_point():
            return
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            self.squares[self.key] = torch.linalg.vector_norm(g.detach(), dtype=acc).square()


class OpGrads:
    """|dL/d(output)| at each node of the op-level view, from the tensor hooks that
    :class:`OpSources` put on every op's outputs during the forward pass: held small gradients
    are reduced all at once after the backward (:class:`gradcheck.gradstats.HeldGrads`), larger
    ones in the hook to a 0-d tensor; one transfer per device."""

    def __init__(self, regions: list[tuple[OpRegion, list[Any]]], sources: OpSources) -> None:
        self.regions = regions
        self.sources = sources

    def capture_edges(self) -> list[Any]:
        """The gradient edges the backward captures for the view's ops (see
        :meth:`OpSources.capture_edges`)."""
        return self.sources.capture_edges(self.regions)

    def deliver(self, grads: list[Any]) -> None:
        self.sources.deliver(grads)

    def materialise(self) -> None:
        """Write the norms into the regions and let the graph go."""
        norms = self.sources.grad_norms()
        for reg, nodes in self.regions:
            reg.grads = [norms.get(node_key(n)) for n in nodes]
        self.regions = [(reg, []) for reg, _ in self.regions]

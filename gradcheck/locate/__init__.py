"""The break locator: where, and why, the gradient path from the loss to z0 breaks.

Walking back from the loss cannot find a cut: the cut-off part is not in the graph. So the locator
re-runs the forward pass and looks from the forward side. Three parts, one job each:

- :mod:`.provenance` (torch): a ``TorchFunctionMode`` that follows z0-dependence and gradient
  connection through every op and records the first op that cut, bypassed or escaped it;
- :mod:`.backward` (torch): one hooked backward pass, where a gradient became exactly zero or
  non-finite (only when a probe says so);
- :mod:`.primary` (pure, no torch): which of those events explains the diagnosis, and which
  symptoms of a report call for the locator at all.

:func:`locate` (in :mod:`.run`) runs them. It runs only when a diagnosis found a problem (or when
asked), so healthy runs pay nothing. Importing this package does not import torch.
"""
from __future__ import annotations

from typing import Any

from .primary import ValueFacts, choose_primary, relevant_events, symptoms

__all__ = ["locate", "symptoms", "choose_primary", "relevant_events", "ValueFacts"]


def __getattr__(name: str) -> Any:
    if name == "locate":
        from .run import locate

        return locate
    raise AttributeError(f"module 'gradcheck.locate' has no attribute {name!r}")

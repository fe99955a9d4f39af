"""What an adapter returns: the user's sampler as ``z0 -> output``, with what the diagnosis
needs to know of it (its noise mode, words for the report, its step-noise leaves, and how to
rebuild it around a float64 copy of its denoiser for a shadow run)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .sampling.noise import StepNoiseSource


class AdaptedSampler:
    """A ``z0 -> output`` function made by an adapter. ``mode`` tells the diagnosis what the step
    noise should be; ``description`` and ``notes`` go into the report; ``leaves`` are the
    learnable step-noise leaves (``noise="leaves"``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, mode: str,
                 description: str, notes: list[str],
                 noise_source: StepNoiseSource | None = None,
                 rebuild: Callable[[Any], AdaptedSampler] | None = None,
                 denoiser: Any = None):
        self._fn = fn
        self.mode = mode
        self.description = description
        self.notes = notes
        self._noise_source = noise_source
        self._rebuild, self._denoiser = rebuild, denoiser
        self._cast: Any = None

    def at_dtype(self, dtype: torch.dtype,
                 wrap: Callable[[Any], Any] | None = None) -> AdaptedSampler | None:
        """The same sampler around its denoiser in ``dtype`` (a float64 shadow,
        :mod:`gradcheck.shadow`), the denoiser passed through ``wrap`` first if given; None
        where the denoiser cannot be cast. :meth:`close` it."""
        from .shadow import cast_denoiser

        cast = cast_denoiser(self._denoiser, dtype) if self._rebuild else None
        if cast is None:
            return None
        try:
            twin = self._rebuild(wrap(cast.den) if wrap else cast.den)
        except Exception:
            cast.close()
            raise
        twin._cast = cast
        twin.shadow_bytes = cast.nbytes
        return twin

    def close(self) -> None:
        """Undo what :meth:`at_dtype` did to the user's modules (a cast in place)."""
        if self._cast is not None:
            self._cast.close()

    @property
    def leaves(self) -> list[torch.Tensor]:
        return self._noise_source.leaves if self._noise_source is not None else []

    def __call__(self, z0: torch.Tensor) -> torch.Tensor:
        return self._fn(z0)

    def __repr__(self) -> str:
        return f"<gradcheck adapter: {self.description}>"

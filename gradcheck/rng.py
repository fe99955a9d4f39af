"""Seeded, forked random-number generators: a sampler that draws from torch's global generator
is then the same function of z0 on every call, and the user's generator states are as before."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG (CPU, and the CUDA device if any) and seed it, so a sampler that draws
    from the global generator is the same function of z0 on every call."""
    # the generators a sampler on this device draws from, forked and seeded by hand: not
    # torch.manual_seed, which also (re)seeds every other device's generator (not forked here,
    # so the user's would stay changed) and, while CUDA is not initialised, queues that with a
    # formatted stack trace (about 0.25 ms a call: a measurable part of a small model's pass)
    gens = [torch.default_generator]
    if device.type == "cuda":
        torch.cuda.init()
        gens.append(torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()])
    states = [g.get_state() for g in gens]
    try:
        for g in gens:
            g.manual_seed(seed)
        yield
    finally:
        for g, st in zip(gens, states):
            g.set_state(st)

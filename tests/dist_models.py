"""Denoiser factories for tests/test_distributed.py's command-line runs."""
import os

from gradcheck.sampling import build_denoiser


def fails_on_rank_one():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("weights missing on this node")
    den = build_denoiser("digits")
    den.sample_shape = (1, 8, 8)
    return den

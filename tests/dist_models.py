"""Denoiser factories for tests/test_distributed.py's command-line runs."""
import atexit
import os
import sys

from gradcheck.sampling import build_denoiser


def fails_on_rank_one():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("weights missing on this node")
    den = build_denoiser("digits")
    den.sample_shape = (1, 8, 8)
    return den


def _digits():
    den = build_denoiser("digits")
    den.sample_shape = (1, 8, 8)
    return den


def aborts_on_rank_one():
    """Rank 1 dies the way a native library kills a process: a C++ message, then SIGABRT."""
    if os.environ.get("RANK") == "1":
        sys.stderr.write("terminate called after throwing an instance of 'gloo::IoException'\n"
                         "  what():  [pair.cc:589] Read error [127.0.0.1]:4242: Connection "
                         "reset by peer\n")
        sys.stderr.flush()
        os.abort()
    return _digits()


def aborts_on_rank_one_at_exit():
    """Rank 1 finishes its work, then dies while the interpreter shuts down."""
    if os.environ.get("RANK") == "1":
        atexit.register(os.abort)
    return _digits()

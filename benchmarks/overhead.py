"""What a diagnosis costs over a plain forward+backward of the same sampler and seed.

    .venv/bin/python benchmarks/overhead.py [--steps 35] [--batch 4] [--repeats 9]

"diagnosis" is gradcheck.diagnose's record phase: every state, denoiser input/output and step
noise probed, gradient statistics, the graph collapsed onto the probes and checks, with the extra
passes switched off (numeric=False, optim_steps=0, locate="never", raw graph off: those are
separate checks, counted by benchmarks/verdict_cost.py); "no graph" is the
same with capture_graph=False (no step graph: no Python walk of the autograd graph); "op detail"
with op_detail="always" (each op's source line and |g| for the report's op views: the default
``auto`` records it while the forward pass takes under 2 s). "plain" is the same
sampler, z0 and loss, differentiated with torch.autograd.grad. Interleaved repetitions; the ratio
of the fastest runs (least disturbed by other load on a shared machine), of the medians, and the
median of the repeat-by-repeat ratios ("paired"). Bar (issue 15): <= 1.05x at 35 steps. The
graph walk alone is timed on one recorded graph ("walk/node": microseconds per autograd node).

Timings on a shared machine scatter by +-20% from run to run; ``--instructions`` counts CPU
instructions instead with valgrind's callgrind (repeatable to a few tenths of a percent: hash
randomisation and address layout move the counts of the same pass between processes; the built-in model
takes about 7 minutes, the 10x one well over an hour on a quiet machine: ``--which big|builtin``):
three processes, run side by side, that do the same set-up and warm-up, then nothing / one plain
forward+backward / one diagnosis; the differences are the two costs.

``--which cosmos`` (without ``--instructions``) times the record phase at the Cosmos shape instead:
the scale benchmark's 10.7M-parameter denoiser (benchmarks/cosmos_denoiser.py) on a [1, 16, 8, 44,
80] latent, every denoiser call checkpointed, plain and diagnosis interleaved
(results/overhead_cosmos.json); with ``--instructions`` it counts that case, slowly: at
``--steps 1 --batch 1`` each of the three callgrind processes had used 59 minutes of CPU time,
still warming up, when it was stopped (a pass takes seconds natively, its convolutions far longer
under callgrind).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time

import torch

import gradcheck
from gradcheck.sampling import EDMDenoiser, ResSampler, SamplerConfig, TinyUNet, build_denoiser


#: CPU time of this process (all threads): unlike wall time, not inflated while the shared
#: machine runs someone else. --wall switches to wall-clock time.
CLOCK = time.process_time


def plain(smp, z0, target):
    z = z0.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(smp(z), target)
    (g,) = torch.autograd.grad(loss, [z])
    return g


def diagnosis(smp, z0, target, capture_graph=True, op_detail="never"):
    rep = gradcheck.diagnose(smp, z0, target=target, numeric=False, optim_steps=0,
                             locate="never", raw_graph_cap=0, capture_graph=capture_graph,
                             op_detail=op_detail)
    assert rep.passed, [f.message for f in rep.failed]
    return rep.handles["z0_grad"]


def walk_cost(smp, z0, target, repeats: int) -> tuple[int, float]:
    """The step-graph capture alone: (autograd nodes, min seconds of one walk) over one
    recorded graph of the run, walked ``repeats`` times."""
    from gradcheck.probes import probe, trace

    with trace() as tr:
        z = z0.clone().requires_grad_(True)
        probe(z, "z0", kind="z0")
        out = probe(smp(z), "output", kind="output")
        loss = probe(torch.nn.functional.mse_loss(out, target), "loss", kind="loss")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            nodes = tr.collapse(loss)[1]
            times.append(time.perf_counter() - t0)
    return nodes, min(times)


def _child(what: str, which: str, steps: int, batch: int) -> None:
    torch.set_num_threads(1)
    den, shape, checkpoint = _case(which)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(batch, *shape, generator=g)
    target = torch.randn(batch, *shape, generator=g)
    smp = ResSampler(den, SamplerConfig(steps=steps, checkpoint=checkpoint))
    for _ in range(1):  # warm-up: one-time initialisation (lazy init, allocator) is not measured
        plain(smp, z0, target)
        diagnosis(smp, z0, target)
    if what == "plain":
        plain(smp, z0, target)
    elif what == "diagnosis":
        diagnosis(smp, z0, target)


def _denoisers(big: bool):
    torch.manual_seed(0)
    if big:
        return EDMDenoiser(TinyUNet(width=112), sigma_data=0.75).requires_grad_(False).eval(), \
            (1, 8, 8)
    return build_denoiser("digits"), (1, 8, 8)


#: --which: the denoisers counted or timed
CASES = {"builtin": "built-in (digits)", "big": "10x larger", "cosmos": "Cosmos-shaped"}


def _case(which: str):
    """(denoiser, sample shape, checkpoint) of a --which case. ``cosmos``: the scale benchmark's
    denoiser (benchmarks/cosmos_denoiser.py, 10.7M parameters) on a [16, 8, 44, 80] video latent,
    every denoiser call checkpointed, as ``gradcheck run --checkpoint`` runs it."""
    if which == "cosmos":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from cosmos_denoiser import factory

        den = factory()
        return den, tuple(den.sample_shape), True
    den, shape = _denoisers(which == "big")
    return den, shape, False


def instructions(steps: int, batch: int, which: str = "both") -> None:
    import re
    import subprocess
    import sys
    import tempfile

    print(f"callgrind instruction counts, 1 thread, batch {batch}, {steps} steps, mode default")
    rows = []
    for case in {"both": ("builtin", "big")}.get(which, (which,)):
        counts = {}
        with tempfile.TemporaryDirectory() as tmp:
            # the three processes run side by side: instruction counts do not depend on what
            # else the machine runs, so this takes the wall time of one of them
            procs = {what: subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg-{what}",
                 sys.executable, __file__, "--child", what, "--which", case,
                 "--steps", str(steps), "--batch", str(batch)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for what in ("none", "plain", "diagnosis")}
            for what, proc in procs.items():
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"callgrind child {what!r} failed:\n{err[-2000:]}")
                counts[what] = int(re.search(r"Collected : (\d+)", err).group(1))
        p = counts["plain"] - counts["none"]
        d = counts["diagnosis"] - counts["none"]
        label = CASES[case]
        print(f"{label:<20} plain {p / 1e6:9.1f} M instr   diagnosis {d / 1e6:9.1f} M instr   "
              f"ratio {d / p:.3f}", flush=True)
        rows.append({"denoiser": label, "plain_minstr": p / 1e6, "diagnosis_minstr": d / 1e6,
                     "ratio": d / p})
    _write(f"overhead_instructions_{which}", {"steps": steps, "batch": batch, "rows": rows})


def cosmos(steps: int, repeats: int, threads: int) -> None:
    """The record phase at the Cosmos shape: plain and diagnosis, interleaved (no op-detail or
    no-graph variants: each pass takes seconds here)."""
    torch.set_num_threads(threads)
    den, shape, checkpoint = _case("cosmos")
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, *shape, generator=g)
    target = torch.randn(1, *shape, generator=g)
    smp = ResSampler(den, SamplerConfig(steps=steps, checkpoint=checkpoint))
    print(f"torch {torch.__version__}, {threads} threads, Cosmos shape {list(shape)}, "
          f"{steps} steps, checkpointed, {repeats} interleaved repeats, CPU time")
    gp, gd = plain(smp, z0, target), diagnosis(smp, z0, target)  # warm-up, and a check
    torch.testing.assert_close(gp, gd, rtol=0, atol=0)
    tp, td = [], []
    for i in range(repeats):
        t0 = CLOCK(); plain(smp, z0, target); tp.append(CLOCK() - t0)
        t0 = CLOCK(); diagnosis(smp, z0, target); td.append(CLOCK() - t0)
        print(f"  repeat {i + 1}: plain {tp[-1]:.2f} s, diagnosis {td[-1]:.2f} s", flush=True)
    row = {"denoiser": CASES["cosmos"], "mode": "default", "shape": list(shape),
           "checkpoint": checkpoint, "plain_s": _mmm(tp), "diagnosis_s": _mmm(td),
           "ratio_min": min(td) / min(tp),
           "ratio_median": statistics.median(td) / statistics.median(tp),
           "ratio_median_paired": statistics.median(d / p for d, p in zip(td, tp)), "bar": 1.05}
    print(f"plain {_fmt(tp)}   diagnosis {_fmt(td)}   ratio min {row['ratio_min']:.3f}  "
          f"median {row['ratio_median']:.3f}  paired {row['ratio_median_paired']:.3f}  "
          f"(bar 1.05)")
    _write("overhead_cosmos", {"steps": steps, "batch": 1, "repeats": repeats, "clock": "cpu",
                               "rows": [row]})


def _fmt(v: list[float]) -> str:
    return f"min {min(v):.2f} / median {statistics.median(v):.2f} / max {max(v):.2f} s"


def _write(name: str, data: dict) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results_file import write

    print(f"wrote {write(name, data)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instructions", action="store_true", help="count instructions (callgrind)")
    ap.add_argument("--which", choices=("both", *CASES), default="both",
                    help="which denoiser(s): with --instructions, those counted; ``cosmos`` "
                    "alone times the record phase at the Cosmos shape "
                    "(results/overhead_cosmos.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: OpenMP "
                    "workers spinning on a shared machine make multi-thread timings scatter)")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.which, args.steps, args.batch)
    if args.instructions:
        return instructions(args.steps, args.batch, args.which)
    if args.which == "cosmos":
        return cosmos(args.steps, args.repeats, args.threads)
    global CLOCK
    torch.set_num_threads(args.threads)
    if args.wall:
        CLOCK = time.perf_counter
    big, _ = _denoisers(True)
    built_in, _ = _denoisers(False)
    n_small = sum(p.numel() for p in built_in.parameters())
    n_big = sum(p.numel() for p in big.parameters())
    cases = [("built-in (digits)", built_in, (1, 8, 8), 1.05),
             (f"{n_big / n_small:.0f}x larger, 8x8", big, (1, 8, 8), 1.05)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.steps} steps, {args.repeats} interleaved repeats, "
          f"{'wall' if args.wall else 'CPU'} time")
    print(f"{'denoiser':<24}{'mode':<22}{'plain':>10}{'diagnosis':>12}{'ratio min':>11}"
          f"{'ratio med':>11}{'paired':>8}{'bar':>6}{'no graph':>10}{'op detail':>11}"
          f"{'walk/node':>11}")
    rows = []
    for (label, den, shape, bar), mode in [(c, m) for c in cases
                                           for m in ("default", "learnable_step_noise")]:
        g = torch.Generator().manual_seed(0)
        z0 = torch.randn(args.batch, *shape, generator=g)
        target = torch.randn(args.batch, *shape, generator=g)
        smp = ResSampler(den, SamplerConfig(steps=args.steps), mode=mode)
        torch.testing.assert_close(plain(smp, z0, target), diagnosis(smp, z0, target))
        tp, td, tn, to = [], [], [], []
        gcs = {"plain": [0, 0, 0], "diagnosis": [0, 0, 0]}
        for _ in range(args.repeats):
            with _collections(gcs["plain"]):
                t0 = CLOCK(); plain(smp, z0, target); tp.append(CLOCK() - t0)
            with _collections(gcs["diagnosis"]):
                t0 = CLOCK(); diagnosis(smp, z0, target); td.append(CLOCK() - t0)
            t0 = CLOCK(); diagnosis(smp, z0, target, False)
            tn.append(CLOCK() - t0)
            t0 = CLOCK(); diagnosis(smp, z0, target, True, "always")
            to.append(CLOCK() - t0)
        ratio = min(td) / min(tp)
        med = statistics.median(td) / statistics.median(tp)
        paired = statistics.median(d / p for d, p in zip(td, tp))  # repeat by repeat
        nodes, walk_s = walk_cost(smp, z0, target, args.repeats)
        rows.append({"denoiser": label, "mode": mode, "plain_s": _mmm(tp), "diagnosis_s": _mmm(td),
                     "no_graph_s": _mmm(tn), "op_detail_s": _mmm(to),
                     "ratio_min": ratio, "ratio_median": med, "ratio_median_paired": paired,
                     "bar": bar, "graph_nodes": nodes, "walk_s": walk_s,
                     "walk_us_per_node": walk_s / nodes * 1e6,
                     "no_graph_ratio_min": min(tn) / min(tp),
                     "op_detail_ratio_min": min(to) / min(tp),
                     # Python's cyclic collector: collections of generation 0 / 1 / 2 (a full
                     # one: the whole process's objects) per run
                     "gc_per_run": {k: [c / args.repeats for c in v] for k, v in gcs.items()}})
        print(f"{label:<24}{mode:<22}{min(tp) * 1e3:>8.1f}ms{min(td) * 1e3:>10.1f}ms"
              f"{ratio:>11.3f}{med:>11.3f}{paired:>8.3f}{'ok' if ratio <= bar else 'OVER':>6}"
              f"{min(tn) / min(tp):>10.3f}{min(to) / min(tp):>11.3f}"
              f"{walk_s / nodes * 1e6:>9.2f}us", flush=True)
    _write("overhead", {"steps": args.steps, "batch": args.batch, "repeats": args.repeats,
                        "clock": "wall" if args.wall else "cpu", "rows": rows})


@contextlib.contextmanager
def _collections(counts: list[int]):
    """Count the cyclic collector's collections by generation into ``counts`` inside."""
    def note(phase: str, info: dict) -> None:
        if phase == "start":
            counts[info["generation"]] += 1
    gc.callbacks.append(note)
    try:
        yield
    finally:
        gc.callbacks.remove(note)


def _mmm(v: list[float]) -> dict[str, float]:
    return {"min": min(v), "median": statistics.median(v), "max": max(v)}


if __name__ == "__main__":
    main()

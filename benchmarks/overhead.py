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
instructions instead with valgrind's callgrind (``--which builtin|big|cosmos``; needs valgrind and
a C compiler, which builds callgrind's client requests into a small library for ctypes). Two
processes run side by side, one counting plain then diagnosis, the other the reverse order; each
does the set-up and a warm-up pair with instrumentation off, then counts each pass alone between
a zeroing and a dump of callgrind's counters. The same pass counted in the two processes differs
by about a tenth of a percent at most (hash randomisation and address layout). The built-in model
takes about 5 minutes on a quiet machine. ``--keep-dumps DIR`` keeps callgrind's dumps,
``--from-dumps DIR`` re-reads them.

``--which cosmos`` (without ``--instructions``) times the record phase at the Cosmos shape instead:
the scale benchmark's 10.7M-parameter denoiser (benchmarks/cosmos_denoiser.py) on a [1, 16, 8, 44,
80] latent, every denoiser call checkpointed, plain and diagnosis interleaved
(results/overhead_cosmos.json); with ``--instructions --steps 1 --batch 1`` it counts one step of
that case (the share of a diagnosis's fixed costs at its largest) in about 8 minutes, with MKL and
oneDNN pinned to their AVX code (``--isa``, see instructions()); ``--isa-factor`` counts a one-block
copy of the network with and without the pin, to estimate the ratio with the libraries' own code.
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
    """One callgrind process (see instructions()): set-up and one warm-up pair run with
    instrumentation off; then each pass named in ``what`` ("plain,diagnosis" or the reverse) is
    counted on its own, between a zeroing and a dump of callgrind's counters."""
    import ctypes

    cg = ctypes.CDLL(os.environ["GRADCHECK_CALLGRIND_LIB"])
    if not cg.cg_running():
        raise SystemExit("--child runs under valgrind --tool=callgrind --instr-atstart=no")
    torch.set_num_threads(1)
    if what == "net":
        return _net_child(cg)
    den, shape, checkpoint = _case(which)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(batch, *shape, generator=g)
    target = torch.randn(batch, *shape, generator=g)
    smp = ResSampler(den, SamplerConfig(steps=steps, checkpoint=checkpoint))
    # warm-up: one-time initialisation (lazy init, allocator, the first call's caches) is not
    # counted, and runs uninstrumented (several times faster than counted code under callgrind)
    plain(smp, z0, target)
    diagnosis(smp, z0, target)
    passes = {"plain": plain, "diagnosis": diagnosis}
    cg.cg_start()
    for name in what.split(","):
        _count(cg, name, lambda: passes[name](smp, z0, target))


def _count(cg, name: str, work) -> None:
    """Count ``work()`` alone (instrumentation on): collect first, zero, run, dump as ``name``."""
    gc.collect()
    cg.cg_zero()
    work()
    cg.cg_dump(name.encode())


def _net_child(cg) -> None:
    """Count one forward+backward of a one-block copy of the Cosmos-shaped network (the same
    layers and shapes as a denoiser call, a tenth of its depth), for isa_factor()."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from cosmos_denoiser import CosmosShapedNet

    torch.manual_seed(0)
    net = CosmosShapedNet(depth=1).requires_grad_(False)
    x = torch.randn(1, 16, 8, 44, 80, requires_grad=True)
    c = torch.tensor([0.5])

    def once():
        torch.autograd.grad(net(x, c).square().sum(), [x])

    once()
    cg.cg_start()
    _count(cg, "net", once)


#: MKL and oneDNN on their AVX code (--isa avx; see instructions())
AVX_PIN = {"MKL_CBWR": "AVX", "ONEDNN_MAX_CPU_ISA": "AVX"}

#: callgrind's client requests (valgrind/callgrind.h), for ctypes: count one pass, not a process
_CALLGRIND_C = """
#include <valgrind/callgrind.h>
int cg_running(void) { return RUNNING_ON_VALGRIND; }
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *why) { CALLGRIND_DUMP_STATS_AT(why); }
"""


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


def instructions(steps: int, batch: int, which: str = "both", avx: bool = False,
                 keep: str | None = None, from_dumps: str | None = None) -> None:
    """Instructions of one plain forward+backward and one diagnosis, counted by callgrind in two
    processes side by side (one counts plain then diagnosis, the other the reverse order, so
    neither pass is favoured by running second). Each process warms up uninstrumented and counts
    each pass alone between client requests (``--instr-atstart=no``): no set-up, import or
    warm-up in the counts, nothing to subtract.

    ``avx`` pins MKL's and oneDNN's code paths to AVX (``MKL_CBWR=AVX``,
    ``ONEDNN_MAX_CPU_ISA=AVX``). Valgrind runs no AVX-512, and the libraries' own choice under it
    (AVX2 with FMA) runs a large matrix product or convolution 1,000-2,000x slower than natively
    (measured: an [880, 512] x [512, 1024] product, 11 ms natively, 22.6 s under valgrind
    --tool=none, 0.13 s pinned), so a Cosmos-shaped pass would take days; their AVX paths (no
    FMA) run 10-20x slower than natively. They take more instructions per flop
    than natively, which dilutes the ratio: the libraries' share of each count is reported
    (``library_share``) with the factor by which their code would have to shrink for the ratio to
    reach 1.05 (``break_even_factor``). ``keep``: copy callgrind's dump files there;
    ``from_dumps``: read kept ones instead of running (``steps``, ``batch`` and ``avx`` must be
    those they were counted with)."""
    import tempfile

    torch.set_num_threads(1)  # what the children run with, and what the results file records
    cases = {"both": ("builtin", "big")}.get(which, (which,))
    if from_dumps:
        rows = [_row(case, from_dumps) for case in cases]
        return _write_instructions(which, steps, batch, avx, rows)
    print(f"callgrind instruction counts, 1 thread, batch {batch}, {steps} steps, mode default")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lib = _build_client_lib(tmp)
        env = {**os.environ, "GRADCHECK_CALLGRIND_LIB": lib, "OMP_NUM_THREADS": "1"}
        if avx:
            env.update(AVX_PIN)
        for case in cases:
            t0 = time.perf_counter()
            orders = ("plain,diagnosis", "diagnosis,plain")
            _counted(tmp, {f"cg-{case}-{i}": ([order, "--which", case, "--steps", str(steps),
                                               "--batch", str(batch)], {})
                           for i, order in enumerate(orders)}, env, keep)
            rows.append(_row(case, tmp))
            print(f"({(time.perf_counter() - t0) / 60:.0f} min)", flush=True)
    _write_instructions(which, steps, batch, avx, rows)


def _write_instructions(which: str, steps: int, batch: int, avx: bool, rows: list) -> None:
    _write(f"overhead_instructions_{which}", {
        "steps": steps, "batch": batch,
        "method": "callgrind --instr-atstart=no, one pass a dump, both orders",
        "isa": "AVX (MKL_CBWR, ONEDNN_MAX_CPU_ISA)" if avx else "the libraries' choice",
        "rows": rows})


def isa_factor(keep: str | None = None, from_dumps: str | None = None) -> None:
    """What the AVX pin does to the libraries' instructions: one forward+backward of a one-block
    copy of the Cosmos-shaped network (the same layers and shapes as a denoiser call, a tenth of
    its blocks), counted with the libraries' own choice under valgrind (AVX2 with FMA, slow:
    tens of minutes) and with the pin, side by side. Their code takes r times more instructions
    pinned; applied to the Cosmos count (results/overhead_instructions_cosmos.json, if there),
    its plain pass P with library code L becomes P - L + L/r and the ratio
    (P - L + L/r + extra) / (P - L + L/r): an estimate, since the one-block net weighs the
    patchify and unpatchify layers more than the ten-block denoiser does. Writes
    results/overhead_instructions_isa.json. ``from_dumps``: read dumps kept by ``keep``."""
    import json
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results_file import RESULTS

    torch.set_num_threads(1)
    pins = {"library": {}, "avx": AVX_PIN}
    with tempfile.TemporaryDirectory() as tmp:
        if not from_dumps:
            lib = _build_client_lib(tmp)
            env = {**os.environ, "GRADCHECK_CALLGRIND_LIB": lib, "OMP_NUM_THREADS": "1"}
            _counted(tmp, {f"cg-net-{isa}": (["net"], extra) for isa, extra in pins.items()},
                     env, keep)
        out = {}
        for isa in pins:
            prefix = os.path.join(from_dumps or tmp, f"cg-net-{isa}")
            found = list(_dumps(prefix))
            if len(found) != 1:
                raise SystemExit(f"expected one counted pass in {prefix}.*, found {len(found)}")
            ((_, n, share),) = found
            out[isa] = {"minstr": n / 1e6, "library_share": share,
                        "library_minstr": n * share / 1e6}
    r = out["avx"]["library_minstr"] / out["library"]["library_minstr"]
    res = {"net": "CosmosShapedNet(depth=1), [1, 16, 8, 44, 80], forward + input gradient",
           **out, "library_factor": r}
    print(f"one-block net: the libraries' choice {out['library']['minstr']:.1f} M instr "
          f"(MKL and oneDNN {out['library']['library_share']:.1%}), pinned to AVX "
          f"{out['avx']['minstr']:.1f} M ({out['avx']['library_share']:.1%}): their code takes "
          f"{r:.2f}x the instructions pinned")
    f = RESULTS / "overhead_instructions_cosmos.json"
    if f.exists():
        row = json.loads(f.read_text())["results"]["rows"][0]
        p = row["plain_minstr"]
        lib_p = p * row["library_share"]["plain"]
        p_lib = p - lib_p + lib_p / r
        est = (p_lib + row["extra_minstr"]) / p_lib
        res["cosmos_estimate"] = {"plain_minstr": p_lib, "ratio": est,
                                  "from": "overhead_instructions_cosmos.json"}
        print(f"Cosmos shape with the libraries' own code (estimate): plain {p_lib:.0f} M instr, "
              f"ratio {est:.4f}")
    _write("overhead_instructions_isa", res)


def _counted(tmp: str, jobs: dict, env: dict, keep: str | None) -> None:
    """Run this script's ``--child`` under callgrind (instrumentation off until the child turns
    it on), one process per job, side by side: ``{dump stem: (child arguments, extra
    environment)}``; dumps go to tmp/<stem>.N, copied to ``keep`` if given."""
    import shutil
    import subprocess

    procs = {stem: subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={tmp}/{stem}", sys.executable, __file__, "--child", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, **extra})
        for stem, (args, extra) in jobs.items()}
    for stem, proc in procs.items():
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"callgrind child {jobs[stem][0]!r} failed:\n{err[-2000:]}")
    if keep:
        os.makedirs(keep, exist_ok=True)
        for f in os.listdir(tmp):
            if f.split(".")[0] in jobs:
                shutil.copy(os.path.join(tmp, f), keep)


def _build_client_lib(tmp: str) -> str:
    import shutil
    import subprocess

    for tool in ("valgrind", "cc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"counting instructions needs {tool!r} on PATH (Debian: valgrind, "
                             "gcc)")

    lib = os.path.join(tmp, "libcg.so")
    with open(os.path.join(tmp, "cg.c"), "w") as f:
        f.write(_CALLGRIND_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", lib, os.path.join(tmp, "cg.c")],
                   check=True)
    return lib


def _row(case: str, folder: str) -> dict:
    """The results row of a case from its callgrind dumps in ``folder`` (cg-<case>-0.N and
    cg-<case>-1.N, one pass each; --from-dumps re-reads kept ones)."""
    counts: dict[str, list[int]] = {"plain": [], "diagnosis": []}
    lib: dict[str, list[float]] = {"plain": [], "diagnosis": []}
    for i in (0, 1):
        for name, n, share in _dumps(os.path.join(folder, f"cg-{case}-{i}")):
            counts[name].append(n)
            lib[name].append(share)
    if sorted(map(len, counts.values())) != [2, 2]:
        raise SystemExit(f"expected two counts of each pass in {folder}, got {counts}")
    p, d = statistics.mean(counts["plain"]), statistics.mean(counts["diagnosis"])
    spread = max(abs(a - b) / max(a, b) for a, b in counts.values())
    share = {k: statistics.mean(v) for k, v in lib.items()}
    row = {"denoiser": CASES[case], "plain_minstr": p / 1e6, "diagnosis_minstr": d / 1e6,
           "ratio": d / p, "plain_counts": counts["plain"],
           "diagnosis_counts": counts["diagnosis"], "order_spread": spread,
           "extra_minstr": (d - p) / 1e6, "library_share": share,
           # how many times fewer instructions MKL's and oneDNN's code would have to take (all
           # of it, in both passes) for the ratio to reach the bar, 1.05
           "break_even_factor": _break_even(p, share["plain"], d - p)}
    print(f"{CASES[case]:<20} plain {p / 1e6:9.1f} M instr   diagnosis {d / 1e6:9.1f} M instr   "
          f"ratio {d / p:.4f}   (orders differ by {spread:.2%}; MKL and oneDNN "
          f"{share['plain']:.1%} of plain; {_even_words(row['break_even_factor'])})", flush=True)
    return row


def _even_words(f: float) -> str:
    if f == float("inf"):
        return "under 1.05 even if their code took no instructions"
    if f >= 1:
        return f"1.05 would need their code {f:.1f}x cheaper"
    return f"under 1.05 only if their code took {1 / f:.1f}x more"


def _break_even(plain: float, library_share: float, extra: float, bar: float = 1.05) -> float:
    """The factor f such that, with the libraries' code taking f times fewer instructions and the
    rest unchanged, extra / plain' = bar - 1: (L / f + rest) (bar - 1) = extra."""
    lib = plain * library_share
    room = extra / (bar - 1) - (plain - lib)
    return lib / room if room > 0 else float("inf")


def _dumps(prefix: str):
    """(pass name, instructions, share of them in numerical kernels: see _kernel) of each
    callgrind dump triggered by cg_dump: files prefix.N whose header names the client request and
    whose totals line carries Ir."""
    import glob
    import re

    for path in sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        text = open(path).read()
        why = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if why and total:
            n = int(total.group(1))
            yield why.group(1), n, _self_cost(text, _kernel) / n


def _kernel(fn: str) -> bool:
    """MKL's and oneDNN's code: functions named mkl_* or in namespace dnnl, and code without
    symbols (MKL's matrix-product kernels in torch's library carry none, and oneDNN's JIT kernels
    have no file). What an ISA pin changes; torch's own kernels are not pinned."""
    return fn.startswith(("mkl_", "0x")) or "dnnl::" in fn


def _self_cost(text: str, keep) -> int:
    """Self instructions of the functions ``keep(name)`` selects, in a callgrind dump (its
    format: ``fn=(id) name`` opens a function, later ``fn=(id)`` reuses the name, which may
    first appear as a callee, ``cfn=(id) name``; a cost line after ``calls=`` is the call's
    inclusive cost, not the function's own)."""
    names: dict[str, str] = {}
    total, on, skip = 0, False, False
    for line in text.splitlines():
        if line.startswith(("fn=", "cfn=")):  # a name is defined where it first appears
            ref, _, name = line.partition("=")[2].partition(" ")
            if name:
                names[ref] = name
            if line[0] == "f":
                on = keep(names.get(ref, ref))
        elif line.startswith("calls="):
            skip = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if skip:
                skip = False
            elif on:
                parts = line.split()
                if len(parts) > 1:
                    total += int(parts[1])
    return total


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
    ap.add_argument("--isa", choices=("default", "library", "avx"), default="default",
                    help="with --instructions: the code path of MKL and oneDNN (default: avx for "
                    "--which cosmos, where the libraries' own choice under valgrind, AVX2 with "
                    "FMA, runs 1,000-2,000x slower than natively; the libraries' otherwise)")
    ap.add_argument("--isa-factor", action="store_true",
                    help="count how much --isa avx inflates the Cosmos count's kernels "
                    "(results/overhead_instructions_isa.json)")
    ap.add_argument("--from-dumps", default=None, metavar="DIR",
                    help="with --instructions or --isa-factor: read dumps kept by --keep-dumps "
                    "instead of running")
    ap.add_argument("--keep-dumps", default=None, metavar="DIR",
                    help="with --instructions: copy callgrind's dump files to DIR")
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--wall", action="store_true", help="wall-clock instead of CPU time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: OpenMP "
                    "workers spinning on a shared machine make multi-thread timings scatter)")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.which, args.steps, args.batch)
    if args.isa_factor:
        return isa_factor(args.keep_dumps, args.from_dumps)
    if args.instructions:
        avx = args.isa == "avx" or (args.isa == "default" and args.which == "cosmos")
        return instructions(args.steps, args.batch, args.which, avx,
                            args.keep_dumps, args.from_dumps)
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

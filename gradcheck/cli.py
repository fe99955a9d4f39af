"""Command line: ``gradcheck run``. Composition only; the work is in runner/diagnosis/checks/report.

Exit codes (as coverage.py): 0 every check passed, 2 a check failed, 1 bad input or runtime error
(one line on stderr naming the bad value; a traceback only with ``--debug``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__, modes
from .errors import ConfigError, GradcheckError
from .sanitize import clean

EXIT_OK, EXIT_ERROR, EXIT_FAILED = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on a usage error; 2 means 'a check failed' here, so use 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"gradcheck: error: {message}\n")
        raise SystemExit(EXIT_ERROR)


def parse_modes(text: str) -> list[str]:
    """'both' -> default + learnable_step_noise; 'all' -> every mode; else a comma list."""
    return modes.parse(text)


def _builtin_mode(text: str) -> str:
    try:
        return modes.get(text, builtin=True).name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--shape must look like 1,8,8, got {text!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"--shape must be positive sizes like 1,8,8, got {text!r}")
    return shape


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    # long, but flat: one declarative add_argument per option, grouped as --help shows them
    p = _Parser(prog="gradcheck", description="Gradient-flow diagnostics for diffusion samplers: "
                "does the gradient of a loss reach the initial noise z0, and where does it stop?")
    p.add_argument("--version", action="version", version=f"gradcheck {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="diagnose the built-in (or your) sampler in one or more modes",
                       description="Run the RES sampler on a denoiser, back-propagate a loss to "
                       "z0 and check the gradient path, per mode.")
    g = r.add_argument_group("what to run")
    g.add_argument("--mode", default="both", help=modes.help_text())
    g.add_argument("--denoiser", default="digits", help="built-in: digits (the trained EDM "
                   "denoiser of 8x8 digits; default), conv (same net, random weights), gaussian "
                   "(exact denoiser of Gaussian data); or package.module:factory returning "
                   "D(x, sigma) -> x0_hat (imports that module: its code runs; see --path)")
    g.add_argument("--sampler", dest="sampler_spec", default=None, metavar="PKG.MOD:FN",
                   help="your own sampler instead of the built-in RES: a k-diffusion-convention "
                   "function fn(model, x, sigmas, extra_args=None, callback=None, disable=None, "
                   "...) (given the run's Karras sigmas; --mode sets its noise_sampler), or "
                   "fn(denoiser, z0) -> output. Imports that module: its code runs; see --path")
    g.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="a directory to import --sampler and --denoiser modules from (appended "
                   "to Python's path; repeatable). The working directory is not searched unless "
                   "named here (e.g. --path .)")
    g.add_argument("--unwrap", action="store_true", help="if the sampler is decorated with "
                   "@torch.no_grad(), diagnose inspect.unwrap of it instead")
    g.add_argument("--convention", choices=("auto", "cosmos"), default="auto",
                   help="how --sampler is called: auto (a k-diffusion-convention function, or "
                   "fn(denoiser, z0)); cosmos (PKG.MOD:Factory makes an NVIDIA Cosmos-style "
                   "Sampler, called unmodified as sampler(x0_fn, x_sigma_max=sigma_max * z0, "
                   "num_steps=..., solver_option=..., S_churn=...) with the run's settings)")
    g.add_argument("--allow-grad", action="store_true", help="neutralise every no_grad / "
                   "inference_mode / set_grad_enabled(False) the sampler enters (decorators "
                   "and blocks, nested ones too) for the diagnosed run, and list them as what "
                   "to change for the gradient to flow")
    g.add_argument("--shape", type=str, default=None, help="sample shape C,H,W, or C,T,H,W for video latents (default: the "
                   "denoiser's; 1,8,8 for the built-ins)")
    g.add_argument("--batch", type=int, default=2, help="batch size of z0 (default 2)")
    g.add_argument("--z0", dest="z0_path", default=None, help="load z0 from a .pt or .npy file "
                   "instead of drawing it from --seed")
    g.add_argument("--seed", type=int, default=0, help="one seed for every random draw (default 0)")
    g.add_argument("--dtype", default="float64", help="dtype of z0 and the denoiser: float64 "
                   "(default: the numeric check is then exact to 1e-5), float32, bfloat16, "
                   "float16 (the numeric tolerance follows the dtype)")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    d = r.add_argument_group("distributed (torch.distributed)")
    d.add_argument("--nproc", type=int, default=1, help="processes to launch with torchrun "
                   "(gloo on CPU, nccl on GPUs); default 1")
    d.add_argument("--parallel", default="ddp", help="with --nproc: ddp (z0's batch sharded, "
                   "the denoiser in DistributedDataParallel; default), fsdp (batch sharded, "
                   "denoiser sharded with fully_shard), cp (the latent split along its height, "
                   "gathered with autograd-aware collectives for each denoiser call)")
    d.add_argument("--dist-timeout", type=_float, default=120.0, help="seconds a collective "
                   "may wait before a run whose rank died fails (default 120)")

    s = r.add_argument_group("sampler")
    s.add_argument("--solver", default="2ab", help="2ab (default), 2mid (two denoiser calls a "
                   "step: --steps counts calls, so 35 gives 17 steps, as the original), 1euler")
    s.add_argument("--steps", type=int, default=4, help="denoiser calls (default 4, as the "
                   "seed's test; the original: 35), also solver steps but for 2mid")
    s.add_argument("--sigma-min", type=_float, default=0.002)
    s.add_argument("--sigma-max", type=_float, default=80.0)
    s.add_argument("--rho", type=_float, default=7.0)
    s.add_argument("--s-churn", type=_float, default=None, help="EDM churn (default: 0 in mode "
                   "default, 40 in the step-noise modes)")
    s.add_argument("--s-noise", type=_float, default=1.0)
    s.add_argument("--s-min", type=_float, default=0.0)
    s.add_argument("--s-max", type=_float, default=math.inf)
    s.add_argument("--solver-dtype", default="float64", help="float64 (default, as the "
                   "original) or input (z0's dtype)")
    _memory_args(s)

    c = r.add_argument_group("checks and output")
    c.add_argument("--no-numeric", action="store_true", help="skip the finite-difference check")
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 for "
                   "the tiny built-in denoisers, whose ops are too small to share; torch's "
                   "default otherwise)")
    c.add_argument("--checks", default="default", choices=("quick", "default", "full"),
                   help="how much evidence to buy (the report counts it in forward+backward "
                   "passes): default (baseline draw, record, one one-sided difference from the "
                   "recorded loss, central pair and sweep only on disagreement, one Adam step "
                   "whose forward runs unless the gradient was verified in float64: record + 2 "
                   "forwards on a healthy float64 run), quick (no baseline draw, one one-sided "
                   "difference, no Adam: record + 1 forward), full (the whole central sweep, 3 "
                   "measured Adam steps)")
    c.add_argument("--locate", default="auto", choices=("auto", "always", "never"),
                   help="name where and why the gradient breaks: auto (default; only when a "
                   "check fails, so healthy runs pay nothing), always, never")
    c.add_argument("--op-detail", default="auto", choices=("auto", "always", "never"),
                   help="in the recorded pass, note each op's source line and |g| for the "
                   "report's op view of every step: auto (default; while the forward pass "
                   "makes at most 20,000 torch calls: the same on any machine), always, never")
    c.add_argument("--grad-weights", action="store_true", help="also differentiate the "
                   "model's weights that require grad (what loss.backward() computes); off by "
                   "default: they do not change dL/dz0 and cost about a third of the backward")
    c.add_argument("--vanishing", type=_float, default=1e-8, help="a state's |g| below this "
                   "fraction of the output's is vanishing (default 1e-8)")
    c.add_argument("--exploding", type=_float, default=1e4, help="a state's |g| more than this "
                   "many times the next step's is exploding (default 1e4)")
    c.add_argument("--optim-steps", type=int, default=None, help="Adam steps of the optimizer checks "
                   "(default by --checks: 1, 0 in quick, 3 in full; 0 skips them)")
    c.add_argument("--lr", type=_float, default=1e-2, help="Adam learning rate (default 0.01)")
    c.add_argument("--out", default="gradcheck-report", help="output directory for report.json "
                   "(default ./gradcheck-report)")
    c.add_argument("--json", action="store_true", help="print the record as JSON on stdout "
                   "instead of the summary")
    _render_args(c)
    c.add_argument("--raw-graph-cap", type=int, default=600, help="draw the op-level autograd "
                   "graph only up to this many nodes (default 600; bigger ones take minutes)")
    c.add_argument("--no-html", action="store_true", help="write report.json only")
    c.add_argument("--no-progress", action="store_true", help="no stages on stderr")
    c.add_argument("--save-grad", default=None, metavar="PATH", help="also write dL/dz0 of every "
                   "mode to PATH (torch.save of {mode: tensor or None}): to compare with your own "
                   "run, or to start an optimisation from")
    c.add_argument("--debug", action="store_true", help="show tracebacks")

    op = sub.add_parser("optimize", help="optimise z0 through the sampler for an objective",
                        description="Adam on z0 (and the step noises where learnable) through "
                        "the RES sampler: diverge (the originating experiment), class:K, or "
                        "target:PATH. Writes optimize.json, plots and an HTML page.")
    op.add_argument("--objective", default="diverge", help="diverge (maximise MSE to the "
                    "starting output; default), class:K (maximise log p(digit K)), target:PATH "
                    "(minimise MSE to an image: .png/.pt/.npy)")
    op.add_argument("--iters", type=int, default=50)
    op.add_argument("--lr", type=_float, default=0.1)
    op.add_argument("--clip", type=_float, default=None, help="gradient-norm clipping")
    op.add_argument("--norm-reg", default="chi", choices=("none", "chi", "renorm"),
                    help="keep z0 on the Gaussian shell: chi (its negative log-likelihood as a "
                    "penalty; the default), renorm (rescale to the starting norm after every "
                    "step), none (z0 may leave the shell: the z0_plausible check then fails)")
    op.add_argument("--chi-weight", type=_float, default=1.0)
    op.add_argument("--perturb", type=_float, default=1e-2, help="diverge starts from z0 + "
                    "perturb * seeded noise (default 0.01)")
    op.add_argument("--mode", default="default", type=_builtin_mode,
                    metavar="{" + ",".join(modes.BUILTIN_MODES) + "}",
                    help="noise mode (default: default)")
    op.add_argument("--denoiser", default="digits", help="as for run (package.module:factory "
                    "imports that module: its code runs)")
    op.add_argument("--path", action="append", default=[], metavar="DIR",
                    help="a directory to import --denoiser and --sampler from, as for run")
    op.add_argument("--sampler", default=None, metavar="PKG.MOD:FN",
                    help="your own sampler instead of the built-in RES, as for run")
    op.add_argument("--convention", default="auto",
                    choices=("auto", "kdiffusion", "function", "cosmos"),
                    help="how --sampler is called: auto (k-diffusion convention if it takes "
                    "(model, x, sigmas), else fn(denoiser, z0)), kdiffusion, function, or cosmos "
                    "(a Sampler class called as sampler(x0_fn, x_sigma_max=..., ...))")
    op.add_argument("--allow-grad", action="store_true", help="neutralise --sampler's "
                    "@torch.no_grad() and no_grad blocks while it runs (as for run)")
    op.add_argument("--unwrap", action="store_true", help="run inspect.unwrap of a "
                    "@torch.no_grad()-decorated --sampler")
    op.add_argument("--solver", default="2ab")
    op.add_argument("--steps", type=int, default=20)
    op.add_argument("--batch", type=int, default=8)
    op.add_argument("--seed", type=int, default=0)
    op.add_argument("--dtype", default="float32")
    op.add_argument("--device", default="cpu")
    op.add_argument("--nproc", type=int, default=1, help="processes (torchrun), as for run")
    op.add_argument("--parallel", default="ddp", help="ddp (default), fsdp, cp, as for run")
    op.add_argument("--dist-timeout", type=_float, default=120.0)
    _memory_args(op, truncate=False)
    op.add_argument("--out", default="gradcheck-optimize")
    op.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    op.add_argument("--debug", action="store_true", help="show tracebacks")

    rp = sub.add_parser("report", help="re-render the HTML and PNGs of a saved report.json or "
                        "optimize.json (no model is run; torch is not imported)")
    rp.add_argument("json_path", metavar="REPORT_JSON", help="a report.json written by gradcheck "
                    "run, or an optimize.json written by gradcheck optimize")
    rp.add_argument("--out", default=None, help="output directory (default: the JSON's directory)")
    _render_args(rp)
    rp.add_argument("--debug", action="store_true", help="show tracebacks")

    dp = sub.add_parser("diff", help="what changed between two runs: checks flipped, |g| per "
                        "probe as a ratio, breaks appeared or gone (exit 2 when B is worse)")
    dp.add_argument("a", metavar="A_REPORT_JSON", help="the report.json of the earlier run")
    dp.add_argument("b", metavar="B_REPORT_JSON", help="the report.json of the later run")
    dp.add_argument("--out", default=None, help="also write the diff as HTML into this directory")
    dp.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _memory_args(group, truncate: bool = True) -> None:
    group.add_argument("--checkpoint", action="store_true", help="non-reentrant activation "
                       "checkpointing per denoiser call (memory flat in the number of steps)")
    if truncate:
        group.add_argument("--truncate", type=int, default=None, metavar="K", help="back-propagate "
                           "through the last K steps only; the report compares with full backprop")
        group.add_argument("--truncate-kind", default="state", choices=("state", "denoiser"),
                           help="state: detach the state before the last K steps (DRaFT-K); "
                           "denoiser: detach only the denoiser outputs (AlignProp)")


def _render_args(group) -> None:
    group.add_argument("--graph", default="auto", choices=("auto", "always", "never"),
                       help="draw graphs with Graphviz: auto (default; without 'dot' the report "
                       "explains how to get graphs), always (a missing 'dot' is an error), never")


def cmd_run(args: argparse.Namespace) -> int:
    from .report import output_dir, staged, summary, write_json_atomic
    from .runner import RunConfig, run
    from .sampling import SamplerConfig

    sampler = SamplerConfig(
        solver=args.solver, steps=args.steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
        rho=args.rho, s_churn=args.s_churn, s_min=args.s_min, s_max=args.s_max,
        s_noise=args.s_noise, solver_dtype=args.solver_dtype, checkpoint=args.checkpoint,
        truncate=args.truncate, truncate_kind=args.truncate_kind,
    )
    cfg = RunConfig(
        modes=parse_modes(args.mode), sampler=sampler, denoiser=args.denoiser, seed=args.seed,
        sampler_spec=args.sampler_spec, unwrap=args.unwrap, allow_grad=args.allow_grad,
        convention=args.convention,
        nproc=_nproc(args),
        parallel=args.parallel, dist_timeout=args.dist_timeout,
        dtype=args.dtype, device=args.device, batch=args.batch,
        shape=parse_shape(args.shape) if args.shape else None, z0_path=args.z0_path,
        numeric=not args.no_numeric, optim_steps=args.optim_steps, lr=args.lr,
        checks=args.checks, threads=args.threads,
        locate=args.locate, op_detail=args.op_detail, grad_weights=args.grad_weights,
        vanishing_rel=args.vanishing, exploding_ratio=args.exploding,
    ).validate()
    if args.raw_graph_cap < 0:
        raise ConfigError(f"--raw-graph-cap must be >= 0, got {args.raw_graph_cap}")
    from . import distributed

    if args.save_grad and cfg.nproc > 1:
        raise ConfigError("--save-grad writes one process's dL/dz0: run it without --nproc")
    if cfg.nproc > 1 and not distributed.launched():
        with output_dir(args.out, "report.json"):  # fail before launching, not after
            return distributed.launch(_without_nproc(args.argv), cfg.nproc)
    rank = int(os.environ.get("RANK", "0")) if cfg.nproc > 1 else 0
    if rank != 0:  # rank 0 alone writes
        run(cfg, raw_graph_cap=args.raw_graph_cap, keep_raw_graph=False)
        return distributed.report_status(EXIT_OK, distributed.context())
    if args.graph == "always" and not args.no_html:
        from .report.dot import GraphvizMissing, INSTALL_HINT, find_dot

        if find_dot() is None:
            raise GraphvizMissing(f"--graph always, but the Graphviz 'dot' binary is not on "
                                  f"PATH: {INSTALL_HINT}")
    # the record is written last: a run that fails part-way leaves no report (and no new
    # directory) behind
    from .progress import Display, reporting

    shown = Display() if not (args.no_progress or args.json) else None
    with staged(args.out) as stage, reporting(shown or (lambda *a: None)):
        record = run(cfg, raw_graph_cap=args.raw_graph_cap, keep_raw_graph=not args.no_html)
        data = record.to_dict()
        rendered = None
        if not args.no_html:  # the renderer (jinja2, matplotlib) only when a page is asked for
            from .report.render import landed, write_run_files

            if shown is not None:
                shown.close()
                shown("stage", "writing the report (page, plots, graphs)")
            raw = {m: r.handles.get("raw_graph") for m, r in record.modes.items()}
            rendered = write_run_files(record, stage.path, graphs=args.graph, raw_graphs=raw)
        if shown is not None:
            shown.close()
        if args.save_grad:
            _save_grads(record, args.save_grad)
        write_json_atomic(stage.path / "report.json", data)
    path = stage.out / "report.json"
    if rendered is not None:
        rendered = landed(rendered, stage)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    else:
        print(clean(summary(record)), flush=True)
        _print_rendered(path, rendered)
    if getattr(args, "debug", False):  # the sampler raised: its traceback, as it came
        for mode, rep in record.modes.items():
            if rep.raised is not None and rep.raised.traceback:
                sys.stderr.write(f"[{mode}] the sampler's traceback:\n{rep.raised.traceback}")
    code = EXIT_OK if record.passed else EXIT_FAILED
    return distributed.report_status(code, distributed.context()) if cfg.nproc > 1 else code


def _save_grads(record, path: str) -> None:
    import torch

    from .report.files import write_bytes_atomic

    grads = {m: (None if r.handles.get("z0_grad") is None else
                 r.handles["z0_grad"].detach().cpu()) for m, r in record.modes.items()}
    import io

    buf = io.BytesIO()
    torch.save(grads, buf)
    write_bytes_atomic(path, buf.getvalue())


def _nproc(args: argparse.Namespace) -> int:
    """--nproc, or in a process torchrun started, its WORLD_SIZE (the launcher drops --nproc)."""
    if args.nproc == 1 and "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return args.nproc


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` (torchrun's own parser would take ``--nproc`` for
    an abbreviation of its ``--nproc-per-node``); the processes read WORLD_SIZE instead."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _print_rendered(json_path, rendered) -> None:
    if json_path is not None:
        print(f"record: {json_path}")
    if rendered is not None:
        for note in rendered.notes:
            print(clean(f"note: {note}"))
        print(f"report: {rendered.index}")


def cmd_optimize(args: argparse.Namespace) -> int:
    # composition only: options -> a config; launch the ranks; run; write and print the record
    from . import distributed
    from .optimize_run import OptimizeConfig, lines, run
    from .report import output_dir, staged, write_json_atomic
    from .report.render import landed, write_optimize_files
    from .runner import resolve_device

    nproc = _nproc(args)
    cfg = OptimizeConfig(
        objective=args.objective, iters=args.iters, lr=args.lr, clip=args.clip,
        norm_reg=args.norm_reg, chi_weight=args.chi_weight, perturb=args.perturb, mode=args.mode,
        denoiser=args.denoiser, solver=args.solver, steps=args.steps, batch=args.batch,
        seed=args.seed, dtype=args.dtype, device=args.device, checkpoint=args.checkpoint,
        nproc=nproc, parallel=args.parallel, dist_timeout=args.dist_timeout,
        progress=not args.no_progress, sampler_spec=args.sampler, convention=args.convention,
        allow_grad=args.allow_grad, unwrap=args.unwrap).validate()
    if nproc > 1 and not distributed.launched():
        with output_dir(args.out, "optimize.json"):  # fail before launching, not after
            return distributed.launch(_without_nproc(args.argv), nproc)
    ctx = distributed.init_from_env(args.dist_timeout, resolve_device(args.device)) \
        if nproc > 1 else None
    if ctx is not None and ctx.rank != 0:  # rank 0 alone writes
        run(cfg, ctx)
        return distributed.report_status(EXIT_OK, ctx)
    with staged(args.out) as stage:  # removed again if the optimisation fails
        outcome = run(cfg, ctx)
        rec = outcome.record
        rendered = write_optimize_files(rec, stage.path)
        write_json_atomic(stage.path / "optimize.json", rec.to_dict())
    print(clean("\n".join(lines(rec, outcome.objective, cfg.batch))))
    _print_rendered(stage.out / "optimize.json", landed(rendered, stage))
    code = EXIT_OK if rec.passed else EXIT_FAILED
    return distributed.report_status(code, ctx) if ctx is not None else code


def cmd_report(args: argparse.Namespace) -> int:
    from .records import OptimizeRecord
    from .report import load_record
    from .report.render import render, render_optimize

    record = load_record(args.json_path)
    out = args.out or str(Path(args.json_path).resolve().parent)
    # the page links its data file: the record (as judged again) goes with it
    if isinstance(record, OptimizeRecord):
        rendered = render_optimize(record, out, record_file="optimize.json")
    else:
        rendered = render(record, out, graphs=args.graph, record_file="report.json")
    for mode, diffs in record.rejudged.items():
        sys.stderr.write(clean(f"warning: {args.json_path} ({mode}): its stored verdict "
                               f"disagrees with its evidence: {'; '.join(diffs)}")[:2000] + "\n")
    _print_rendered(None, rendered)
    return EXIT_OK if record.passed else EXIT_FAILED


def cmd_diff(args: argparse.Namespace) -> int:
    from .diff import compare
    from .records import RunRecord
    from .report import load_record
    from .report.render import render_diff, run_title

    recs = []
    for path in (args.a, args.b):
        rec = load_record(path)
        if not isinstance(rec, RunRecord):
            raise GradcheckError(f"cannot diff {path!r}: it is an optimize.json; gradcheck diff "
                                 f"compares two report.json files")
        recs.append(rec)
    a, b = recs
    d = compare(a, b, f"{args.a} ({run_title(a.config)})", f"{args.b} ({run_title(b.config)})")
    if args.out:
        rendered = render_diff(d, args.out)
    print(clean("\n".join(d.lines())))
    if args.out:
        print(f"report: {rendered.index}")
    return EXIT_FAILED if d.worse else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 1), --help and --version (exit 0)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    args.argv = list(sys.argv[1:] if argv is None else argv)  # relaunched as is by --nproc
    for d in getattr(args, "path", None) or []:  # only what was asked, after what is installed
        d = os.path.abspath(d)
        if d not in sys.path:
            sys.path.append(d)
    try:
        return {"report": cmd_report, "optimize": cmd_optimize,
                "diff": cmd_diff}.get(args.command, cmd_run)(args)
    except KeyboardInterrupt:
        sys.stderr.write("gradcheck: interrupted\n")
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - one line for users, the traceback with --debug
        if getattr(args, "debug", False):
            raise
        msg = clean(" ".join(str(exc).split()) or type(exc).__name__)
        if "RANK" in os.environ and "GRADCHECK_STATUS_FILE" in os.environ:
            from .distributed import report_error

            report_error(msg if isinstance(exc, GradcheckError) else f"{type(exc).__name__}: {msg}")
        if isinstance(exc, GradcheckError):
            sys.stderr.write(f"gradcheck: error: {msg}\n")
        else:
            sys.stderr.write(f"gradcheck: error: {type(exc).__name__}: {msg} "
                             f"(--debug shows the traceback)\n")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""Diagnosis across processes, on PyTorch's own distributed engine (torch.distributed).

Each rank runs :func:`gradcheck.diagnose` on its shard of z0 (the same call on every rank, as
under ``torchrun``); the loss is the global one (each rank's part normalised by the global element
count, so the gradient of each shard is the single-process gradient of the global batch), the
numeric check uses a global unit direction, and every decision that starts more passes (the break
locator) is taken by all ranks together. Rank 0 then receives every rank's record and merges it:
norms as the root of the summed squares, means weighted by elements, max of maxima, any-reached;
the per-rank detail (what each shard received, what failed there, where it broke) stays in
``report.ranks``, and the check ``grad_reaches_every_rank`` fails when some rank's shard of z0 gets
no gradient, even though the merged statistics (any-reached) say the gradient arrived.

Parallel layouts for the built-in sampler (:func:`parallel_sampler`): ``ddp`` (the batch of z0
sharded, the denoiser in ``DistributedDataParallel``), ``fsdp`` (the batch sharded, the denoiser
sharded with ``fully_shard``), ``cp`` (the latent split along its height for the state, gathered
with the autograd-aware ``torch.distributed.nn.functional.all_gather`` for each denoiser call, each
rank keeping its slice of the result).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from .errors import ConfigError

PARALLEL = ("ddp", "fsdp", "cp")


@dataclass
class Context:
    """The process group a diagnosis runs in (world size > 1)."""

    rank: int
    world: int
    device: torch.device

    def _t(self, values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def sum(self, x: float) -> float:
        t = self._t([x])
        dist.all_reduce(t)
        return float(t[0])

    def max(self, x: float) -> float:
        t = self._t([x])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t[0])

    def any(self, flag: bool) -> bool:
        return self.max(1.0 if flag else 0.0) > 0

    def all_gather_int(self, x: int) -> list[int]:
        """Every rank's integer ``x`` on every rank (rank order)."""
        mine = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        parts = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        return [int(p.item()) for p in parts]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out


def context() -> Context | None:
    """The active process group as a :class:`Context`, or None outside one (or with one rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    backend = dist.get_backend()
    dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else \
        torch.device("cpu")
    return Context(rank=dist.get_rank(), world=world, device=dev)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the env)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and \
        int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(timeout_s: float = 120.0, device: str | torch.device = "cpu") -> Context:
    """Initialise the default process group from torchrun's environment: ``nccl`` for a CUDA
    ``device`` (each rank on its ``LOCAL_RANK`` GPU), ``gloo`` for the CPU; ``timeout_s`` bounds
    every collective, so a rank that died makes the others fail instead of hang."""
    cuda = torch.device(device).type == "cuda"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    ctx = context()
    if ctx is None:
        raise ConfigError("a distributed run needs WORLD_SIZE > 1")
    return ctx


def check_options(nproc: int, parallel: str, batch: int | None, timeout_s: float) -> None:
    """``--nproc``, ``--parallel``, the batch (None: not drawn by us) and ``--dist-timeout`` of a
    run or an optimisation, before anything is launched."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc!r}")
    if nproc == 1:
        return
    if parallel not in PARALLEL:
        raise ConfigError(f"unknown --parallel {parallel!r}; choose one of {', '.join(PARALLEL)}")
    if batch is not None and batch % nproc and parallel != "cp":
        raise ConfigError(f"--batch {batch} does not split over --nproc {nproc} processes")
    if not (timeout_s > 0):
        raise ConfigError(f"--dist-timeout must be > 0, got {timeout_s!r}")


def shard(t: torch.Tensor, dim: int, ctx: Context) -> torch.Tensor:
    """This rank's equal part of ``t`` along ``dim``."""
    n = t.shape[dim]
    if n % ctx.world:
        what = "batch" if dim == 0 else f"dimension {dim}"
        raise ConfigError(f"the {what} of z0 ({n}) does not split evenly over {ctx.world} "
                          f"processes")
    return t.chunk(ctx.world, dim)[ctx.rank].contiguous()


def gather_along(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The whole tensor from every rank's part, differentiably (autograd-aware all_gather)."""
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private module in torch 2.13
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(t.contiguous())
    return torch.cat(parts, dim=dim)


class ContextParallel(torch.nn.Module):
    """A denoiser call on a latent split along ``dim``: the parts are gathered (autograd-aware),
    the denoiser runs on the whole latent, and each rank keeps its part of the result."""

    def __init__(self, inner: Callable[..., Any], dim: int, ctx: Context) -> None:
        super().__init__()
        self.inner = inner
        self.dim = dim
        self.ctx = ctx

    def forward(self, x: torch.Tensor, sigma: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        full = gather_along(x, self.dim)
        out = self.inner(full, sigma, *args, **kwargs)
        return out.chunk(self.ctx.world, self.dim)[self.ctx.rank]


def parallel_sampler(den: torch.nn.Module, config: Any, mode: str, seed: int, parallel: str,
                     ctx: Context):
    """The built-in RES sampler laid out over the process group (see the module docs). Its
    ``shard_dim`` says how z0 is split: 0 (batch) for ddp/fsdp, 2 (height) for cp. Step noise is
    formed at the global shape (learnable: from the gathered z0) and sharded the same way, so
    every layout computes exactly the single-process function of the global z0."""
    from .sampling import ResSampler

    if parallel not in PARALLEL:
        raise ConfigError(f"unknown parallel layout {parallel!r}; choose one of "
                          f"{', '.join(PARALLEL)}")
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # DDP refuses a module with no trainable parameter: the flags are raised for its
        # constructor only and put back as the user had them (a weight that did not require
        # grad never gets one: only z0 and the step noises are differentiated)
        flags = [(p, p.requires_grad) for p in den.parameters()]
        try:
            net = DistributedDataParallel(den.requires_grad_(True))
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
        dim = 0
    elif parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in list(den.modules())[1:]:
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and \
                    sum(p.numel() for p in m.parameters()) >= ctx.world:
                fully_shard(m)
        net = fully_shard(den)
        dim = 0
    else:
        net = ContextParallel(den, 2, ctx)
        dim = 2

    class ParallelRes(ResSampler):
        shard_dim = dim
        parallel_layout = parallel

        def _noise(self, z0: torch.Tensor):
            base = super()._noise(gather_along(z0, dim)) if self.mode != "default" else None
            if base is None:
                return None
            return lambda i, x: base(i, gather_along(x, dim)).chunk(ctx.world, dim)[ctx.rank]

    return ParallelRes(net, config, mode=mode, seed=seed)


# -- merging the ranks' records on rank 0 ----------------------------------------------------------

#: Probes of a value every rank holds whole (the global loss: each rank's part of it gets the
#: gradient 1, as the single-process loss does): merged by taking one rank's, not by adding up.
REPLICATED_KINDS = ("loss",)


def _merge_probe(ps: list, dim: int) -> Any:
    """One probe from every rank's: sum of squares for norms, element-weighted means, max of
    maxima, any-reached; the shape is the global one (the shard dimension summed)."""
    from dataclasses import replace

    if ps[0].kind in REPLICATED_KINDS:
        return replace(ps[0], reached=any(p.reached for p in ps),
                       max_abs=max((p.max_abs for p in ps if p.max_abs is not None),
                                   default=ps[0].max_abs))

    shape = list(ps[0].shape)
    if dim < len(shape) and all(len(p.shape) == len(shape) for p in ps):
        shape[dim] = sum(p.shape[dim] for p in ps)
    common = dict(shape=shape, requires_grad=any(p.requires_grad for p in ps),
                  connected_to_z0=_any_none(p.connected_to_z0 for p in ps))
    reached = [p for p in ps if p.reached]
    if not reached:
        return replace(ps[0], **common)
    n = sum(math.prod(p.shape) for p in reached)
    return replace(
        ps[0], **common, reached=True,
        norm=math.sqrt(sum((p.norm or 0.0) ** 2 for p in reached)),
        mean_abs=sum((p.mean_abs or 0.0) * math.prod(p.shape) for p in reached) / max(1, n),
        max_abs=max((p.max_abs or 0.0) for p in reached),
        nonfinite=sum(p.nonfinite or 0 for p in reached),
    )


def _any_none(values) -> bool | None:
    vals = list(values)
    if all(v is None for v in vals):
        return None
    return any(bool(v) for v in vals)


def merge(reports: list, *, shard_dim: int, layout: str | None) -> Any:
    """One FlowReport from every rank's (rank order), for rank 0 to judge and write."""
    from dataclasses import replace

    from .checks import run_checks
    from .records import PATH_KINDS

    first = reports[0]
    by_rank = [{(p.order, p.name): p for p in r.probes} for r in reports]
    probes = []
    for p in first.probes:
        group = [m.get((p.order, p.name)) for m in by_rank]
        probes.append(_merge_probe([q for q in group if q is not None], shard_dim))
    ranks = []
    for k, r in enumerate(reports):
        z = next((p for p in r.probes if p.kind == "z0"), None)
        loc = r.locator.primary if r.locator else None
        ranks.append({
            "rank": k, "passed": r.passed, "failed": [f.name for f in r.failed],
            "z0_status": z.status if z else None, "z0_norm": z.norm if z else None,
            "located": loc.describe() if loc else None,
            "unreached": [p.name for p in r.probes if p.status in ("unreached", "not_in_graph")
                          and p.kind in ("z0",) + PATH_KINDS][:8],
        })
    locator = first.locator
    if locator is not None:
        primary_rank = next((k for k, r in enumerate(reports)
                             if r.locator and r.locator.primary), None)
        if primary_rank is not None:
            src = reports[primary_rank].locator
            prim = replace(src.primary, rank=primary_rank)
            locator = replace(src, primary=prim)
    optim = first.optim
    if optim is not None:
        optim = replace(optim, z0_changed=any(r.optim.z0_changed for r in reports if r.optim),
                        max_abs_change=max(r.optim.max_abs_change for r in reports if r.optim))
    hyg = replace(first.hygiene,
                  hooks_left=sum(r.hygiene.hooks_left for r in reports),
                  hooks_registered=sum(r.hygiene.hooks_registered for r in reports),
                  sampler_changed_grad_mode=any(r.hygiene.sampler_changed_grad_mode
                                                for r in reports))
    samples = None
    if all(r.samples is not None for r in reports):
        samples = _merge_samples([r.samples for r in reports], first.expect.get("sample_shape"),
                                 shard_dim)
    merged = replace(
        first, probes=probes, locator=locator, optim=optim, hygiene=hyg, samples=samples,
        output_requires_grad=all(r.output_requires_grad for r in reports),
        loss_requires_grad=all(r.loss_requires_grad for r in reports),
        output_grad_max_abs=max((r.output_grad_max_abs or 0.0) for r in reports),
        ranks=ranks, world_size=len(reports), parallel=layout,
    )
    if samples is not None and shard_dim != 0 and first.expect.get("sample_shape"):
        shp = list(first.expect["sample_shape"])
        shp[shard_dim - 1] *= len(reports)
        merged.expect = dict(merged.expect, sample_shape=shp)
    merged.checks = run_checks(merged)
    return merged


def _merge_samples(per_rank: list, shape: list[int] | None, shard_dim: int) -> list | None:
    if shard_dim == 0:
        return [row for rows in per_rank for row in rows]
    if not shape:
        return None
    out = []
    for b in range(len(per_rank[0])):
        parts = [torch.tensor(rows[b]).reshape(shape) for rows in per_rank]
        out.append(torch.cat(parts, dim=shard_dim - 1).reshape(-1).tolist())
    return out


# -- launching: gradcheck run --nproc N ----------------------------------------------------------

STATUS_ENV = "GRADCHECK_STATUS_FILE"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], nproc: int) -> int:
    """Run ``gradcheck <argv>`` in ``nproc`` processes with PyTorch's launcher
    (``torch.distributed.run``) and return the run's exit code: rank 0's verdict (0 or 2), or 1
    with one line naming the rank that failed and why."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from .errors import GradcheckError

    with tempfile.TemporaryDirectory(prefix="gradcheck-launch-") as tmp:
        status = Path(tmp) / "status"
        env = dict(os.environ, **{STATUS_ENV: str(status)})
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "--max_restarts", "0", "-m", "gradcheck", *argv]
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        errors = sorted(Path(tmp).glob("status.rank*.err"))
        if errors:
            raise GradcheckError(errors[0].read_text().strip())
        if not status.exists():
            raise GradcheckError(f"the {nproc} processes failed (torchrun exit code "
                                 f"{proc.returncode}): {launch_failure(proc.stderr)}")
        if proc.returncode != 0:
            # every rank passed the closing barrier and rank 0 wrote its verdict: the run and its
            # report are complete, and a process died while shutting down
            sys.stderr.write(f"gradcheck: warning: the run completed, then a process failed while "
                             f"shutting down (torchrun exit code {proc.returncode}): "
                             f"{launch_failure(proc.stderr)}\n")
        return int(status.read_text())


def launch_failure(stderr: str) -> str:
    """One line on why torchrun failed, from its stderr: the rank of the first failure, its exit
    code or signal, and the last error line that rank's process printed (a C++ ``what():``, a
    Python exception), where there is one."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    agent = next((i for i, ln in enumerate(lines) if ln.startswith("Traceback")
                  and any("torch/distributed/run.py" in x for x in lines[i:i + 8])), len(lines))
    cause = next((i for i, ln in enumerate(lines) if ln.startswith("Root Cause")), None)
    own = [ln for ln in lines[:agent] if "what():" in ln or _is_error_line(ln)]
    parts = []
    if cause is not None:
        fields = {}
        for ln in lines[cause + 1:cause + 10]:
            key, sep, value = ln.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        rank = fields.get("rank", "?").split(" ")[0]
        code = fields.get("exitcode", "")
        sig = code[code.find("(SIG") + 1:code.rfind(")")] if "(SIG" in code else ""
        head = code.split(" ")[0] if code else "?"
        parts.append(f"rank {rank} " + (f"was killed by {sig} (exit code {head})" if sig
                                        else f"exited with code {head}"))
    if own:
        parts.append(own[-1])
    if not parts:
        tail = next((ln for ln in reversed(lines) if "Error" in ln), None)
        parts.append(tail or (lines[-1] if lines else "no output"))
    return ": ".join(parts)


def _is_error_line(line: str) -> bool:
    head = line.split(":", 1)[0].split(" ")[-1]
    return head.endswith(("Error", "Exception")) and ":" in line and \
        not head.endswith("ChildFailedError")


def report_status(code: int, ctx: Context | None) -> int:
    """In a launched process: rank 0 hands its exit code to the launcher; every rank exits 0
    (torchrun counts any other code as a crash). Outside our launcher the code is returned.

    With a process group, every rank first waits at a closing barrier (so no rank exits while
    another still talks to it: gloo may abort a process whose peer vanished) and then destroys
    the group. A teardown that fails after the barrier does not change the verdict."""
    path = os.environ.get(STATUS_ENV)
    if ctx is not None:
        finished = True
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer died: the launcher reports it
            finished = False
        if finished and path and ctx.rank == 0:
            _write_status(path, code)
        try:
            dist.destroy_process_group()
        except Exception as exc:  # noqa: BLE001 - shutting down: said, the verdict stands
            sys.stderr.write(f"gradcheck: note: rank {ctx.rank}: destroying the process group "
                             f"failed ({type(exc).__name__}); the verdict stands\n")
        return 0 if path else code
    if not path:
        return code
    _write_status(path, code)
    return 0


def _write_status(path: str, code: int) -> None:
    with open(path, "w") as f:
        f.write(str(code))


def report_error(message: str) -> None:
    """In a launched process: leave this rank's one-line error for the launcher."""
    path = os.environ.get(STATUS_ENV)
    if path:
        rank = os.environ.get("RANK", "?")
        with open(f"{path}.rank{rank}.err", "w") as f:
            f.write(f"rank {rank}: {message}")


class Sharding:
    """How an optimisation over a sharded z0 forms global quantities (``gradcheck optimize
    --nproc``). Batch sharding (ddp, fsdp: ``dim`` 0): each rank's objective is the mean over its
    shard, the global one the mean over ranks. Latent sharding (cp: ``dim`` 2): the output is
    gathered (autograd-aware) and the objective computed on the whole image on every rank;
    its gradient then arrives once from every rank, so each rank's part is scaled by 1/world."""

    def __init__(self, ctx: Context, dim: int) -> None:
        self.ctx = ctx
        self.dim = dim

    @property
    def replicated(self) -> bool:
        return self.dim != 0

    def full(self, t: torch.Tensor) -> torch.Tensor:
        return gather_along(t, self.dim) if self.replicated else t

    def part(self, loss: torch.Tensor) -> torch.Tensor:
        """This rank's share of a per-rank objective (the global one is the sum of shares)."""
        return loss / self.ctx.world

    def value(self, v: float) -> float:
        """The global value of an objective computed per rank (as a mean)."""
        return v if self.replicated else self.ctx.sum(v) / self.ctx.world

    def sum(self, v: float) -> float:
        return self.ctx.sum(v)

    def sample_norms(self, z: torch.Tensor) -> torch.Tensor:
        """Each sample's norm over the whole latent: [local batch]."""
        sq = z.detach().reshape(z.shape[0], -1).double().square().sum(dim=1)
        if self.replicated:
            dist.all_reduce(sq)
        return sq.sqrt().to(z.dtype)

    def mean_norm(self, z: torch.Tensor) -> float:
        n = self.sample_norms(z)
        if self.replicated:
            return float(n.mean())
        return self.ctx.sum(float(n.sum())) / self.ctx.sum(float(n.numel()))

    def all(self, flag: bool) -> bool:
        return not self.ctx.any(not flag)

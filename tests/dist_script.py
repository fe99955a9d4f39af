"""Run under torchrun by tests/test_distributed.py: gradcheck.diagnose from a user's own torchrun
script. Rank 0 writes what it found as JSON to argv[1]."""
import gc
import json
import sys

import torch
import torch.distributed as dist

import gradcheck
from gradcheck import distributed as D
from gradcheck.policy import Local
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser

ctx = D.init_from_env(60)
cfg = SamplerConfig(steps=3)
g = torch.Generator().manual_seed(0)
Z = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=g)
T = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=g)
found = {"layouts": {}, "faults": {}, "parity": {}}

for layout in ("ddp", "fsdp", "cp"):
    for mode in ("default", "learnable_step_noise"):
        smp = D.parallel_sampler(build_denoiser("digits", dtype=torch.float64), cfg, mode, 0,
                                 layout, ctx)
        dim = smp.shard_dim
        rep = gradcheck.diagnose(smp, D.shard(Z, dim, ctx), target=D.shard(T, dim, ctx),
                                 optim_steps=1)
        # the single-process gradient of the same global batch and loss
        z = Z.clone().requires_grad_(True)
        ref = ResSampler(build_denoiser("digits", dtype=torch.float64), cfg, mode=mode)
        (gz,) = torch.autograd.grad(torch.nn.functional.mse_loss(ref(z), T), [z])
        mine = D.shard(gz, dim, ctx)
        err = float((rep.handles["z0_grad"] - mine).norm() / mine.norm())
        errs = ctx.gather(err)
        if ctx.rank == 0:
            found["layouts"][f"{layout}/{mode}"] = {
                "passed": rep.passed, "failed": [f.name for f in rep.failed], "rel_errors": errs,
                "world_size": rep.world_size, "ranks": rep.ranks, "parallel": rep.parallel,
                "z0_shape": rep.probe("z0").shape}
        # the default loss (the baseline from other noise): N processes = one process, in the
        # loss, every probe, <v, dL/dz0> and dL/dz0 itself
        smp = D.parallel_sampler(build_denoiser("digits", dtype=torch.float64), cfg, mode, 0,
                                 layout, ctx)
        rep = gradcheck.diagnose(smp, D.shard(Z, dim, ctx), optim_steps=1)
        one = gradcheck.diagnose(ResSampler(build_denoiser("digits", dtype=torch.float64), cfg,
                                            mode=mode), Z, optim_steps=1, policy=Local())
        mine = D.shard(one.handles["z0_grad"], dim, ctx)
        errs = ctx.gather(float((rep.handles["z0_grad"] - mine).norm() / mine.norm()))
        if ctx.rank == 0:
            def rel(a, b):
                return abs(a - b) / max(abs(b), 1e-300)

            probes = {p.name: p for p in one.probes}
            worst = max(rel(p.norm, probes[p.name].norm) for p in rep.probes)
            found["parity"][f"{layout}/{mode}"] = {
                "grad": max(errs), "loss": rel(rep.loss, one.loss), "probe_norms": worst,
                "reverse": rel(rep.numeric.reverse, one.numeric.reverse),
                "fd": rel(rep.numeric.fd, one.numeric.fd),
                # the difference is taken from losses summed over ranks in another order: equal
                # within the round-off allowance the check itself applies
                "fd_over_roundoff": abs(rep.numeric.fd - one.numeric.fd) / one.numeric.atol,
                "one_sided": bool(one.numeric.sweep[0].get("one_sided")),
                "loss_probe": rep.probe("loss").norm, "passed": rep.passed,
                "same_probes": sorted(probes) == sorted(p.name for p in rep.probes)}

den = build_denoiser("digits", dtype=torch.float64)


class PlainAllGatherCP(torch.nn.Module):
    def forward(self, x, s):
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x)  # not autograd-aware: the bug
        return den(torch.cat(parts, dim=2), s).chunk(ctx.world, 2)[ctx.rank]


class DetachThenBroadcast(torch.nn.Module):
    def forward(self, x, s):
        t = x.detach().clone()  # detached to broadcast it: the bug
        dist.broadcast(t, src=0)
        return den(t, s)


class ExcludeRankOne(torch.nn.Module):
    def forward(self, x, s):
        out = den(x, s)
        return out.detach() if ctx.rank == 1 else out  # rank 1's shard left out: the bug


class CutCallTwoOnRankOne(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, s):
        self.calls += 1
        out = den(x, s)
        if ctx.rank == 1 and self.calls % 4 == 3:  # D_out[2] of every run, rank 1 only: the bug
            return out.detach()
        return out


for name, net, dim in (("all_gather", PlainAllGatherCP(), 2),
                       ("broadcast", DetachThenBroadcast(), 0),
                       ("exclude", ExcludeRankOne(), 0),
                       ("one_call_one_rank", CutCallTwoOnRankOne(), 0)):
    rep = gradcheck.diagnose(ResSampler(net, cfg), D.shard(Z, dim, ctx), mode="default",
                             optim_steps=0)
    if ctx.rank == 0:
        p = rep.locator.primary
        found["faults"][name] = {
            "passed": rep.passed, "failed": [f.name for f in rep.failed],
            "cause": p.cause if p else None, "op": p.op if p else None,
            "location": p.location if p else None, "rank": p.rank if p else None,
            "step": p.step if p else None,
            "every_rank": rep.check("grad_reaches_every_rank").message,
            "every_rank_passes": rep.check("every_rank_passes").message,
            "ranks": rep.ranks}

if ctx.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(found, f)
# the DDP / FSDP modules made above hold the process group: free them (and their reducers' work)
# while it is alive, and let every rank get here, before it is destroyed
del smp, rep, one, net
gc.collect()
dist.barrier()
dist.destroy_process_group()

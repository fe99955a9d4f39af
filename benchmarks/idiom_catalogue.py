"""The idiom catalogue (issue 27): everyday torch idioms in a denoiser, healthy or breaking the
gradient at one step, in three sampler styles (a plain loop, the k-diffusion adapter, the
built-in RES sampler). Each case's truth is plain autograd first (does z0's gradient equal the
plain denoiser's?); then gradcheck's verdict is scored: detected, right step, right cause, and
false alarms on the healthy ones.

    python benchmarks/idiom_catalogue.py

Bar (the issue's): 100% detected, 100% right step, >= 95% right cause, 0 false alarms.
``tests/idioms/test_catalogue.py`` runs the same table.
"""
from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import gradcheck  # noqa: E402
import gradcheck.adapters  # noqa: E402,F401

K = 2  # the broken step (0-based: the third denoiser call)
SIGMAS = [10.0, 5.0, 2.0, 1.0, 0.0]


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 8)).double()


def _at(sigma: Any, at: float) -> bool:
    s = float(sigma.flatten()[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
    return abs(s - at) <= 1e-9 * max(1.0, at)


def _cut(kind: str, h: torch.Tensor) -> torch.Tensor:
    """The idiom that breaks the gradient through ``h``."""
    if kind == "detach":
        return h.detach()
    if kind == "no_grad":
        with torch.no_grad():
            return h * 1.0
    if kind == "inference_mode":
        with torch.inference_mode():
            y = h * 1.0
        return y.clone()
    if kind == "numpy":
        return torch.as_tensor(h.detach().numpy().copy())
    if kind == "new_tensor":
        return h.new_tensor(h)
    if kind == "uint8":
        return (h * 50 + 128).clamp(0, 255).to(torch.uint8).to(h.dtype).sub(128) / 50
    if kind == "hook":
        if h.requires_grad:
            h.register_hook(lambda g: g * 1.5)
        return h
    if kind == "distribution_sample":
        return torch.distributions.Normal(h, 1e-6).sample()
    raise ValueError(kind)


#: broken idioms: kind -> the causes that name it rightly
BROKEN = {"detach": ("detach",), "no_grad": ("no_grad",), "inference_mode": ("inference_mode",),
          "numpy": ("numpy_roundtrip",), "new_tensor": ("copy_constructor",),
          "uint8": ("int_cast",), "hook": ("gradient_hook",),
          "distribution_sample": ("distribution_sample",)}
#: healthy idioms (the gradient is the plain denoiser's)
HEALTHY = ("plain", "checkpoint_reentrant", "checkpoint", "compile", "identity_hook", "clone",
           "rsample_mean")


class Denoiser(torch.nn.Module):
    """``D(x, sigma) = net(x) / (1 + sigma) + x * sigma / (1 + sigma)``-ish, with ``kind``
    applied to the network's output at sigma ``at`` (broken kinds) or at every call."""

    def __init__(self, kind: str, at: float) -> None:
        super().__init__()
        self.net, self.kind, self.at = _net(), kind, at
        self.compiled = torch.compile(self.net, backend="aot_eager") if kind == "compile" \
            else None

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "checkpoint_reentrant":
            return torch.utils.checkpoint.checkpoint(self.net, x, use_reentrant=True)
        if self.kind == "checkpoint":
            return torch.utils.checkpoint.checkpoint(self.net, x, use_reentrant=False)
        if self.compiled is not None:
            return self.compiled(x)
        return self.net(x)

    def forward(self, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        h = self._inner(x)
        if self.kind in BROKEN and _at(sigma, self.at):
            h = _cut(self.kind, h)
        elif self.kind == "identity_hook" and h.requires_grad:
            h.register_hook(lambda g: g)
        elif self.kind == "clone":
            h = h.clone()
        elif self.kind == "rsample_mean":
            h = torch.distributions.Normal(h, 1.0).mean
        s = sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma))
        s = s.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) if s.ndim else s.to(x.dtype)
        return h / (1 + s) + x * s / (1 + s) * 0.1


def _loop(den: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from tests.idioms._loop import euler_loop  # the idiom matrix's plain Euler loop

    return euler_loop(den, sigmas=SIGMAS)


def _kdiffusion(den: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from tests import kdiff_like

    return gradcheck.adapters.kdiffusion(kdiff_like.sample_euler, den,
                                         torch.tensor(SIGMAS, dtype=torch.float64), unwrap=True)


def _builtin_config():
    from gradcheck.sampling import SamplerConfig

    return SamplerConfig(solver="2ab", steps=4, sigma_max=10.0, sigma_min=0.5)


def _builtin(den: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    from gradcheck.sampling import ResSampler

    return ResSampler(den, _builtin_config())


STYLES: dict[str, tuple[Callable[[torch.nn.Module], Callable], Callable[[], float]]] = {
    "loop": (_loop, lambda: SIGMAS[K]),
    "kdiffusion": (_kdiffusion, lambda: SIGMAS[K]),
    "builtin": (_builtin, lambda: float(_builtin_config().sigmas()[K])),
}


@dataclass
class Case:
    kind: str
    style: str

    @property
    def broken(self) -> bool:
        return self.kind in BROKEN

    def sampler(self) -> Callable[[torch.Tensor], torch.Tensor]:
        make, at = STYLES[self.style]
        return make(Denoiser(self.kind, at()))

    @property
    def name(self) -> str:
        return f"{self.style}-{self.kind}"


def cases() -> list[Case]:
    return [Case(k, s) for s in STYLES for k in (*HEALTHY, *BROKEN)]


Z0 = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def truth(case: Case) -> bool:
    """Plain autograd: is z0's gradient other than the plain denoiser's (or missing)?"""
    def grad(sample):
        z = Z0.clone().requires_grad_(True)
        out = sample(z)
        if not out.requires_grad:
            return None
        out.square().mean().backward()  # the user's own backward (reentrant checkpoints)
        return z.grad
    g, ref = grad(case.sampler()), grad(Case("plain", case.style).sampler())
    return g is None or not torch.allclose(g, ref, rtol=1e-6, atol=1e-12)


def score(case: Case) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        broken = truth(case)
        assert broken is case.broken, f"{case.name}: plain autograd says broken={broken}"
        t0 = time.perf_counter()
        rep = gradcheck.diagnose(case.sampler(), Z0)
    p = rep.locator.primary if rep.locator is not None else None
    row = {"case": case.name, "style": case.style, "kind": case.kind, "broken": broken,
           "passed": rep.passed, "seconds": round(time.perf_counter() - t0, 3),
           "step": p.step if p else None, "cause": p.cause if p else None,
           "failed": [f.name for f in rep.failed]}
    if broken:
        row["detected"] = not rep.passed
        row["right_step"] = p is not None and p.step == K
        row["right_cause"] = p is not None and p.cause in BROKEN[case.kind]
    else:
        row["false_alarm"] = not rep.passed
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    broken = [r for r in rows if r["broken"]]
    healthy = [r for r in rows if not r["broken"]]
    share = (lambda key: sum(r[key] for r in broken) / len(broken)) if broken else \
        (lambda key: math.nan)
    return {"broken": len(broken), "healthy": len(healthy), "detected": share("detected"),
            "right_step": share("right_step"), "right_cause": share("right_cause"),
            "false_alarms": sum(r["false_alarm"] for r in healthy)}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for case in cases():
        rows.append(score(case))
        r = rows[-1]
        verdict = ("detected" if r.get("detected") else "MISSED") if r["broken"] else \
            ("FALSE ALARM" if r["false_alarm"] else "passes")
        print(f"{case.name:32s} {verdict:11s} step {r['step']} cause {r['cause']} "
              f"({r['seconds']:.2f} s)", flush=True)
    s = summary(rows)
    print(f"detected {s['detected']:.0%}, right step {s['right_step']:.0%}, right cause "
          f"{s['right_cause']:.0%} of {s['broken']} broken; {s['false_alarms']} false alarm(s) "
          f"in {s['healthy']} healthy")
    from results_file import write
    print(write("idiom_catalogue", {"summary": s, "rows": rows}))


if __name__ == "__main__":
    main()

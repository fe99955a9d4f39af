"""Train the built-in models on scikit-learn's digits (1,797 handwritten digits, 8x8, shipped with
the package: no download): an EDM-preconditioned TinyUNet denoiser and a small CNN classifier.

    python -m gradcheck.models.train --out gradcheck/models/weights        # the shipped weights
    python -m gradcheck.models.train --out /tmp/w --denoiser-iters 20 --classifier-epochs 1

Seeded and reproducible on the CPU (same seed, same torch, same weights); the full run takes a few
minutes on 2 cores. Needs scikit-learn (``pip install gradcheck[train]``) for the data.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from ..sampling.denoisers import EDMDenoiser, TinyUNet
from . import DENOISER_CONFIG, DigitClassifier, save_weights


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """Images scaled to [-1, 1] as [N, 1, 8, 8] float32, labels [N]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError("training needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # [N, 1, 8, 8]
    return x, torch.tensor(d.target, dtype=torch.long)


def train_denoiser(x: torch.Tensor, *, iters: int, seed: int, batch: int = 128,
                   lr: float = 2e-3, log_every: int = 500) -> EDMDenoiser:
    """EDM training (Karras et al. 2022): sigma ~ logN(P_mean, P_std), loss weighted by
    (sigma^2 + sd^2)/(sigma sd)^2; AdamW with cosine decay; an EMA of the weights is returned."""
    torch.manual_seed(seed)
    cfg = DENOISER_CONFIG
    model = EDMDenoiser(TinyUNet(channels=1, width=cfg["width"], emb=cfg["emb"]),
                        sigma_data=cfg["sigma_data"])
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / 200) * 0.5 * (1 + math.cos(math.pi * k / max(1, iters))))
    g = torch.Generator().manual_seed(seed)
    sd = cfg["sigma_data"]
    t0 = time.perf_counter()
    for k in range(iters):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        x0 = x[idx]  # [B, 1, 8, 8]
        sigma = (torch.randn(batch, generator=g) * 1.2 - 1.2).exp()  # [B]
        noisy = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=g)
        w = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss = (w[:, None, None, None] * (model(noisy, sigma) - x0) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + k) / (10 + k))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        if log_every and (k % log_every == 0 or k == iters - 1):
            print(f"denoiser iter {k:5d}/{iters}  loss {loss.item():.4f}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return ema.eval()


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int,
                     batch: int = 128) -> tuple[DigitClassifier, float]:
    """A small CNN; inputs get mild noise so it also reads sampler outputs. Returns the model and
    its accuracy on a held-out fifth of the data."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(x.shape[0], generator=g)
    n_test = x.shape[0] // 5
    test, train = perm[:n_test], perm[n_test:]
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for ep in range(epochs):
        order = train[torch.randperm(train.numel(), generator=g)]
        for i in range(0, order.numel(), batch):
            b = order[i:i + batch]
            xb = x[b] + 0.1 * torch.randn(x[b].shape, generator=g)
            loss = nn.functional.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    return model, acc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--denoiser-iters", type=int, default=4000)
    ap.add_argument("--classifier-epochs", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_digits_tensor()
    clf, acc = train_classifier(x, y, epochs=args.classifier_epochs, seed=args.seed)
    print(f"classifier held-out accuracy {acc:.4f}", flush=True)
    den = train_denoiser(x, iters=args.denoiser_iters, seed=args.seed)
    info = {
        "denoiser": save_weights(den, out / "denoiser.pt"),
        "classifier": save_weights(clf, out / "classifier.pt"),
        "classifier_heldout_accuracy": acc,
        "seed": args.seed, "denoiser_iters": args.denoiser_iters,
        "classifier_epochs": args.classifier_epochs, "torch": torch.__version__,
        "config": DENOISER_CONFIG,
    }
    (out / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()

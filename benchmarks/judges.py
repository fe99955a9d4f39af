"""An independent judge of 8x8 digit samples: nearest neighbours on the held-out fifth of
scikit-learn's digits, the fifth the built-in classifier did not train on (the same seeded split,
``gradcheck.models.train``). It shares nothing with the classifier an objective such as
``class:3`` maximises (no weights, no gradients, another kind of model), so an adversarial
sample that fools the classifier is not scored as a digit by it.

``judge(images) -> (labels, distances)``: the majority label of the ``k`` nearest held-out
images (L2 on [-1, 1] pixels), and the distance to the nearest, which says how far a sample
lies from every real digit (an adversarial pattern is far from all of them).
"""
from __future__ import annotations

import torch

from gradcheck.models.train import load_digits_tensor


def held_out(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out fifth of the digits under ``train_classifier``'s seeded split."""
    x, y = load_digits_tensor()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    test = perm[: x.shape[0] // 5]
    return x[test], y[test]


class KNNJudge:
    def __init__(self, k: int = 5, seed: int = 0) -> None:
        self.x, self.y = held_out(seed)
        self.flat = self.x.reshape(self.x.shape[0], -1).double()
        self.k = k
        # how far a real (held-out) digit lies from its nearest other held-out digit: the scale
        # that says whether a sample looks like a digit at all
        d = torch.cdist(self.flat, self.flat)
        d.fill_diagonal_(float("inf"))
        self.real_nn = d.min(1).values  # [N]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = images.detach().reshape(images.shape[0], -1).double().clamp(-1, 1)
        d = torch.cdist(q, self.flat)  # [B, N]
        near = d.topk(self.k, largest=False)
        labels = torch.mode(self.y[near.indices], dim=1).values
        return labels, near.values[:, 0]

    def accuracy_on_held_out(self) -> float:
        """Leave-one-out accuracy on the held-out images themselves (the judge's own quality)."""
        d = torch.cdist(self.flat, self.flat)
        d.fill_diagonal_(float("inf"))
        near = d.topk(self.k, largest=False).indices
        return float((torch.mode(self.y[near], dim=1).values == self.y).double().mean())

"""The noise modes: learnable step noise is an exact N(0, I) orthogonal transform of z0, etc."""
from __future__ import annotations

import math

import torch

from gradcheck.sampling import FreshStepNoise, LeafStepNoise, LearnableStepNoise

from .conftest import z0_like


def test_learnable_noise_is_a_signed_permutation_of_z0_per_sample():
    z = z0_like(shape=(3, 2, 4, 4))
    n = LearnableStepNoise(z, seed=5)
    for i in range(4):
        eps = n(i, z)
        assert eps.shape == z.shape
        for b in range(3):  # same multiset of |values| per sample: a permutation with signs
            torch.testing.assert_close(eps[b].abs().flatten().sort().values,
                                       z[b].abs().flatten().sort().values)
        torch.testing.assert_close(eps.norm(), z.norm())  # orthogonal
    assert not torch.equal(n(0, z), n(1, z))  # a different map per step
    perm, _ = n.transform(0)
    assert sorted(perm.tolist()) == list(range(32))  # a permutation ...
    assert not bool((perm == torch.arange(32)).any())  # ... without fixed points
    seen, j = set(), 0
    while j not in seen:  # ... that is one single cycle
        seen.add(j)
        j = int(perm[j])
    assert len(seen) == 32
    torch.testing.assert_close(LearnableStepNoise(z, 5)(2, z), n(2, z))  # seeded
    assert not torch.equal(LearnableStepNoise(z, 6)(2, z), n(2, z))


def test_learnable_noise_is_standard_normal_when_z0_is():
    z = z0_like(shape=(4096, 16), seed=1)
    eps = LearnableStepNoise(z, seed=0)(3, z)
    assert abs(eps.mean().item()) < 0.01
    assert abs(eps.std().item() - 1.0) < 0.01
    # and uncorrelated with z0 elementwise (E[z eps] ~ 0 since a random sign multiplies it)
    assert abs((z * eps).mean().item()) < 0.02
    # kurtosis of a Gaussian is 3
    assert abs(((eps - eps.mean()) ** 4).mean().item() / eps.var().item() ** 2 - 3.0) < 0.1


def test_learnable_noise_passes_gradient_back_orthogonally():
    z = z0_like().requires_grad_(True)
    n = LearnableStepNoise(z, seed=0)
    w = torch.randn_like(z)
    (g,) = torch.autograd.grad((n(2, z) * w).sum(), [z])
    perm, signs = n.transform(2)
    # dL/dz = P^T S w
    expect = torch.zeros(z.shape[0], z[0].numel(), dtype=z.dtype)
    expect[:, perm] = w.reshape(z.shape[0], -1) * signs
    torch.testing.assert_close(g, expect.reshape(z.shape))
    torch.testing.assert_close(g.norm(), w.norm())


def test_fresh_noise_is_seeded_and_not_connected():
    x = z0_like().requires_grad_(True)
    a, b = FreshStepNoise(3)(1, x), FreshStepNoise(3)(1, x)
    torch.testing.assert_close(a, b)
    assert not a.requires_grad
    assert not torch.equal(FreshStepNoise(3)(1, x), FreshStepNoise(3)(2, x))
    assert abs(a.std().item() - 1) < 0.3


def test_leaf_noise_creates_persistent_leaves_lazily():
    n = LeafStepNoise(seed=0, dtype=torch.float32)
    x = z0_like(dtype=torch.float32)
    l1 = n(1, x)
    assert l1.is_leaf and l1.requires_grad and l1.dtype == torch.float32
    assert n(1, x) is l1 and list(n.leaves) == [1]
    assert not math.isclose(float(n(0, x).detach().sum()), float(l1.detach().sum()))

"""Sample quality of the built-in trained denoiser, judged twice: by the built-in classifier and by
an independent judge (nearest neighbours on the held-out fifth of the digits, ``judges.py``: no
shared weights, trained on nothing the classifier saw).

    .venv/bin/python benchmarks/model_quality.py [--n 256] [--steps 35] [--weights DIR]

Draws n samples (RES 2ab, 35 steps, deterministic; every sample's z0 from its own seed) and
reports the share the classifier calls with confidence >= 0.9, the share that lies as close to a
held-out digit as real digits lie to each other (the 95th percentile of their nearest-neighbour
distance) and the digits each judge sees. Bar: >= 80% by both, all ten digits. The untrained
(seeded) network side by side. Writes ``results/model_quality.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_file  # noqa: E402
from judges import KNNJudge  # noqa: E402

from gradcheck.models import load_classifier, load_denoiser  # noqa: E402
from gradcheck.sampling import ResSampler, SamplerConfig, build_denoiser  # noqa: E402


def quality(den, clf, judge: KNNJudge, n: int, steps: int) -> dict:
    # every sample from its own seed: n distinct draws, not one draw of n
    z0 = torch.cat([torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1000 + s))
                    for s in range(n)])
    with torch.no_grad():
        x = ResSampler(den, SamplerConfig(steps=steps))(z0).clamp(-1, 1)
        p = clf(x).softmax(1)
    conf, label = p.max(1)
    knn_label, dist = judge(x)
    real = float(judge.real_nn.quantile(0.95))
    close = dist <= real
    return {"classifier_confident": (conf >= 0.9).float().mean().item(),
            "classifier_counts": torch.bincount(label[conf >= 0.9], minlength=10).tolist(),
            "judge_close": close.float().mean().item(),
            "judge_counts": torch.bincount(knn_label[close], minlength=10).tolist(),
            "agree": (knn_label == label).float().mean().item(), "real_nn_p95": real}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    w = Path(args.weights) if args.weights else None
    clf, judge = load_classifier(weights=w), KNNJudge()
    print(f"independent judge: {judge.k}-NN on {judge.x.shape[0]} held-out digits, its own "
          f"leave-one-out accuracy {judge.accuracy_on_held_out():.1%}")
    rows = {}
    for name, den in (("trained", load_denoiser(weights=w)), ("untrained", build_denoiser("conv"))):
        q = rows[name] = quality(den, clf, judge, args.n, args.steps)
        print(f"{name:<10} classifier confident (p >= 0.9): {q['classifier_confident']:6.1%} "
              f"digits {sum(c > 0 for c in q['classifier_counts'])}/10 {q['classifier_counts']}")
        print(f"{'':<10} judge: as close to a held-out digit as real digits are: "
              f"{q['judge_close']:6.1%} digits {sum(c > 0 for c in q['judge_counts'])}/10 "
              f"{q['judge_counts']}; judge and classifier agree on {q['agree']:.1%}")
    t = rows["trained"]
    ok = (t["classifier_confident"] >= 0.8 and t["judge_close"] >= 0.8
          and all(c > 0 for c in t["judge_counts"]) and all(c > 0 for c in t["classifier_counts"]))
    print(f"bar (>= 80% by both judges, all ten digits): {'PASS' if ok else 'FAIL'}")
    print(f"wrote {results_file.write('model_quality', {'n': args.n, 'steps': args.steps, 'passed': ok, **rows})}")


if __name__ == "__main__":
    main()

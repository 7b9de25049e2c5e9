"""Choosing ``aggregate_spans``' ``pool_strength`` without truth: agreement with a held-out person.

``factory bench span_pool --data ../shared/bench/crowd/ner --out DIR`` writes ``DIR/span_pool.json``.

``pool_strength`` adds pseudo-answers drawn from the crowd's pooled confusion to each annotator's
confusion rows (a hierarchical prior).  The people-in-the-loop replay fits the fusion on sparse
answer files (1-3 answers per sentence), where the pooled confusion is barely identified, so the
strength is chosen on subsampled files, never by reading an F1 on the truth:

- per data set and density ``m`` (answers per sentence the fit sees: 1, 2 and all but one), every
  sentence's answers are put in a seeded random order; the answer at position ``m`` (the last one
  for "all but one") is **held out**, the ``m`` before it are fitted (sentences with fewer answers
  keep all theirs in the fit and hold none out);
- the score of a strength is the micro span F1 between the fused spans and the held-out person's
  spans over the sentences that held one out.  The held-out answer was not in the fit, so this is
  an honest estimate of how well the fusion predicts an independent person (people's own errors
  cap it; they are the same for every strength);
- data sets: the crowd NER folder (with its sentence text) and the four synthetic crowds of
  ``benchmarks.spans.SYNTHETIC_SET`` (300 sentences, 3 answers each, no text), so the choice is not
  made on one set;
- the chosen strength is the one of least maximum regret over all (data set, density) cells (regret
  = best score in the cell - this strength's score), the rule ``benchmarks/spans.py`` uses.

Truth is not read at all.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from factory.engine.spans import aggregate_spans, bio_spans

NAME = "span_pool"
STRENGTHS = (0.0, 1.0, 5.0, 20.0)
SEED = 7


def held_out_split(answers: pd.DataFrame, m: int | None, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit answers, held-out answers): per sentence a seeded order of its workers; the worker at
    position ``m`` (``None``: the last) is held out, the ``m`` before it are kept."""
    pairs = answers[["sentence_id", "worker_id"]].drop_duplicates()
    pairs = pairs.assign(draw=np.random.default_rng(seed).random(len(pairs))).sort_values(["sentence_id", "draw"])
    pairs["order"] = pairs.groupby("sentence_id").cumcount()
    n = pairs.groupby("sentence_id")["order"].transform("size")
    cut = (n - 1) if m is None else pd.Series(int(m), index=pairs.index)
    pairs["role"] = np.where(pairs["order"] < cut, "fit", np.where((pairs["order"] == cut) & (n >= 2), "held", "drop"))
    a = answers.merge(pairs[["sentence_id", "worker_id", "role"]], on=["sentence_id", "worker_id"])
    return a[a["role"] == "fit"].drop(columns="role"), a[a["role"] == "held"].drop(columns="role")


def agreement_f1(spans: pd.DataFrame, held: pd.DataFrame) -> float:
    """Micro span F1 between the fused spans and the held-out answers' spans (their sentences only)."""
    held_sets = (held.sort_values(["sentence_id", "token_index"]).groupby("sentence_id")["tag"]
                 .agg(lambda t: set(bio_spans(list(t)))))
    ids = set(held_sets.index)
    sp = spans[spans["sentence_id"].isin(ids)]
    pred = set(zip(sp["sentence_id"], sp["start"].astype(int), sp["end"].astype(int), sp["type"].astype(str)))
    gold = {(s, *g) for s, gs in held_sets.items() for g in gs}
    tp = len(pred & gold)
    return 2 * tp / max(len(pred) + len(gold), 1)


def choose(scores: dict) -> tuple[float, dict]:
    """The strength of least maximum regret over the cells ``scores[cell][strength]``."""
    regret = {s: max(max(c.values()) - c[s] for c in scores.values()) for s in next(iter(scores.values()))}
    return min(regret, key=lambda s: (regret[s], s)), regret


def run(out: Path, data: Path | None = None, strengths=STRENGTHS, **_) -> dict:
    from benchmarks.span_replay import TYPES
    from benchmarks.spans import SYNTHETIC_SET, load, synthetic_crowd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sets = []
    if data is not None:
        d = load(Path(data))
        sets.append(("ner", d["answers"], d["tokens"], TYPES, (1, 2, None)))
    for seed, flip in SYNTHETIC_SET:
        answers, _truth = synthetic_crowd(seed, flip)  # the truth is dropped unread
        sets.append((f"synthetic-{flip}", answers, None, None, (1, None)))
    scores: dict = {}
    for name, answers, tokens, types, densities in sets:
        for m in densities:
            fit, held = held_out_split(answers, m)
            cell = f"{name} m={'all-1' if m is None else m}"
            scores[cell] = {}
            for s in strengths:
                agg = aggregate_spans(fit, tokens=tokens, types=types, pool_strength=float(s))
                scores[cell][float(s)] = round(agreement_f1(agg.spans, held), 4)
            print(f"[span_pool] {cell}: {scores[cell]} ({time.time() - t0:.0f}s)", flush=True)
    chosen, regret = choose(scores)
    result = {"command": f"factory bench span_pool --data {data} --out {out}", "strengths": list(map(float, strengths)),
              "scores": scores, "max_regret": regret, "chosen": chosen, "seconds": round(time.time() - t0, 1)}
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    print(f"[span_pool] chosen pool_strength {chosen} (max regret {regret})", flush=True)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    return [("pool_strength of least max regret (held-out person agreement)", str(result["chosen"]), "-")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=None)
    a = ap.parse_args(argv)
    run(a.out, a.data)


if __name__ == "__main__":
    main()

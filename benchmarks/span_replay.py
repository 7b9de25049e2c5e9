"""Replay benchmark for spans: the span people-in-the-loop round, driven by the NER crowd's real answers.

``factory bench replay --data ../shared/bench/crowd/ner --out DIR`` dispatches here (a folder whose
``answers.csv`` has a ``tag`` column) and writes ``DIR/replay_spans.json`` and ``DIR/replay_spans.png``.

A sentence's recorded answers become visible one at a time, in a seeded shuffle of the file's answers
for that sentence (the file's order is by worker id, not arrival order), never more than the file holds:

1. start: every sentence gets one answer (a person corrects the pre-annotation rather than nobody
   looking: every sentence is seen once);
2. each round: :func:`factory.span_loop.span_round` -- fuse every revealed answer (the sentence text
   enters as the fusion's word emitter), calibrate the sentence confidence against people's answers
   held out of a refit, and :func:`factory.engine.span_routing.route_sentences` picks the sentences
   asked next, in priority order, up to ``step`` of the file's answers per round; those answers are
   revealed.  The loop stops when nothing is asked or the file is used up;
3. every round records the strict span F1 (conlleval / seqeval) of the fused spans over all sentences
   and over each half of the documents (``benchmarks.spans.folds(docs, 2)``: part 1 is the held-back
   half, reported beside), and the ECE of the sentence confidence and span posteriors (raw and
   calibrated) against the truth.  Truth is read only to score.

Baseline on the same seeds: the same fusion with the next answers revealed for sentences drawn at
random (no routing).  Target: the same fusion's strict F1 with all answers revealed.

Settings fixed once before any score was seen (no tuning, no cross-validation needed): the spec's
``quality.min_accuracy`` 0.95 (the probability a sentence's span set is exactly right before it is
accepted), ``step`` 5 % of the file's answers per round, the fusion's DEFAULTS, 3 seeds.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from factory.engine.calibration import expected_calibration_error
from factory.engine.span_routing import calibrated_spans, raw_sentence_confidence
from factory.engine.spans import aggregate_spans, bio_spans

NAME = "replay_spans"
DEFAULTS = {
    "min_accuracy": 0.95,  # spec.quality.min_accuracy: P(sentence span set exactly right) to accept
    "step": 0.05,  # answers revealed per round, as a share of the file's answers
    "max_answers": 10,  # cap per sentence (the file holds at most 8)
    "fusion": {},  # aggregate_spans options for every fit of the loop (empty: its DEFAULTS)
}
TYPES = ("LOC", "MISC", "ORG", "PER")


def is_span_folder(data: Path) -> bool:
    """A crowd NER folder (answers with a ``tag`` column), or a folder holding one as ``ner/``."""
    data = Path(data)
    if (data / "ner").is_dir():
        data = data / "ner"
    f = data / "answers.csv"
    return f.is_file() and "tag" in f.open(encoding="utf-8").readline().strip().split(",")


def replay_spec(opts: dict):
    """The dataset spec the replay runs under: a spans task with the four CoNLL types, through `parse_spec`
    (the one door every spec goes through)."""
    from factory.spec import parse_spec

    raw = {
        "name": "replay-spans", "description": "replay of recorded crowd span answers", "license": "benchmark data",
        "task": {"type": "spans", "input": "text"},
        "classes": [{"name": t, "definition": f"entity type {t}"} for t in TYPES],
        "guideline": {"version": "1"},
        "quality": {"min_accuracy": opts["min_accuracy"]},
    }
    return parse_spec(raw, source="<replay spans spec>")


def load(data: Path) -> dict:
    from benchmarks.spans import folds, load as load_ner

    d = load_ner(Path(data))
    d["part"] = folds(d["docs"], 2)
    d["truth_sets"] = (d["truth"].sort_values(["sentence_id", "token_index"]).groupby("sentence_id")["tag"]
                       .agg(list).map(lambda t: frozenset(bio_spans(t))))
    return d


def strict_f1(spans: pd.DataFrame, truth_sets: pd.Series, ids) -> dict:
    """Strict span precision, recall, F1 (micro) over the sentences ``ids``."""
    ids = set(ids)
    sp = spans[spans["sentence_id"].isin(ids)]
    pred = set(zip(sp["sentence_id"], sp["start"].astype(int), sp["end"].astype(int), sp["type"].astype(str)))
    gold = {(s, *g) for s in ids for g in truth_sets[s]}
    tp = len(pred & gold)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return {"strict_f1": 2 * p * r / (p + r) if p + r else 0.0, "precision": p, "recall": r}


class SpanCrowd:
    """Reveals a sentence's recorded answers one at a time, in a seeded shuffle of its workers."""

    def __init__(self, answers: pd.DataFrame, seed: int):
        pairs = answers[["sentence_id", "worker_id"]].drop_duplicates()
        pairs = pairs.assign(draw=np.random.default_rng(seed).random(len(pairs))).sort_values(["sentence_id", "draw"])
        pairs["order"] = pairs.groupby("sentence_id").cumcount()
        self.answers = answers.merge(pairs[["sentence_id", "worker_id", "order"]], on=["sentence_id", "worker_id"])
        self.available = pairs.groupby("sentence_id").size()
        self.revealed = pd.Series(0, index=self.available.index)
        self.total = int(len(pairs))

    @property
    def used(self) -> int:
        return int(self.revealed.sum())

    def reveal(self, sentence_ids) -> int:
        ids = pd.Index(sentence_ids)
        ok = ids[self.revealed.reindex(ids).to_numpy() < self.available.reindex(ids).to_numpy()]
        self.revealed.loc[ok] += 1
        return len(ok)

    def human_answers(self) -> pd.DataFrame:
        n = self.revealed.reindex(self.answers["sentence_id"]).to_numpy()
        return self.answers[self.answers["order"].to_numpy() < n].drop(columns="order")


def _score(agg, cal, d: dict, routing: pd.DataFrame | None) -> dict:
    truth = d["truth_sets"]
    part = d["part"]
    out = {}
    for name, ids in (("all", truth.index), ("part0", part.index[part == 0]), ("part1_held_back", part.index[part == 1])):
        out[name] = strict_f1(agg.spans, truth, ids)
    conf = raw_sentence_confidence(agg)
    fused = {s: frozenset() for s in conf.index}
    for s, a, b, t in zip(agg.spans["sentence_id"], agg.spans["start"], agg.spans["end"], agg.spans["type"]):
        fused[s] = fused[s] | {(int(a), int(b), str(t))}
    right = np.array([fused[s] == truth[s] for s in conf.index], dtype=float)
    hit = np.array([(int(a), int(b), str(t)) in truth[s] for s, a, b, t in
                    zip(agg.spans["sentence_id"], agg.spans["start"], agg.spans["end"], agg.spans["type"])], dtype=float)
    out["sentence_exact"] = float(right.mean())
    out["ece_sentence_raw"] = expected_calibration_error(np.clip(conf["raw"].to_numpy(), 0, 1), right)
    out["ece_span_raw"] = expected_calibration_error(np.clip(agg.spans["probability"].to_numpy(float), 0, 1), hit)
    if cal is not None:
        cs = routing.set_index("sentence_id")["confidence"].reindex(conf.index).to_numpy(float)
        out["ece_sentence_calibrated"] = expected_calibration_error(cs, right)
        out["ece_span_calibrated"] = expected_calibration_error(calibrated_spans(agg, cal)["probability"].to_numpy(), hit)
        out["mean_sentence_confidence"] = float(cs.mean())
    return out


def run_seed(d: dict, opts: dict, seed: int, policy: str = "route") -> list[dict]:
    """One replay: 'route' (the span loop) or 'random' (next answers to random sentences, same fusion)."""
    from factory.span_loop import SpanLoopSettings, span_round

    t0 = time.time()
    crowd = SpanCrowd(d["answers"], seed)
    settings = SpanLoopSettings.from_spec(replay_spec(opts), max_answers=int(opts["max_answers"]),
                                          fusion=dict(opts.get("fusion") or {}))
    step = int(round(float(opts["step"]) * crowd.total))
    crowd.reveal(crowd.available.index)  # one answer per sentence
    rng = np.random.default_rng(10_000 + seed)
    rounds = []
    while True:
        human = crowd.human_answers()
        if policy == "route":
            res = span_round(human, settings, tokens=d["tokens"], budget_left=step,
                             max_answers_per_sentence=crowd.available, seed=seed)
            agg, cal, routing = res.agg, res.calibration, res.routing
            asked = routing.loc[routing["ask"], "sentence_id"]
        else:
            agg = aggregate_spans(human, tokens=d["tokens"], types=settings.types, **settings.fusion)
            cal = routing = None
            room = crowd.available.index[(crowd.revealed < crowd.available).to_numpy()]
            asked = rng.choice(room, size=min(step, len(room)), replace=False) if len(room) else []
        rec = {"answers_used": crowd.used, "share": round(crowd.used / crowd.total, 4), **_score(agg, cal, d, routing)}
        if policy == "route":
            rec["reasons"] = res.extra["reasons"]
            rec["asked"] = res.extra["asked"]
        rounds.append(rec)
        print(f"[replay_spans] {policy} seed {seed}: {rec['share']:.1%} answers, strict F1 "
              f"{rec['all']['strict_f1']:.4f} ({time.time() - t0:.0f}s)", flush=True)
        got = crowd.reveal(asked) if len(asked) else 0
        if got == 0:
            break
    return rounds


def _star(args):
    return run_seed(*args)


def run(out: Path, data: Path | None = None, seeds: int = 3, workers: int = 2, **opts) -> dict:
    """Replay the NER folder for `seeds` seeds (and the random baseline); write out/replay_spans.{json,png}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if data is None:
        data = Path(__file__).resolve().parents[2] / "shared" / "bench" / "crowd" / "ner"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {**DEFAULTS, **{k: v for k, v in opts.items() if k in DEFAULTS and v is not None}}
    t0 = time.time()
    d = load(Path(data))
    settings_spec = replay_spec(options)
    full = aggregate_spans(d["answers"], tokens=d["tokens"], types=TYPES)
    target = _score(full, None, d, None)
    print(f"[replay_spans] all answers: strict F1 {target['all']['strict_f1']:.4f}", flush=True)
    jobs = [(d, options, s, p) for p in ("route", "random") for s in range(int(seeds))]
    if int(workers) > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            per_run = list(pool.map(_star, jobs))
    else:
        per_run = [run_seed(*j) for j in jobs]
    runs = {"route": per_run[: int(seeds)], "random": per_run[int(seeds):]}
    parts = ("all", "part0", "part1_held_back")
    curves = {}
    for policy, rs in runs.items():
        n = min(len(r) for r in rs)
        curves[policy] = [{
            "share": round(float(np.mean([r[i]["share"] for r in rs])), 4),
            **{f"{p}_f1_mean": round(float(np.mean([r[i][p]["strict_f1"] for r in rs])), 4) for p in parts},
            **{f"{p}_f1_min": round(float(np.min([r[i][p]["strict_f1"] for r in rs])), 4) for p in parts},
        } for i in range(n)]
    reach = {}
    for policy, rs in runs.items():
        reach[policy] = {p: [next((r["share"] for r in run_ if r[p]["strict_f1"] >= target[p]["strict_f1"]), None)
                             for run_ in rs] for p in parts}
    result = {
        "data": str(data),
        "command": f"factory bench replay --data {data} --out {out}",
        "spec": {"task": "spans", "quality.min_accuracy": settings_spec.quality.min_accuracy},
        "options": options, "seeds": int(seeds),
        "answers_total": int(d["answers"][["sentence_id", "worker_id"]].drop_duplicates().shape[0]),
        "sentences": int(d["answers"]["sentence_id"].nunique()),
        "target_all_answers": target,
        "share_reaching_target": reach,
        "curves": curves,
        "rounds": runs,
    }
    result["seconds"] = round(time.time() - t0, 1)
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2, default=float))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, p, title in ((axes[0], "all", "all sentences"), (axes[1], "part1_held_back", "held-back half of documents")):
        for policy, style in (("route", "o-"), ("random", "x--")):
            c = curves[policy]
            ax.plot([q["share"] * 100 for q in c], [q[f"{p}_f1_mean"] for q in c], style,
                    label=f"{'span loop (route_sentences)' if policy == 'route' else 'random sentence'} (mean of {seeds})")
        ax.axhline(target[p]["strict_f1"], color="grey", ls=":", label=f"all answers ({target[p]['strict_f1']:.4f})")
        ax.axvline(50, color="red", ls=":", alpha=0.4)
        ax.set_xlabel("crowd answers revealed (% of file)")
        ax.set_title(f"NER replay: {title}")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("strict span F1")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    print(f"[replay_spans] wrote {out / (NAME + '.json')} in {result['seconds']}s", flush=True)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    rows = []
    for p in ("all", "part1_held_back"):
        shares = result["share_reaching_target"]["route"][p]
        worst = None if any(s is None for s in shares) else max(shares)
        rows.append((f"NER {p}: share of answers to reach all-answers F1 "
                     f"{result['target_all_answers'][p]['strict_f1']:.4f} (worst seed)",
                     "not reached" if worst is None else f"{worst:.1%}", "<= 50%"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    run(a.out, a.data, seeds=a.seeds)


if __name__ == "__main__":
    main()

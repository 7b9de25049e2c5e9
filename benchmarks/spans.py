"""Span fusion on real crowd NER answers: factory.aggregate_spans vs token MV, token DS, HMM-Crowd and BSC-seq.

Data: the crowd NER folder (``--data``, e.g. /work/shared/bench/crowd/ner; see its README.md):
4,237 CoNLL-2003 sentences in 285 documents, 20,873 BIO answers from 47 workers.

Methods (every output is BIO-repaired before scoring: I-X not after B-X/I-X becomes B-X):
- ``token_mv``: crowd-kit 1.4.2 ``MajorityVote()``, each (sentence, token) one task.
- ``token_ds``: crowd-kit 1.4.2 ``DawidSkene(n_iter=100)``, each (sentence, token) one task.
- ``hmm_crowd``: the model of Nguyen et al. (ACL 2017), implemented here on factory's engine: an
  HMM over the true tags whose states emit the token's features (lower-cased word and word shape,
  per-tag naive-Bayes multinomials at full weight: ``text_model="multinomial"``) and each
  worker's tag through a per-worker confusion matrix; transitions restricted to valid BIO,
  Viterbi decoding.  Fitted with the engine's variational EM, not the authors' code.
- ``bsc_seq``: BSC-seq's model (Simpson & Gurevych, EMNLP 2019), implemented here on the same
  engine: the sequential annotator model (a worker's tag depends on the true tag and on the
  worker's previous tag), no text, no pooled prior, variational Bayes, Viterbi.  Not the authors'
  code (their LSTM text model is left out).
  Both baselines get their confusion prior (``BASE_GRID``) by the same nested CV over documents,
  picked on NER folds only (the most favourable choice for them on this set).
- ``factory``: ``factory.aggregate_spans(answers, tokens)`` with its fixed ``DEFAULTS``.
- ``factory_cv``: nested cross-validation over DOCUMENTS (5 folds, seeded shuffle of doc ids):
  every setting of ``GRID`` is fitted (unsupervised) on all answers; for each fold the setting of
  least maximum regret over two selection sets, the *other four* folds and four synthetic crowds
  (``SYNTHETIC_SET``: 300 sentences, 6 workers of whom 2 extend every span by a token, token
  noise 0.1-0.4), is picked and its predictions for the held-out fold are kept.  The score is that
  of the out-of-fold predictions: no fold's truth chose its own setting.  The synthetic set is
  there so that the defaults also hold on small and noisy crowds ("generalise, don't tune"): on
  NER alone the folds chose a flat confusion prior (diag 5, off 2) that falls to majority-vote level
  on the 0.3-noise synthetic crowd.  The ``DEFAULTS`` shipped in factory/engine/spans.py are the
  setting most folds chose (the JSON says whether they match).
- ``factory_fold_alone``: ``DEFAULTS``, but each fold's sentences fitted on their own answers
  only (a fifth of the data, sentences the model never saw): the unseen-sentence check;
  ``bsc_seq_fold_alone`` the same for the BSC-seq baseline (its CV-majority prior).

Scoring: strict span F1 with ``seqeval`` (conlleval conventions: exact start, end and type),
precision, recall; relaxed F1 (a predicted span counts if it overlaps a gold span of the same type;
recall likewise for gold spans; written here, seqeval has no overlap mode).  95% intervals: 1,000
bootstrap resamples of documents (per-document span counts; the strict counts are checked equal to
seqeval's).  Truth is read only to score and to pick the CV setting on other folds.

Run: ``factory bench spans --data /work/shared/bench/crowd/ner --out DIR`` (about 10 min on the
loaded 2-core machine, nearly all of it the CV grids).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from factory.engine.spans import DEFAULTS, aggregate_spans, bio_spans, repair_bio

NAME = "spans"
DEFAULT_DATA = Path("/work/shared/bench/crowd/ner")
N_FOLDS = 5
FOLD_SEED = 20261201
# The CV grid: the confusion prior (diagonal and off-diagonal pseudo-counts) and the weight of the
# token-text emitter.  Other options stay at DEFAULTS.
# A first run on the grid diag 2/5/10/20 x off 0.1/0.5/1 x text 0/0.3/0.5 chose (20, 1, 0.5), on the
# edge of all three ranges, so the grid was moved outwards once to the one below.
GRID = {
    "diag_alpha": [5.0, 10.0, 20.0, 40.0],
    "off_alpha": [0.5, 1.0, 2.0],
    "text_weight": [0.0, 0.3, 0.5, 0.7],
}
# the baselines' confusion priors get the same nested CV (their other settings are fixed by the paper)
BASE_GRID = {"diag_alpha": [1.0, 2.0, 5.0, 10.0, 20.0], "off_alpha": [0.1, 0.5, 1.0]}
HMM_CROWD = {"annotator": "confusion", "pool_strength": 0.0, "text_weight": 1.0, "text_model": "multinomial",
             "text_alpha": 0.1, "text_features": ("word", "shape"), "decode": "viterbi"}
BSC_SEQ = {"annotator": "seq", "pool_strength": 0.0, "text_weight": 0.0, "decode": "viterbi"}


def load(data: Path) -> dict:
    """The NER folder's tables (truth only for scoring)."""
    data = Path(data)
    if (data / "ner").is_dir():
        data = data / "ner"
    answers = pd.read_csv(data / "answers.csv", dtype={"sentence_id": str, "worker_id": str, "tag": str})
    tokens = pd.read_csv(data / "sentences.csv", dtype={"sentence_id": str, "token": str}, keep_default_na=False)
    truth = pd.read_csv(data / "truth.csv", dtype={"sentence_id": str, "tag": str})
    docs = pd.read_csv(data / "documents.csv", dtype={"sentence_id": str, "doc_id": str})
    return {"answers": answers, "tokens": tokens, "truth": truth, "docs": docs, "path": str(data)}


def _by_sentence(tags: pd.DataFrame) -> pd.Series:
    return tags.sort_values(["sentence_id", "token_index"]).groupby("sentence_id", sort=True)["tag"].agg(list)


def _relaxed_counts(gold: list, pred: list) -> tuple[int, int]:
    """(predicted spans overlapping a same-type gold span, gold spans overlapped by a same-type prediction)."""
    hit_p = sum(any(g[2] == p[2] and p[0] <= g[1] and g[0] <= p[1] for g in gold) for p in pred)
    hit_g = sum(any(g[2] == p[2] and p[0] <= g[1] and g[0] <= p[1] for p in pred) for g in gold)
    return hit_p, hit_g


def _counts(gold_seqs: pd.Series, pred_seqs: pd.Series, sent_doc: pd.Series) -> pd.DataFrame:
    """Per-document span counts: strict tp, relaxed hits, numbers of predicted and gold spans."""
    rows = []
    for sid, gold_tags in gold_seqs.items():
        pred_tags = pred_seqs.get(sid)
        if pred_tags is None or len(pred_tags) != len(gold_tags):
            raise ValueError(f"sentence {sid}: prediction has {0 if pred_tags is None else len(pred_tags)} tags, gold {len(gold_tags)}")
        g = bio_spans(gold_tags)
        p = bio_spans(repair_bio(pred_tags))
        hp, hg = _relaxed_counts(g, p)
        rows.append((sent_doc[sid], len(set(g) & set(p)), hp, hg, len(p), len(g)))
    c = pd.DataFrame(rows, columns=["doc_id", "tp", "rel_p", "rel_g", "n_pred", "n_gold"])
    return c.groupby("doc_id").sum()


def _scores(c: pd.DataFrame | pd.Series) -> dict:
    tp, npred, ngold = float(c["tp"]), float(c["n_pred"]), float(c["n_gold"])
    p = tp / npred if npred else 0.0
    r = tp / ngold if ngold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    rp = float(c["rel_p"]) / npred if npred else 0.0
    rr = float(c["rel_g"]) / ngold if ngold else 0.0
    rf = 2 * rp * rr / (rp + rr) if rp + rr else 0.0
    return {"strict_f1": f, "relaxed_f1": rf, "precision": p, "recall": r}


def _boot_f1(c: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Strict F1 of `n_boot` document resamples; the same seed gives the same resamples for every
    method (documents are in the same sorted order), so differences are paired."""
    arr = c[["tp", "n_pred", "n_gold"]].to_numpy(float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))
    s = arr[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, r = s[:, 0] / s[:, 1], s[:, 0] / s[:, 2]
        return 2 * p * r / (p + r)


def evaluate(gold_seqs: pd.Series, pred_seqs: pd.Series, sent_doc: pd.Series, n_boot: int = 1000, seed: int = 0,
             counts_out: dict | None = None) -> dict:
    """Strict (seqeval) and relaxed span scores with 95% document-bootstrap intervals."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    c = _counts(gold_seqs, pred_seqs, sent_doc)
    if counts_out is not None:
        counts_out["counts"] = c
    out = _scores(c.sum())
    y = [list(v) for v in gold_seqs.to_numpy()]
    yp = [repair_bio(pred_seqs[s]) for s in gold_seqs.index]
    seq = {"strict_f1": f1_score(y, yp), "precision": precision_score(y, yp), "recall": recall_score(y, yp)}
    for k, v in seq.items():  # our span reading must equal seqeval's (conlleval's)
        if abs(v - out[k]) > 1e-9:
            raise AssertionError(f"span counting disagrees with seqeval on {k}: {out[k]} vs {v}")
        out[k] = float(v)
    rng = np.random.default_rng(seed)
    arr = c[["tp", "rel_p", "rel_g", "n_pred", "n_gold"]].to_numpy(float)
    idx = rng.integers(0, len(arr), size=(n_boot, len(arr)))
    s = arr[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, r = s[:, 0] / s[:, 3], s[:, 0] / s[:, 4]
        f = 2 * p * r / (p + r)
        rp, rr = s[:, 1] / s[:, 3], s[:, 2] / s[:, 4]
        rf = 2 * rp * rr / (rp + rr)
    for name, v in (("strict_f1", f), ("relaxed_f1", rf), ("precision", p), ("recall", r)):
        out[f"{name}_ci"] = [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]
    return out


def _crowdkit(answers: pd.DataFrame, which: str) -> pd.DataFrame:
    from crowdkit.aggregation import DawidSkene, MajorityVote

    df = pd.DataFrame({"task": answers["sentence_id"] + "|" + answers["token_index"].astype(str),
                       "worker": answers["worker_id"], "label": answers["tag"]})
    model = MajorityVote() if which == "mv" else DawidSkene(n_iter=100)
    res = model.fit_predict(df)
    parts = res.index.to_series().str.rsplit("|", n=1, expand=True)
    return pd.DataFrame({"sentence_id": parts[0].to_numpy(), "token_index": parts[1].astype(int).to_numpy(),
                         "tag": res.to_numpy()})


def folds(docs: pd.DataFrame, n_folds: int = N_FOLDS, seed: int = FOLD_SEED) -> pd.Series:
    """Fold number per sentence: whole documents, in a seeded shuffle, dealt round-robin."""
    doc_ids = np.array(sorted(docs["doc_id"].unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(doc_ids)
    fold_of_doc = pd.Series(np.arange(len(doc_ids)) % n_folds, index=doc_ids)
    return pd.Series(fold_of_doc[docs["doc_id"]].to_numpy(), index=docs["sentence_id"].to_numpy())


def _grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


SYNTHETIC_TYPES = ("PER", "LOC", "ORG")


def synthetic_crowd(seed: int, flip: float, n_sent: int = 300, n_good: int = 4, n_boundary: int = 2,
                    per_sentence: int = 3) -> tuple[pd.DataFrame, dict]:
    """A seeded synthetic BIO crowd: (answers, truth {sentence_id: tags}).

    Sentences of 6-18 tokens, spans of 1-3 tokens (3 types) starting at a token with prob 0.15;
    `n_good` workers copy the truth with token noise `flip` (a random tag, O half of the time);
    `n_boundary` workers extend every span by one token to the right (plus 3% noise); every
    sentence gets `per_sentence` distinct workers."""
    rng = np.random.default_rng(seed)
    all_tags = ["O"] + [f"{p}-{t}" for t in SYNTHETIC_TYPES for p in "BI"]
    truth = {}
    for i in range(n_sent):
        n = int(rng.integers(6, 19))
        tags, t = ["O"] * n, 0
        while t < n:
            if rng.random() < 0.15:
                typ = SYNTHETIC_TYPES[rng.integers(len(SYNTHETIC_TYPES))]
                ln = int(min(rng.integers(1, 4), n - t))
                tags[t:t + ln] = [f"B-{typ}"] + [f"I-{typ}"] * (ln - 1)
                t += ln + 1
            else:
                t += 1
        truth[f"s{i:04d}"] = tags

    def noisy(tags: list, p: float) -> list:
        return [("O" if rng.random() < 0.5 else all_tags[rng.integers(1, len(all_tags))]) if rng.random() < p else t
                for t in tags]

    workers = [f"g{i}" for i in range(n_good)] + [f"b{i}" for i in range(n_boundary)]
    rows = []
    for sid, tags in truth.items():
        extended = list(tags)
        for _, e, typ in bio_spans(tags):
            if e + 1 < len(tags) and tags[e + 1] == "O":
                extended[e + 1] = f"I-{typ}"
        for w in rng.choice(workers, size=per_sentence, replace=False):
            ans = noisy(extended, 0.03) if w.startswith("b") else noisy(tags, flip)
            rows += [(sid, w, i, t) for i, t in enumerate(ans)]
    return pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"]), truth


# the second selection set: four synthetic crowds, token noise 0.1 to 0.4 (seeds fixed, never the tests')
SYNTHETIC_SET = ((101, 0.1), (102, 0.2), (103, 0.3), (104, 0.4))


_SYNTHETIC_CACHE: dict = {}


def _synthetic_f1(opts: dict) -> float:
    """Mean strict span F1 of aggregate_spans(**opts) over SYNTHETIC_SET (the crowds carry no text,
    so settings that differ only in text options share one score)."""
    key = json.dumps({k: v for k, v in opts.items() if not k.startswith("text_")}, sort_keys=True, default=str)
    if key not in _SYNTHETIC_CACHE:
        _SYNTHETIC_CACHE[key] = _synthetic_f1_uncached(opts)
    return _SYNTHETIC_CACHE[key]


def _synthetic_f1_uncached(opts: dict) -> float:
    scores = []
    for seed, flip in SYNTHETIC_SET:
        answers, truth = synthetic_crowd(seed, flip)
        pred = _by_sentence(aggregate_spans(answers, **opts).tags)
        tp = n_pred = n_gold = 0
        for sid, g in truth.items():
            gs, ps = set(bio_spans(g)), set(bio_spans(repair_bio(pred[sid])))
            tp, n_pred, n_gold = tp + len(gs & ps), n_pred + len(ps), n_gold + len(gs)
        p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
        scores.append(2 * p * r / max(p + r, 1e-12))
    return float(np.mean(scores))


def cross_validate(d: dict, gold: pd.Series, sent_doc: pd.Series, fold: pd.Series, grid: dict | None = None,
                   base: dict | None = None, synthetic: bool = False, progress=print) -> dict:
    """Nested CV over documents: per fold, pick the grid setting best on the other folds.

    With ``synthetic=True`` the pick is the setting of least *maximum regret* over two selection
    sets: the other four NER folds and the synthetic crowds (regret = the best setting's F1 on that
    set minus this setting's), so the defaults must also hold on small, noisier crowds."""
    grid = grid or GRID
    settings = _grid(grid)
    per_setting_counts, preds, all_scores = [], [], []
    for i, s in enumerate(settings):
        if synthetic:
            syn_f1 = _synthetic_f1({**(base or {}), **s})
        r = aggregate_spans(d["answers"], tokens=d["tokens"], **{**(base or {}), **s})
        pred = _by_sentence(r.tags)
        preds.append(pred)
        c = _counts(gold, pred, sent_doc)
        c["fold"] = fold.groupby(sent_doc).first().reindex(c.index).to_numpy()
        per_setting_counts.append(c.groupby("fold").sum())
        all_scores.append({**s, "strict_f1_all_folds": _scores(c.sum())["strict_f1"]})
        if synthetic:
            all_scores[-1]["synthetic_strict_f1"] = syn_f1
        progress(f"  cv grid {i + 1}/{len(settings)} {s}: strict F1 on all folds {all_scores[-1]['strict_f1_all_folds']:.4f}"
                 + (f", synthetic {syn_f1:.4f}" if synthetic else ""))
    chosen, oof = [], []
    syn = np.array([a.get("synthetic_strict_f1", 0.0) for a in all_scores])
    for f in range(N_FOLDS):
        inner = np.array([_scores(c.drop(index=f).sum())["strict_f1"] for c in per_setting_counts])
        if synthetic:
            regret = np.maximum(inner.max() - inner, syn.max() - syn)
            best = int(np.lexsort((-inner, regret))[0])  # least regret, then the better NER score
        else:
            best = int(np.argmax(inner))
        chosen.append({"fold": f, "setting": settings[best], "inner_strict_f1": float(inner[best]),
                       **({"synthetic_strict_f1": float(syn[best])} if synthetic else {})})
        sids = fold.index[fold.to_numpy() == f]
        oof.append(preds[best].reindex(sids))
    oof_pred = pd.concat(oof)
    # the majority choice of the folds (ties: the better mean inner score) is what DEFAULTS should hold
    keys = [json.dumps(c["setting"], sort_keys=True) for c in chosen]
    counts = pd.Series(keys).value_counts()
    top = counts[counts == counts.max()].index
    majority = max(top, key=lambda k: float(np.mean([c["inner_strict_f1"] for c, kk in zip(chosen, keys) if kk == k])))
    majority = json.loads(majority)
    defaults_match = all(float(DEFAULTS[k]) == float(v) for k, v in majority.items())
    return {"chosen_per_fold": chosen, "majority_setting": majority, "defaults_match_majority": defaults_match,
            "oof_pred": oof_pred, "grid": grid, "base": base or {}, "every_setting": all_scores}


def run(out: Path, data: Path | None = None, **opts) -> dict:
    """Score every method on the NER folder; write out/spans.json and out/spans.png and return the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = load(data or DEFAULT_DATA)
    gold = _by_sentence(d["truth"])
    sent_doc = d["docs"].set_index("sentence_id")["doc_id"]
    fold = folds(d["docs"])
    methods, timing = {}, {}

    doc_counts = {}

    def record(name: str, pred: pd.Series, seconds: float) -> None:
        holder: dict = {}
        methods[name] = evaluate(gold, pred, sent_doc, counts_out=holder)
        doc_counts[name] = holder["counts"]
        timing[name] = round(seconds, 2)
        m = methods[name]
        print(f"{name:20s} strict F1 {m['strict_f1']:.4f} [{m['strict_f1_ci'][0]:.4f}, {m['strict_f1_ci'][1]:.4f}]  "
              f"relaxed {m['relaxed_f1']:.4f}  P {m['precision']:.4f}  R {m['recall']:.4f}  ({seconds:.1f} s)", flush=True)

    for which in ("mv", "ds"):
        t = time.time()
        pred = _by_sentence(_crowdkit(d["answers"], which))
        record(f"token_{which}", pred, time.time() - t)
    baselines_cv = {}
    for name, base in (("hmm_crowd", HMM_CROWD), ("bsc_seq", BSC_SEQ)):
        t = time.time()
        cvb = cross_validate(d, gold, sent_doc, fold, grid=BASE_GRID, base=base)
        record(name, cvb.pop("oof_pred"), time.time() - t)
        cvb.pop("defaults_match_majority")
        baselines_cv[name] = cvb
    t = time.time()
    r = aggregate_spans(d["answers"], tokens=d["tokens"])
    record("factory", _by_sentence(r.tags), time.time() - t)
    factory_fit = {"iterations": r.iterations, "converged": r.converged}

    # unseen sentences: each fold fitted on its own answers only; BSC-seq likewise, for comparison
    for name, opts in (("factory_fold_alone", {}),
                       ("bsc_seq_fold_alone", {**BSC_SEQ, **baselines_cv["bsc_seq"]["majority_setting"]})):
        t = time.time()
        parts = []
        for f in range(N_FOLDS):
            sids = set(fold.index[fold.to_numpy() == f])
            a = d["answers"][d["answers"]["sentence_id"].isin(sids)]
            tk = d["tokens"][d["tokens"]["sentence_id"].isin(sids)]
            parts.append(_by_sentence(aggregate_spans(a, tokens=tk, **opts).tags))
        record(name, pd.concat(parts), time.time() - t)

    t = time.time()
    cv = cross_validate(d, gold, sent_doc, fold, synthetic=True)
    record("factory_cv", cv.pop("oof_pred"), time.time() - t)

    # paired document bootstrap of the strict-F1 difference: factory (and factory_cv) minus each baseline
    paired = {}
    for ours in ("factory", "factory_cv"):
        for other in ("token_mv", "token_ds", "hmm_crowd", "bsc_seq"):
            diff = _boot_f1(doc_counts[ours]) - _boot_f1(doc_counts[other])
            paired[f"{ours} - {other}"] = {
                "strict_f1_diff": methods[ours]["strict_f1"] - methods[other]["strict_f1"],
                "ci95": [float(np.nanpercentile(diff, 2.5)), float(np.nanpercentile(diff, 97.5))],
                "share_of_resamples_above_0": float(np.mean(diff > 0))}
            print(f"{ours} - {other}: {paired[f'{ours} - {other}']}")
    result = {
        "data": d["path"],
        "methods": methods,
        "paired_differences": paired,
        "seconds": timing,
        "defaults": {k: (list(v) if isinstance(v, tuple) else v) for k, v in DEFAULTS.items()},
        "factory_fit": factory_fit,
        "cv": cv,
        "baselines_cv": baselines_cv,
        "folds": {"n": N_FOLDS, "seed": FOLD_SEED, "documents_per_fold": fold.groupby(sent_doc).first().value_counts().sort_index().tolist()},
        "anchors": {"token_mv_crowdkit": 0.632, "token_ds_crowdkit": 0.742, "bsc_seq_published_test_split": 0.774},
        "goal": "factory strict_f1 >= 0.78 and above every baseline",
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=1))

    names = list(methods)
    f1 = [methods[n]["strict_f1"] for n in names]
    lo = [methods[n]["strict_f1"] - methods[n]["strict_f1_ci"][0] for n in names]
    hi = [methods[n]["strict_f1_ci"][1] - methods[n]["strict_f1"] for n in names]
    rel = [methods[n]["relaxed_f1"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, f1, 0.4, yerr=[lo, hi], capsize=3, label="strict span F1 (95% doc bootstrap)")
    ax.bar(x + 0.2, rel, 0.4, label="relaxed span F1", alpha=0.6)
    ax.axhline(0.78, ls="--", c="k", lw=0.8, label="goal 0.78")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0.5, 0.95)
    ax.set_title("Crowd NER (CoNLL-2003, 4,237 sentences): span fusion")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal and whether met) rows for a Markdown table."""
    m = result["methods"]
    base = max((k for k in m if not k.startswith("factory") and not k.endswith("fold_alone")), key=lambda k: m[k]["strict_f1"])
    rows = []
    for name in ("factory", "factory_cv"):
        f = m[name]["strict_f1"]
        ok = f >= 0.78 and f > m[base]["strict_f1"]
        rows.append((f"{name} strict span F1", f"{f:.4f}", f">= 0.78 and > best baseline ({base} "
                     f"{m[base]['strict_f1']:.4f}): {'met' if ok else 'MISSED'}"))
    for k, v in m.items():
        rows.append((f"{k}: strict / relaxed F1, P, R", f"{v['strict_f1']:.4f} / {v['relaxed_f1']:.4f}, "
                     f"{v['precision']:.4f}, {v['recall']:.4f}", ""))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the crowd ner folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for spans.json and spans.png")
    args = ap.parse_args(argv)
    result = run(args.out, args.data)
    for row in summary_rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()

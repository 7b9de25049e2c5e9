"""Replay benchmark: the pipeline's people-in-the-loop round, driven by a crowd that reveals real answers.

The factory starts with no labels. An item's human answers become visible only
when the loop asks for that item, one answer per request, in the order of
``answers.csv``, never more than the file holds for it; every revealed answer
(seed labels included) counts as human effort. Models read only ``items.csv`` /
``records.csv`` (a folder without them, e.g. dog, runs without models);
``truth.csv`` is read only to score.

One run per seed walks a fixed schedule of cumulative answer budgets:

1. seed: :func:`factory.engine.seeding.select_seed` (k-means++ on hashed word
   features of the item text; random for folders without text) picks the first
   items; each gets one answer;
2. each round: train the labelers (for pair folders the two pair-similarity
   ones of the ``pairs`` task type, ``factory.pair_labelers``) on the majority
   vote of the revealed answers (ties left out); answered
   items get out-of-fold probabilities (a model never vouches for the answer it
   was trained on), the others the full fit's; the labelers are fused as the
   pipeline's ``fuse`` step does (``aggregate(method="auto")``). Then
   :func:`factory.loop.people_round` -- the same function the pipeline's
   escalation step calls -- fuses people with that prior, bounds the accuracy
   of the items nobody answered, and picks who is asked next (expected error
   reduction), up to the next budget on the schedule; those answers are
   revealed. When the round asks nothing, the loop has stopped by itself.
3. whenever a reporting budget (10, 15, 20, 25, 30, 40, 60, 100 % of the
   file's answers) is reached, accuracy over ALL items of the fused labels and
   the ECE of their confidences are recorded. Budgets share one run per seed:
   the run at 25 % is exactly the prefix of the run at 100 %.

Settings: a dataset spec (``replay_spec``) as ``factory init`` writes it, with
``quality.min_accuracy`` = 0.98 (the accuracy the loop must certify for the
items nobody answered before it stops: set high so the loop keeps asking up to
the accuracy a full crowd gives) and no experts (an item the loop would
escalate keeps its fused label), and a SIMULATED expert audit (``AUDIT_TEXT``: 10 % of
the items, at most 149, drawn at random at the start; the expert is right with probability
0.95, else says a uniformly drawn other class; its answers count as human answers used).
The round calibrates its confidence against that audit (``people_round(verified=...)``):
a production flow always has an audit sample, the replay files have none.  Truth is used
only to simulate that stated person and to score.  The same settings run every data set of
``benchmarks/generalise.py``; none was tuned per set.

Run: ``factory bench replay --out bench-out --data ../shared/bench/crowd/product``.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from factory.progress import bars

NAME = "replay"
BUDGETS = (0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.60, 1.00)
# round ends (fractions of all answers); the reporting budgets are among them
SCHEDULE = (0.03, 0.06, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50, 0.60, 0.80, 1.00)
DEFAULTS = {
    "min_accuracy": 0.98,  # spec.quality.min_accuracy of the replay spec: the loop's stopping target
    "confidence_level": 0.95,  # spec.quality.confidence_level (the spec default)
    "default_reliability": 0.9,  # spec.workforce.default_reliability (the spec default)
    "labelers": ("pair_sim_logreg", "pair_sim_gbdt"),  # for pair folders; classification uses all three
    "folds": 2,  # out-of-fold model probabilities for answered items
    # a SIMULATED expert audit: a production flow always has one (the random audit sample); the replay
    # files have none, so a stated simulated person answers a random sample of items, drawn at the start
    "audit_share": 0.10,  # of the items, at most AUDIT cap below
    "audit_reliability": 0.95,  # the simulated expert's accuracy, also what the loop is told (gold in production)
}
AUDIT_TEXT = ("SIMULATED expert audit: {n} items drawn uniformly at random at the start ({share:.0%} of the items, "
              "at most the {cap} on which zero errors certify epsilon at the spec's confidence); the expert answers "
              "the true class with probability {r}, else a uniformly drawn other class; its answers count as human "
              "answers used, and only calibrate and label (they do not enter people's fusion)")


def audit_size(n_items: int, opts: dict) -> tuple[int, int]:
    """(audit items, cap): audit_share of the items, at most the fewest on which zero errors certify epsilon."""
    eps = 1.0 - float(opts["min_accuracy"])
    cap = int(np.ceil(np.log(1.0 - float(opts["confidence_level"])) / np.log(1.0 - eps)))
    return min(int(np.ceil(float(opts["audit_share"]) * n_items)), cap), cap


def simulated_audit(truth: pd.Series, classes: list, opts: dict, seed: int) -> pd.DataFrame:
    """The simulated expert's answers (item_id, worker_id, label, reliability) on a random sample of items.

    Truth is used here only to SIMULATE the stated person (right with probability audit_reliability),
    as the simulated crowd of the text sets is; the loop sees only the answers.
    """
    n, _ = audit_size(len(truth), opts)
    r = float(opts["audit_reliability"])
    rng = np.random.default_rng(10_000 + seed)
    ids = truth.index[np.sort(rng.choice(len(truth), size=n, replace=False))]
    cls = np.asarray(classes, dtype=object)
    labels = []
    for t in truth.reindex(ids).astype(str):
        labels.append(t if rng.random() < r else rng.choice(cls[cls != t]))
    return pd.DataFrame({"item_id": ids, "worker_id": "expert:simulated", "label": labels, "reliability": r})


# --------------------------------------------------------------------------- data


def _parse_price(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values.astype("string").str.replace(r"[^0-9.]", "", regex=True), errors="coerce")


def load_folder(data: Path) -> tuple[pd.DataFrame, str, pd.DataFrame, pd.Series]:
    """Read a replay folder: (items for the labelers, task_type, answers in file order, truth by item_id)."""
    data = Path(data)
    for name in ("answers.csv", "truth.csv"):
        if not (data / name).exists():
            raise FileNotFoundError(f"replay: {data / name} is missing; a replay folder needs answers.csv and truth.csv "
                                    f"(and items.csv for models to read)")
    answers = pd.read_csv(data / "answers.csv")
    missing = {"item_id", "worker_id", "label"} - set(answers.columns)
    if missing:
        raise ValueError(f"replay: {data / 'answers.csv'} lacks column(s) {sorted(missing)}")
    truth = pd.read_csv(data / "truth.csv").set_index("item_id")["label"]
    if not (data / "items.csv").exists():  # answers only (e.g. dog): the loop runs without models
        ids = pd.Index(pd.unique(pd.concat([answers["item_id"], truth.index.to_series()], ignore_index=True)))
        return pd.DataFrame({"item_id": ids}), "none", answers.reset_index(drop=True), truth
    raw = pd.read_csv(data / "items.csv")
    if "text" in raw.columns:
        items = pd.DataFrame({"item_id": raw["item_id"], "text": raw["text"].fillna("").astype(str)})
        task_type = "classification"
    elif {"left_record_id", "right_record_id"} <= set(raw.columns):
        rec_path = data / "records.csv"
        if not rec_path.exists():
            raise FileNotFoundError(f"replay: {data / 'items.csv'} names record ids but {rec_path} is missing")
        rec = pd.read_csv(rec_path).set_index("record_id")
        text = (rec.get("name", pd.Series("", index=rec.index)).fillna("").astype(str) + " "
                + rec.get("description", pd.Series("", index=rec.index)).fillna("").astype(str)).str.strip()
        price = _parse_price(rec["price"]) if "price" in rec.columns else pd.Series(np.nan, index=rec.index)
        lid, rid = raw["left_record_id"], raw["right_record_id"]
        unknown = sorted(set(lid[~lid.isin(rec.index)]) | set(rid[~rid.isin(rec.index)]))
        if unknown:
            raise ValueError(f"replay: items.csv names record ids missing from records.csv: {unknown[:5]}")
        items = pd.DataFrame({
            "item_id": raw["item_id"],
            "left_text": text.reindex(lid).to_numpy(), "right_text": text.reindex(rid).to_numpy(),
            "left_price": price.reindex(lid).to_numpy(dtype=float), "right_price": price.reindex(rid).to_numpy(dtype=float),
        })
        task_type = "pair"
    else:
        raise ValueError(f"replay: {data / 'items.csv'} needs a 'text' column or left_record_id,right_record_id")
    # items that have answers but no row in items.csv cannot be shown to a model: keep them with empty text
    extra = sorted(set(answers["item_id"]) - set(items["item_id"]))
    if extra:
        print(f"[replay] warning: {len(extra)} answered items missing from items.csv get empty text, e.g. {extra[:3]}", flush=True)
        filler = {c: ("" if c.endswith("text") else np.nan) for c in items.columns if c != "item_id"}
        items = pd.concat([items, pd.DataFrame({"item_id": extra, **{c: [v] * len(extra) for c, v in filler.items()}})],
                          ignore_index=True)
    return items.reset_index(drop=True), task_type, answers.reset_index(drop=True), truth


def seed_features(items: pd.DataFrame):
    """Hashed, L2-normalised word counts of the item text: what seed selection compares items by."""
    from sklearn.feature_extraction.text import HashingVectorizer

    if len(items.columns) == 1:  # no text: no features
        return None
    if "text" in items.columns:
        texts = items["text"].tolist()
    else:
        texts = (items["left_text"].fillna("") + " " + items["right_text"].fillna("")).tolist()
    return HashingVectorizer(n_features=2**16, alternate_sign=False, norm="l2").transform(texts)


def dawid_skene_target(answers: pd.DataFrame, truth: pd.Series) -> float:
    """Accuracy of crowd-kit's DawidSkene(n_iter=100) on all answers: the bar the replay must reach."""
    from crowdkit.aggregation import DawidSkene

    labels = DawidSkene(n_iter=100).fit_predict(answers.rename(columns={"item_id": "task", "worker_id": "worker"}))
    common = truth.index.intersection(labels.index)
    return float((labels.reindex(common) == truth.reindex(common)).mean())


def _ece(confidence: np.ndarray, correct: np.ndarray) -> float:
    from factory.engine.calibration import expected_calibration_error

    return float(expected_calibration_error(confidence, correct))


# --------------------------------------------------------------------------- one run


def replay_spec(classes: list, opts: dict):
    """The dataset spec the replay runs under: the template's defaults plus the options (see DEFAULTS)."""
    from factory.spec import parse_spec

    return parse_spec({
        "name": "replay", "description": "replay of recorded crowd answers", "license": "benchmark data",
        "classes": [{"name": str(c), "definition": f"class {c}"} for c in classes],
        "guideline": {"version": "1"},
        "quality": {"min_accuracy": opts["min_accuracy"], "confidence_level": opts["confidence_level"]},
        "workforce": {"default_reliability": opts["default_reliability"]},
    }, source="<replay spec>")


class ReplayCrowd:
    """A crowd that reveals the recorded answers of an item one at a time, in file order."""

    def __init__(self, answers: pd.DataFrame, item_ids: pd.Index):
        self.answers = answers.assign(label=answers["label"].astype(str))
        self.rows_of = self.answers.groupby("item_id", sort=False).indices
        self.available = (pd.Series({k: len(v) for k, v in self.rows_of.items()}, dtype=int)
                          .reindex(item_ids).fillna(0).astype(int))
        self.revealed = pd.Series(0, index=item_ids)
        self.used = 0

    def reveal(self, item_ids) -> int:
        """Reveal the next answer of each item (if it has one left); return how many were revealed."""
        ids = pd.Index(item_ids)
        ok = ids[self.revealed.reindex(ids).to_numpy() < self.available.reindex(ids).to_numpy()]
        self.revealed.loc[ok] += 1
        self.used += len(ok)
        return len(ok)

    def human_answers(self) -> pd.DataFrame:
        rows = [self.rows_of[i][:n] for i, n in self.revealed[self.revealed > 0].items()]
        if not rows:
            return self.answers.iloc[:0]
        return self.answers.iloc[np.sort(np.concatenate(rows))]


def _labelers(task_type: str, opts: dict, seed: int) -> list:
    from factory.labelers import make_labelers
    from factory.pair_labelers import make_pair_labelers

    # pair folders: the pairs task type's own labelers (factory/pair_labelers.py), one implementation
    labelers = make_pair_labelers(seed=seed) if task_type == "pair" else make_labelers(task_type, seed=seed)
    if task_type == "pair" and opts.get("labelers"):
        wanted = set(opts["labelers"])
        labelers = [lab for lab in labelers if lab.name in wanted]
    return labelers


def training_labels(human: pd.DataFrame, classes: list) -> pd.Series:
    """Majority vote of the revealed answers per item; tied items are left out of training."""
    from factory.engine.aggregate import aggregate

    votes = aggregate(human, method="mv", classes=classes)
    p = votes[[f"prob_{c}" for c in classes]].to_numpy()
    top = np.sort(p, axis=1)
    clear = top[:, -1] > top[:, -2] if p.shape[1] > 1 else np.ones(len(votes), dtype=bool)
    return votes.loc[clear, "label"].astype(str)


def model_prior(items: pd.DataFrame, task_type: str, human: pd.DataFrame, classes: list, opts: dict,
                seed: int) -> pd.DataFrame | None:
    """The labelers' fused probabilities for every item, as the pipeline's fuse step makes them.

    Items the labelers trained on get out-of-fold probabilities: a model must not vouch for the
    answer it learnt (in-sample probabilities made the old replay over-confident).
    """
    from factory.engine.aggregate import aggregate
    from factory.labelers import cross_val_proba

    if task_type == "none" or not len(human):
        return None
    labels = training_labels(human, classes)
    if labels.nunique() < 2:
        return None
    by_id = items.set_index("item_id")
    train = by_id.loc[labels.index].reset_index()
    pcols = [f"prob_{c}" for c in classes]
    frames = []
    for i, lab in enumerate(_labelers(task_type, opts, seed)):
        probs = lab.fit(train, labels.tolist(), classes).predict_proba(items)
        oof = cross_val_proba(lambda lab=lab: type(lab)(seed=seed), train, labels.tolist(), classes,
                              folds=int(opts["folds"]), seed=seed)
        probs[items["item_id"].isin(labels.index).to_numpy()] = \
            pd.DataFrame(oof, index=labels.index).reindex(items["item_id"][items["item_id"].isin(labels.index)]).to_numpy()
        f = pd.DataFrame(probs, columns=pcols)
        f.insert(0, "item_id", items["item_id"].to_numpy())
        f.insert(1, "worker_id", f"model:{lab.name}")
        f.insert(2, "label", np.asarray(classes, dtype=object)[probs.argmax(1)])
        frames.append(f)
    fused = aggregate(pd.concat(frames, ignore_index=True), method="auto", classes=classes)
    return fused.reindex(items["item_id"])[pcols]


def run_seed(items, task_type, answers, truth, classes, opts, seed, budgets=BUDGETS, schedule=SCHEDULE) -> dict:
    """One seeded replay along the schedule: one record per reporting budget, one per round."""
    from factory.engine.seeding import select_seed
    from factory.loop import LoopSettings, people_round

    t0 = time.time()
    classes = [str(c) for c in classes]
    total = len(answers)
    item_ids = pd.Index(items["item_id"])
    crowd = ReplayCrowd(answers, item_ids)
    spec = replay_spec(classes, opts)
    # no experts in a replay: an item is only "escalated" once its recorded answers are used up
    settings = LoopSettings.from_spec(spec, escalate_after=int(crowd.available.max()),
                                      max_answers=int(crowd.available.max()))
    features = seed_features(items)
    answerable = np.flatnonzero(crowd.available.to_numpy() > 0)
    n_seed = int(schedule[0] * total)
    if features is not None:
        picks = answerable[select_seed(features[answerable], n_seed, seed=seed)]
    else:
        picks = np.random.default_rng(seed).choice(answerable, size=min(n_seed, len(answerable)), replace=False)
    crowd.reveal(item_ids[picks])
    truth = truth.astype(str)
    truth_ids = truth.index.intersection(item_ids)
    audit = simulated_audit(truth.reindex(truth_ids), classes, opts, seed) if opts.get("audit_share") else None
    if audit is not None:
        crowd.used += len(audit)  # the expert's answers are human answers used
    records, rounds = [], []
    stopped = False
    for i, stop in enumerate(schedule):
        human = crowd.human_answers()
        prior = model_prior(items, task_type, human, classes, opts, seed)
        allowed = (int(round(schedule[i + 1] * total)) - crowd.used) if i + 1 < len(schedule) else 0
        res = people_round(prior, human[["item_id", "worker_id", "label"]], settings, classes, item_index=item_ids,
                           budget_left=max(allowed, 0), max_answers_per_item=crowd.available, verified=audit)
        post = res.posterior
        probs = post.to_numpy(dtype=float)
        pred = pd.Series(np.asarray(classes, dtype=object)[probs.argmax(1)], index=item_ids)
        conf = pd.Series(probs.max(1), index=item_ids)
        correct = pred.reindex(truth_ids).to_numpy() == truth.reindex(truth_ids).to_numpy()
        acc = float(correct.mean())
        unver = crowd.revealed.reindex(truth_ids).to_numpy() == 0
        if audit is not None:
            unver &= ~truth_ids.isin(audit["item_id"])
        at = item_ids.get_indexer(truth_ids)
        cert = np.asarray(res.extra["certified"])[at]
        bset = np.asarray(res.extra["bound_mask"])[at]
        rounds.append({
            "answers_used": int(crowd.used), "share": round(crowd.used / total, 4), "accuracy": acc,
            "ece": _ece(conf.reindex(truth_ids).to_numpy(), correct.astype(float)),
            "bound_lower": res.bound["lower"] if res.bound["n_unverified"] else None,
            "bound_estimate": res.bound["estimate"], "bound_met": bool(res.extra["bound_met"]),
            "n_unverified": int(unver.sum()),
            "unverified_accuracy": float(correct[unver].mean()) if unver.any() else None,
            "n_certified": int(cert.sum()), "certified_threshold": res.extra.get("certified_threshold"),
            "certified_accuracy": float(correct[cert].mean()) if cert.any() else None,
            "bound_set_accuracy": float(correct[bset].mean()) if bset.any() else None,
            "asked": int((res.decisions["action"] == "ask").sum()), "stopped": bool(res.stopped),
            "temperature": round(res.fused.temperature, 4), "pooled_reliability": round(res.fused.pooled_reliability, 4),
            "verified_temperature": res.extra.get("verified_temperature"),
            "verified_accuracy": res.extra.get("verified_accuracy"),
        })
        print(f"[replay] seed {seed} stop {stop:.2f}: {crowd.used} answers ({crowd.used / total:.1%}), accuracy "
              f"{acc:.4f}, bound {res.bound['lower']:.3f} on {res.bound['n_unverified']} unverified, "
              f"{time.time() - t0:.0f}s", flush=True)
        if opts.get("dump_dir"):
            state = pd.DataFrame({"label": pred, "confidence": conf, "n_answers": crowd.revealed})
            Path(opts["dump_dir"]).mkdir(parents=True, exist_ok=True)
            state.to_csv(Path(opts["dump_dir"]) / f"seed{seed}_stop{stop:.2f}.csv")
        for b in budgets:
            # a budget is recorded at its own stop, or at every later budget once the loop asks for nothing more
            if abs(b - stop) < 1e-9 or (stopped and b > stop):
                records.append({"budget": b, "answers_used": int(crowd.used), "accuracy": acc,
                                "ece": rounds[-1]["ece"]})
        if stopped or i + 1 == len(schedule):
            break
        got = crowd.reveal(res.decisions.index[res.decisions["action"] == "ask"])
        # a round with no budget left (the audit's answers count) asks nothing without having stopped
        if allowed > 0 and (res.stopped or got == 0):
            stopped = True  # the loop stopped by itself: every later budget sees this state
            print(f"[replay] seed {seed}: loop stopped at {crowd.used} answers ({res.stop_reason})", flush=True)
    return {"records": records, "rounds": rounds, "stopped_at": int(crowd.used) if stopped else None}


def _run_seed_star(args):
    return run_seed(*args)


def replay(items: pd.DataFrame, task_type: str, answers: pd.DataFrame, truth: pd.Series, options: dict, *,
           seeds: int = 5, workers: int = 2, label: str = "replay") -> dict:
    """Run the seeded replays of one data set; return the points per budget and every round."""
    classes = sorted(str(c) for c in pd.unique(answers["label"].astype(str)))
    answers = answers.assign(label=answers["label"].astype(str))
    truth = truth.astype(str)
    print(f"[{label}] {len(items)} items, {len(answers)} answers, task {task_type}, classes {classes}", flush=True)
    target = dawid_skene_target(answers, truth)
    print(f"[{label}] target (crowd-kit DawidSkene on all answers): {target:.4f}", flush=True)
    audit_text = None
    if options.get("audit_share"):
        n_audit, cap = audit_size(len(truth.index.intersection(pd.Index(items["item_id"]))), options)
        audit_text = AUDIT_TEXT.format(n=n_audit, share=float(options["audit_share"]), cap=cap,
                                       r=options["audit_reliability"])
        print(f"[{label}] {audit_text}", flush=True)
    jobs = [(items, task_type, answers, truth, classes, options, s) for s in range(int(seeds))]
    if int(workers) > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(workers)) as pool:
            per_seed = list(bars().track(pool.map(_run_seed_star, jobs), f"{label}: seeds", len(jobs), "seeds"))
    else:
        per_seed = [run_seed(*j) for j in bars().track(jobs, f"{label}: seeds", unit="seeds")]
    points = []
    for b in BUDGETS:
        recs = [r for seed_res in per_seed for r in seed_res["records"] if abs(r["budget"] - b) < 1e-9]
        acc = np.array([r["accuracy"] for r in recs])
        points.append({
            "budget": b,
            "answers_used": int(round(np.mean([r["answers_used"] for r in recs]))),
            "accuracy_mean": round(float(acc.mean()), 4),
            "accuracy_min": round(float(acc.min()), 4),
            "seeds": len(recs),
            "ece": round(float(np.mean([r["ece"] for r in recs])), 4),
        })
    return {
        "answers_total": int(len(answers)),
        "items": int(len(items)),
        "target_accuracy": round(target, 4),
        "audit": audit_text,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
        "points": points,
        "stopped_at": [r["stopped_at"] for r in per_seed],
        "rounds": [r["rounds"] for r in per_seed],
    }


def run(out: Path, data: Path | None = None, seeds: int = 5, workers: int = 2, **opts) -> dict:
    """Replay the folder `data` for `seeds` seeds; write out/replay.json and out/replay.png and return the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if data is None:
        data = Path(__file__).resolve().parents[2] / "shared" / "bench" / "crowd" / "product"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {**DEFAULTS, **{k: v for k, v in opts.items() if k in DEFAULTS and v is not None}}
    if opts.get("dump_dir"):
        options["dump_dir"] = str(opts["dump_dir"])
    t0 = time.time()
    items, task_type, answers, truth = load_folder(Path(data))
    result = {"data": str(data), **replay(items, task_type, answers, truth, options, seeds=seeds, workers=workers)}
    result["seconds"] = round(time.time() - t0, 1)
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    points, target = result["points"], result["target_accuracy"]

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["budget"] * 100 for p in points]
    ax.plot(xs, [p["accuracy_mean"] for p in points], "o-", label="factory (mean over seeds)")
    ax.plot(xs, [p["accuracy_min"] for p in points], "x--", alpha=0.6, label="factory (worst seed)")
    ax.axhline(target, color="grey", ls=":", label=f"DS on all answers ({target:.4f})")
    ax.axvline(25, color="red", ls=":", alpha=0.4)
    ax.set_xlabel("human answers revealed (% of file)")
    ax.set_ylabel("accuracy over all items")
    ax.set_title(f"replay: {Path(data).name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    print(f"[replay] wrote {out / (NAME + '.json')} in {result['seconds']}s", flush=True)
    return result


def _point(result: dict, budget: float) -> dict:
    return next(p for p in result["points"] if abs(p["budget"] - budget) < 1e-9)


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal + met?) rows for the Markdown results table."""
    target = result["target_accuracy"]
    # smallest budget <= 25 % at which the mean reaches the target
    reached = [p for p in result["points"] if p["budget"] <= 0.25 + 1e-9 and p["accuracy_mean"] >= target]
    p25, p100 = _point(result, 0.25), _point(result, 1.0)
    rows = [
        ("target accuracy (crowd-kit DS, all answers)", f"{target:.4f}", "—"),
        ("mean accuracy at 25% of answers", f"{p25['accuracy_mean']:.4f} (min {p25['accuracy_min']:.4f}, "
         f"{p25['answers_used']} answers)", f">= {target:.4f}: {'met' if p25['accuracy_mean'] >= target else 'MISSED'}"),
        ("smallest budget reaching the target", f"{reached[0]['budget']:.0%}" if reached else "none <= 25%",
         f"<= 25%: {'met' if reached else 'MISSED'}"),
        ("mean accuracy at 100% budget", f"{p100['accuracy_mean']:.4f} ({p100['answers_used']} answers used)",
         f">= 0.95: {'met' if p100['accuracy_mean'] >= 0.95 else 'MISSED'}"),
        ("ECE of final confidences at 25% / 100%", f"{p25['ece']:.4f} / {p100['ece']:.4f}", "report"),
    ]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for replay.json and replay.png")
    parser.add_argument("--data", type=Path, default=None, help="folder with answers.csv, truth.csv, items.csv [, records.csv]")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeded runs (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, one seed each (default 2)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help=f"the replay spec's quality.min_accuracy (default {DEFAULTS['min_accuracy']})")
    parser.add_argument("--dump", type=Path, default=None, help="write each round's fused labels here (error analysis)")
    args = parser.parse_args(argv)
    result = run(args.out, args.data, seeds=args.seeds, workers=args.workers, min_accuracy=args.min_accuracy,
                 dump_dir=args.dump)
    for metric, value, goal in summary_rows(result):
        print(f"| {metric} | {value} | {goal} |")


if __name__ == "__main__":
    main()

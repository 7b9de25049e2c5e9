"""Speed benchmark: factory's Dawid-Skene against crowd-kit's DawidSkene on synthetic answers.

Synthetic data (seeded): ``answers / 10`` items x 10 answers from 1,000 workers of varied
skill (accuracy uniform in [0.25, 0.9], chance is 0.2, errors spread over the other 4 classes with a
worker-specific bias towards one class), 5 classes with an uneven class prior; no worker
answers an item twice.  Both libraries run Dawid-Skene with the same iteration cap (100)
and tolerance (1e-5 on the same stopping quantity, crowd-kit's evidence lower bound per
answer), in the same process, one after the other; each time is the best of several
runs (5 for factory, 3 for crowd-kit) so that other load on the machine counts less.
Both times include encoding the string ids.  factory runs with its defaults: from 200,000
answers on, float32 per-item arrays, the EM's item blocks on up to 4 threads (crowd-kit uses
one; the JSON keeps the CPU time of the process beside the wall clock) and SQUAREM
extrapolation between EM steps.  With SQUAREM the stopping test is stricter than crowd-kit's
(its quantity must move less than ``tol`` either way over a plain EM step, and so must the
log-likelihood per answer); the same fit without it (``accelerate=False``, crowd-kit's test
exactly) is timed too.  SQUAREM stops a little farther from the fixed point than plain EM
(both far inside ``tol``); the JSON gives each one's log-likelihood gap to a 150-step
reference fit, and the time SQUAREM needs to stop at least as near as plain EM does (the
conservative speed-up).

Peak memory of our call is measured with ``tracemalloc`` (Python-level allocations,
which include numpy and scipy buffers) around ``aggregate_full`` only, in a separate
timed run so that tracing does not slow the timed one.

Goals: >= 50x faster than crowd-kit, accuracy within 0.001 of crowd-kit's, peak <= 1 GB.

Run: ``python -m benchmarks.speed --out bench-out [--answers 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "speed"
N_WORKERS = 1000
N_CLASSES = 5
PER_ITEM = 10


def worker_confusions(rng: np.random.Generator) -> np.ndarray:
    """confusion[w, k, l] of N_WORKERS workers: accuracy U(0.25, 0.9); half of a worker's errors go to its
    bias class, the rest uniformly over the other classes."""
    acc = rng.uniform(0.25, 0.9, size=N_WORKERS)
    bias_class = rng.integers(0, N_CLASSES, size=N_WORKERS)
    conf = np.empty((N_WORKERS, N_CLASSES, N_CLASSES))
    err = 1.0 - acc
    conf[:] = (err * 0.5 / (N_CLASSES - 1))[:, None, None]
    idx = np.arange(N_CLASSES)
    conf[np.arange(N_WORKERS)[:, None], idx[None, :], bias_class[:, None]] += (err * 0.5)[:, None]
    conf[:, idx, idx] = 0.0
    conf /= conf.sum(axis=2, keepdims=True)
    conf *= err[:, None, None]
    conf[:, idx, idx] = acc[:, None]
    return conf


def synthetic_answers(n_answers: int = 1_000_000, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Seeded synthetic crowd: (answers[item_id, worker_id, label], truth indexed by item_id)."""
    rng = np.random.default_rng(seed)
    n_items = max(n_answers // PER_ITEM, 1)
    prior = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
    truth = rng.choice(N_CLASSES, size=n_items, p=prior)
    conf = worker_confusions(rng)
    # distinct workers per item: answer j comes from window [j*100, j*100+99] shifted per item
    window = N_WORKERS // PER_ITEM
    start = rng.integers(0, N_WORKERS, size=n_items)
    offs = rng.integers(0, window, size=(n_items, PER_ITEM))
    workers = (start[:, None] + np.arange(PER_ITEM)[None, :] * window + offs) % N_WORKERS
    items = np.repeat(np.arange(n_items), PER_ITEM)
    workers = workers.ravel()
    true_rep = truth[items]
    cdf = np.cumsum(conf[workers, true_rep], axis=1)
    u = rng.random(len(items))[:, None]
    labels = (u > cdf).sum(axis=1).clip(max=N_CLASSES - 1)
    answers = pd.DataFrame(
        {
            "item_id": np.char.add("i", np.char.zfill(items.astype(str), 7)),
            "worker_id": np.char.add("w", np.char.zfill(workers.astype(str), 4)),
            "label": labels,
        }
    )
    truth_s = pd.Series(truth, index=np.char.add("i", np.char.zfill(np.arange(n_items).astype(str), 7)), name="label")
    return answers.iloc[:n_answers].reset_index(drop=True), truth_s


def model_fusion_answers(n_items: int = 10_000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """The pipeline's case: 3 model "workers" give a probability vector over 5 classes per item.

    Models of different strength (softmax of noisy logits, so each is roughly calibrated);
    returns (answers with prob_<class> columns and no label, truth class per item).
    """
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, N_CLASSES, size=n_items)
    frames = []
    for m, strength in enumerate([2.5, 1.5, 0.8]):
        logits = rng.normal(0, 1, size=(n_items, N_CLASSES))
        logits[np.arange(n_items), truth] += strength
        P = np.exp(logits - logits.max(axis=1, keepdims=True))
        P /= P.sum(axis=1, keepdims=True)
        f = pd.DataFrame(P, columns=[f"prob_{k}" for k in range(N_CLASSES)])
        f.insert(0, "item_id", np.char.add("doc", np.arange(n_items).astype(str)))
        f.insert(1, "worker_id", f"model:{m}")
        frames.append(f)
    return pd.concat(frames, ignore_index=True), truth


def time_model_fusion(repeat: int = 5) -> dict:
    """Seconds (best of `repeat`), accuracy and ECE of aggregate(method="auto") on 10k items x 3 models."""
    from factory.engine import aggregate, expected_calibration_error

    answers, truth = model_fusion_answers()
    classes = list(range(N_CLASSES))
    aggregate(answers.iloc[:30], classes=classes)
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        items = aggregate(answers, method="auto", classes=classes)
        runs.append(time.perf_counter() - t0)
    items = items.loc[np.char.add("doc", np.arange(len(truth)).astype(str))]
    correct = items["label"].to_numpy() == truth
    best_model = max(
        float((answers.loc[answers["worker_id"] == f"model:{m}", [f"prob_{k}" for k in classes]].to_numpy().argmax(axis=1) == truth).mean())
        for m in range(3)
    )
    return {
        "items": int(len(truth)),
        "models": 3,
        "seconds": round(min(runs), 4),
        "accuracy": round(float(correct.mean()), 4),
        "best_single_model_accuracy": round(best_model, 4),
        "ece": round(expected_calibration_error(items["confidence"].to_numpy(), correct), 4),
    }


def run(
    out: Path,
    data: Path | None = None,
    answers: int = 1_000_000,
    seeds: int = 1,
    skip_crowdkit: bool = False,
    repeat_factory: int = 5,
    repeat_crowdkit: int = 3,
    **opts,
) -> dict:
    """Time factory DS vs crowd-kit DS on `answers` synthetic answers; write out/speed.json and .png.

    Each library's time is the best of its repeats (like ``timeit``), which discounts other
    load on the machine for both alike; all run times are kept in the JSON.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factory.engine import aggregate_full

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = int(answers)
    print(f"[speed] generating {n:,} synthetic answers (seed 0)", flush=True)
    df, truth = synthetic_answers(n, seed=0)
    max_iter, tol = 100, 1e-5

    aggregate_full(df.iloc[:1000], method="ds")  # warm imports
    print(f"[speed] factory Dawid-Skene, best of {repeat_factory} ...", flush=True)
    factory_runs, factory_cpu = [], []
    for _ in range(repeat_factory):
        t0, c0 = time.perf_counter(), time.process_time()
        res = aggregate_full(df, method="ds", max_iter=max_iter, tol=tol)
        factory_runs.append(time.perf_counter() - t0)
        factory_cpu.append(time.process_time() - c0)
    factory_seconds = min(factory_runs)
    factory_acc = float((res.items["label"].reindex(truth.index) == truth).mean())
    print(f"[speed] factory: {factory_seconds:.2f} s, {res.iterations} iterations, accuracy {factory_acc:.4f}", flush=True)

    # the same answers in random order (not grouped by item): ids must be hashed, rows sorted
    shuffled = df.sample(frac=1.0, random_state=1).reset_index(drop=True)
    shuffled_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        aggregate_full(shuffled, method="ds", max_iter=max_iter, tol=tol)
        shuffled_runs.append(time.perf_counter() - t0)
    del shuffled
    print(f"[speed] factory on the answers shuffled: {min(shuffled_runs):.2f} s", flush=True)

    # the same fit without the SQUAREM extrapolation, to show what it buys and where each stops
    plain_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        plain = aggregate_full(df, method="ds", max_iter=max_iter, tol=tol, accelerate=False)
        plain_runs.append(time.perf_counter() - t0)
    plain_acc = float((plain.items["label"].reindex(truth.index) == truth).mean())
    print(f"[speed] factory, plain EM (accelerate=False): {min(plain_runs):.2f} s, {plain.iterations} iterations, "
          f"accuracy {plain_acc:.4f}", flush=True)

    # How far from the fixed point each one stops: a reference fit run to 150 E-steps.  SQUAREM
    # passes a stricter test, yet stops a little earlier in log-likelihood than plain EM; the
    # E-steps it needs to be at least as near as plain EM's stopping point are timed as well
    ref = aggregate_full(df, method="ds", max_iter=150, tol=-1.0)
    ref_labels = ref.items["label"]

    def gap(r) -> dict:
        return {
            "log_likelihood_gap_per_answer": float(f"{(ref.log_likelihood - r.log_likelihood) / n:.3g}"),
            "labels_differing": int((r.items["label"] != ref_labels).sum()),
        }

    steps = res.iterations
    while steps < 150:
        matched = aggregate_full(df, method="ds", max_iter=steps, tol=-1.0)
        if matched.log_likelihood >= plain.log_likelihood:
            break
        steps += 1
    matched_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        aggregate_full(df, method="ds", max_iter=steps, tol=-1.0)
        matched_runs.append(time.perf_counter() - t0)
    print(f"[speed] SQUAREM needs {steps} E-steps ({min(matched_runs):.2f} s) to stop as near the fixed point as plain EM", flush=True)

    tracemalloc.start()
    aggregate_full(df, method="ds", max_iter=max_iter, tol=tol)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_mb = peak / 2**20
    print(f"[speed] factory peak traced memory: {peak_mb:.0f} MB", flush=True)

    fusion = time_model_fusion()
    print(f"[speed] pipeline model fusion (10k items x 3 models): {fusion['seconds']:.3f} s, "
          f"accuracy {fusion['accuracy']:.4f} (best model {fusion['best_single_model_accuracy']:.4f}), "
          f"ECE {fusion['ece']:.4f}", flush=True)

    ck_seconds = ck_acc = ck_iters = None
    ck_runs = ck_cpu = []
    if not skip_crowdkit:
        from crowdkit.aggregation import DawidSkene

        print(f"[speed] crowd-kit DawidSkene, best of {repeat_crowdkit} (this takes a while) ...", flush=True)
        ck_df = df.rename(columns={"item_id": "task", "worker_id": "worker"})
        ck_runs, ck_cpu = [], []
        for _ in range(repeat_crowdkit):
            t0, c0 = time.perf_counter(), time.process_time()
            ds = DawidSkene(n_iter=max_iter, tol=tol)
            ck_labels = ds.fit_predict(ck_df)
            ck_runs.append(time.perf_counter() - t0)
            ck_cpu.append(time.process_time() - c0)
        ck_seconds = min(ck_runs)
        ck_iters = len(ds.loss_history_)
        ck_acc = float((ck_labels.reindex(truth.index) == truth).mean())
        print(f"[speed] crowd-kit: {ck_seconds:.2f} s, {ck_iters} iterations, accuracy {ck_acc:.4f}", flush=True)

    result = {
        "answers": n,
        "items": int(len(truth)),
        "workers": N_WORKERS,
        "classes": N_CLASSES,
        "max_iter": max_iter,
        "tol": tol,
        "factory_seconds": round(factory_seconds, 3),
        "factory_runs_seconds": [round(x, 3) for x in factory_runs],
        "factory_iterations": res.iterations,
        "factory_seconds_shuffled_answers": round(min(shuffled_runs), 3),
        "factory_log_likelihood_per_answer": round(res.log_likelihood / n, 9),
        "factory_vs_fixed_point": gap(res),
        "factory_plain_em": {
            "accelerate": False,
            "seconds": round(min(plain_runs), 3),
            "iterations": plain.iterations,
            "accuracy": round(plain_acc, 5),
            "log_likelihood_per_answer": round(plain.log_likelihood / n, 9),
            "vs_fixed_point": gap(plain),
        },
        "fixed_point": "aggregate_full(method='ds', max_iter=150, tol=-1): SQUAREM run for 150 E-steps",
        "factory_at_plain_em_quality": {
            "what": "SQUAREM stopped after the fewest E-steps whose log-likelihood is >= plain EM's at its stop",
            "iterations": steps,
            "seconds": round(min(matched_runs), 3),
            "speedup": None if ck_seconds is None else round(ck_seconds / min(matched_runs), 1),
        },
        "crowdkit_seconds": None if ck_seconds is None else round(ck_seconds, 3),
        "crowdkit_runs_seconds": None if ck_seconds is None else [round(x, 3) for x in ck_runs],
        "timing": "wall clock, best of the repeats, same process, one library after the other",
        "factory_cpu_seconds": round(min(factory_cpu), 3),
        "crowdkit_cpu_seconds": round(min(ck_cpu), 3) if ck_cpu else None,
        "speedup_cpu": round(min(ck_cpu) / min(factory_cpu), 1) if ck_cpu else None,
        "load_average_1min_at_end": round(__import__("os").getloadavg()[0], 2),
        "crowdkit_iterations": ck_iters,
        "speedup": None if ck_seconds is None else round(ck_seconds / factory_seconds, 1),
        "factory_accuracy": round(factory_acc, 5),
        "crowdkit_accuracy": None if ck_acc is None else round(ck_acc, 5),
        "factory_peak_mb": round(peak_mb, 1),
        "peak_memory_method": "tracemalloc peak around one aggregate_full(method='ds') call (separate, untimed run)",
        "model_fusion": fusion,
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    names = ["factory DS", f"factory DS, {steps} steps\n(plain-EM quality)", "factory DS\nplain EM"] + ([] if ck_seconds is None else ["crowd-kit DS"])
    secs = [factory_seconds, min(matched_runs), min(plain_runs)] + ([] if ck_seconds is None else [ck_seconds])
    ax.bar(names, secs, color=["tab:blue", "tab:blue", "tab:cyan", "tab:gray"][: len(names)])
    ax.set_yscale("log")
    ax.set_ylabel("seconds (log)")
    ax.set_title(f"Dawid-Skene on {n:,} answers")
    for i, s in enumerate(secs):
        ax.text(i, s, f"{s:.2f} s", ha="center", va="bottom")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)
    print(f"[speed] wrote {out / (NAME + '.json')} and {out / (NAME + '.png')}", flush=True)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal and whether met) rows for a Markdown table."""
    rows = [("answers", f"{result['answers']:,}", "")]
    sp = result.get("speedup")
    rows.append(("factory DS seconds", f"{result['factory_seconds']:.2f}", ""))
    pe = result.get("factory_plain_em")
    if pe:
        rows.append(("factory DS seconds without SQUAREM (plain EM)", f"{pe['seconds']:.2f} ({pe['iterations']} vs {result['factory_iterations']} E-steps)", ""))
        q = result["factory_at_plain_em_quality"]
        rows.append(
            (
                "SQUAREM stopped as near the fixed point as plain EM",
                f"{q['seconds']:.2f} s ({q['iterations']} E-steps)" + (f", {q['speedup']:.0f}x" if q.get("speedup") else ""),
                "the conservative speed-up",
            )
        )
    if result.get("factory_seconds_shuffled_answers") is not None:
        rows.append(("factory DS seconds, answers in random order", f"{result['factory_seconds_shuffled_answers']:.2f}", ""))
    if sp is not None:
        rows.append(("crowd-kit DS seconds", f"{result['crowdkit_seconds']:.2f}", ""))
        rows.append(("speed-up (wall clock)", f"{sp:.0f}x", f">= 50x: {'met' if sp >= 50 else 'MISSED'}"))
        if result.get("speedup_cpu"):
            rows.append(("speed-up (CPU time of the process)", f"{result['speedup_cpu']:.0f}x", "all threads counted (factory runs its EM on up to 4 threads)"))
        gap = abs(result["factory_accuracy"] - result["crowdkit_accuracy"])
        rows.append(
            (
                "accuracy factory / crowd-kit",
                f"{result['factory_accuracy']:.4f} / {result['crowdkit_accuracy']:.4f}",
                f"within 0.001: {'met' if gap <= 0.001 else 'MISSED'}",
            )
        )
    else:
        rows.append(("factory accuracy", f"{result['factory_accuracy']:.4f}", "crowd-kit not run"))
    fu = result.get("model_fusion")
    if fu:
        rows.append(
            (
                "pipeline fusion, 10k items x 3 models (auto)",
                f"{fu['seconds']:.3f} s, acc {fu['accuracy']:.4f} (best model {fu['best_single_model_accuracy']:.4f}), ECE {fu['ece']:.4f}",
                f"< 1 s: {'met' if fu['seconds'] < 1 else 'MISSED'}",
            )
        )
    pk = result["factory_peak_mb"]
    rows.append(("factory peak memory (tracemalloc)", f"{pk:.0f} MB", f"<= 1024 MB: {'met' if pk <= 1024 else 'MISSED'}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for speed.json and speed.png")
    ap.add_argument("--data", type=Path, default=None, help="unused (synthetic data)")
    ap.add_argument("--answers", type=int, default=1_000_000, help="number of synthetic answers")
    ap.add_argument("--skip-crowdkit", action="store_true", help="time only the factory")
    ap.add_argument("--repeat-factory", type=int, default=5, help="timed factory runs (best counts)")
    ap.add_argument("--repeat-crowdkit", type=int, default=3, help="timed crowd-kit runs (best counts)")
    args = ap.parse_args(argv)
    result = run(
        args.out,
        args.data,
        answers=args.answers,
        skip_crowdkit=args.skip_crowdkit,
        repeat_factory=args.repeat_factory,
        repeat_crowdkit=args.repeat_crowdkit,
    )
    for row in summary_rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()

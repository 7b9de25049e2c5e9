"""Scale: Dawid-Skene on up to 100 million answers, streamed from Parquet, on one 2-core machine.

Synthetic data (seeded; the noise model of benchmarks/speed.py): ``answers / 10`` items x 10 answers
from 1,000 workers of accuracy U(0.25, 0.9) over 5 classes (chance 0.2), each worker's errors leaning
to one class.  For each size the answers are written to Parquet first (not timed; row groups of 1M
answers, grouped by item), then a fresh process aggregates them from the file:
``factory.engine.partitioned.from_parquet`` reads Arrow record batches of 5M answers into partitions
(never the whole table as a DataFrame) and ``aggregate_partitioned`` runs the in-memory engine's EM
(Dawid-Skene, SQUAREM) with one block per partition.  Timed: reading + encoding + EM + labels;
peak RSS is that process's maximum resident set.  Accuracy is against the synthetic truth; on the
first 1M answers the partitioned result is also compared with ``factory.aggregate_full(method="ds")``
in memory (labels and the largest posterior difference).

Goal (issue 17): 10^8 answers in <= 60 s and <= 8 GB peak RSS.  Published reference: spark-crowd's
Dawid-Skene took 703 s for 100M labels on one machine (426 s on 3 nodes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.speed import N_CLASSES, N_WORKERS, PER_ITEM, worker_confusions

NAME = "scale"
ROW_GROUP = 1_000_000
SIZES = (1_000_000, 10_000_000, 100_000_000)
GOAL_SECONDS, GOAL_RSS_MB = 60.0, 8192.0


def write_synthetic(path: Path, n_answers: int, seed: int = 0, progress=None) -> Path:
    """Write ``n_answers`` synthetic answers (item_id int64, worker_id int32, label int8) and
    ``<path>.truth.npy``, in chunks of 1M answers (constant memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    conf = worker_confusions(rng)
    cdf_all = np.cumsum(conf, axis=2)
    prior = np.array([0.35, 0.25, 0.2, 0.12, 0.08])
    n_items = n_answers // PER_ITEM
    truth = rng.choice(N_CLASSES, size=n_items, p=prior).astype(np.int8)
    np.save(str(path) + ".truth.npy", truth)
    window = N_WORKERS // PER_ITEM
    schema = pa.schema([("item_id", pa.int64()), ("worker_id", pa.int32()), ("label", pa.int8())])
    items_per_chunk = ROW_GROUP // PER_ITEM
    with pq.ParquetWriter(str(path), schema, compression="zstd") as w:
        for a in range(0, n_items, items_per_chunk):
            b = min(n_items, a + items_per_chunk)
            n = b - a
            start = rng.integers(0, N_WORKERS, size=n)
            offs = rng.integers(0, window, size=(n, PER_ITEM))
            workers = ((start[:, None] + np.arange(PER_ITEM)[None, :] * window + offs) % N_WORKERS).ravel()
            items = np.repeat(np.arange(a, b, dtype=np.int64), PER_ITEM)
            cdf = cdf_all[workers, truth[items]]
            labels = (rng.random(len(items))[:, None] > cdf).sum(axis=1).clip(max=N_CLASSES - 1).astype(np.int8)
            w.write_table(pa.table({"item_id": items, "worker_id": workers.astype(np.int32), "label": labels},
                                   schema=schema), row_group_size=ROW_GROUP)
            if progress:
                progress(b * PER_ITEM, n_answers)
    return path


def aggregate_file(path: Path) -> dict:
    """Aggregate one Parquet file of answers (this process's figures: seconds, peak RSS, accuracy)."""
    from factory.engine.partitioned import aggregate_partitioned, from_parquet

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    parts = from_parquet(path, classes=list(range(N_CLASSES)), partition_rows=5_000_000)
    t_read = time.perf_counter() - t0
    res = aggregate_partitioned(parts)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    truth = np.load(str(path) + ".truth.npy")
    acc = float((res["label_index"] == truth).mean())
    return {"answers": int(parts.nnz), "items": int(parts.n_items), "partitions": len(parts.partitions),
            "partitions_streamed": sum(p.matrix is None for p in parts.partitions),
            "seconds": round(seconds, 2), "read_encode_seconds": round(t_read, 2), "cpu_seconds": round(cpu, 2),
            "em_steps": int(res["iterations"]), "converged": bool(res["converged"]), "accuracy": round(acc, 6),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def compare_in_memory(path: Path, n: int = 1_000_000) -> dict:
    """On the first n answers: partitioned (5 partitions) vs the in-memory engine, same options
    (float64; the timed runs use the engine's default float32 per-item arrays from 200k answers)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from factory.engine import aggregate_full
    from factory.engine.partitioned import aggregate_partitioned, from_frames

    df = pq.ParquetFile(str(path)).read_row_group(0).to_pandas().iloc[:n]
    opts = {"precision": "double"}  # both in float64, so the comparison measures the partitioning alone
    mem = aggregate_full(df, method="ds", classes=list(range(N_CLASSES)), **opts)
    step = -(-len(df) // 5 // PER_ITEM) * PER_ITEM
    part = aggregate_partitioned(from_frames([df.iloc[i:i + step] for i in range(0, len(df), step)],
                                             classes=list(range(N_CLASSES))), **opts)
    cols = [f"prob_{c}" for c in range(N_CLASSES)]
    P = pd.DataFrame(part["posteriors"], index=part["item_ids"], columns=cols).loc[mem.items.index]
    labels_mem = mem.items["label"].to_numpy()
    labels_part = np.asarray(part["classes"])[part["label_index"]]
    labels_part = pd.Series(labels_part, index=part["item_ids"]).loc[mem.items.index].to_numpy()
    return {"answers": len(df), "same_labels": float((labels_mem == labels_part).mean()),
            "max_posterior_difference": float(np.abs(P.to_numpy() - mem.items[cols].to_numpy()).max()),
            "em_steps_in_memory": int(mem.iterations), "em_steps_partitioned": int(part["iterations"])}


def _one(path: Path) -> dict:
    """Aggregate in a fresh process, so its peak RSS is this size's alone."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--aggregate", str(path)], check=True,
                         capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _progress(label: str):
    """write_synthetic's callback as a factory.progress bar (counts, rate; shown when bars are on)."""
    from factory.progress import bars

    step = bars().step(label, unit="answers")

    def show(done: int, total: int) -> None:
        if step.total is None:
            step.total = total
            step.__enter__()
        step.update(done - step.n)
        if done >= total:
            step.__exit__(None, None, None)
    return show


def run(out: Path, data: Path | None = None, answers: int | None = None, work: Path | None = None, **_) -> dict:
    """Write the curve's Parquet files (sizes 10^6 .. `answers`), aggregate each, write scale.json/.png."""
    top = int(answers or SIZES[-1])
    sizes = sorted({s for s in SIZES if s < top} | {top})
    work = Path(work or out / "scale-data")
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in sizes:
        path = work / f"answers-{n}.parquet"
        if not path.exists() or not Path(str(path) + ".truth.npy").exists():
            write_synthetic(path, n, progress=_progress(f"writing {path.name}"))
        r = _one(path)
        r["parquet_mb"] = round(path.stat().st_size / 2**20, 1)
        runs.append(r)
        print(f"scale: {r['answers']:>11,} answers  {r['seconds']:7.2f} s  peak {r['peak_rss_mb']:8.1f} MB  "
              f"accuracy {r['accuracy']:.4f}  ({r['em_steps']} EM steps, {r['partitions']} partitions)", flush=True)
    check = compare_in_memory(work / f"answers-{sizes[0]}.parquet")
    big = runs[-1]
    result = {"answers": big["answers"], "seconds": big["seconds"], "peak_rss_mb": big["peak_rss_mb"],
              "accuracy": big["accuracy"], "runs": runs, "in_memory_check": check,
              "goal": {"seconds": GOAL_SECONDS, "peak_rss_mb": GOAL_RSS_MB},
              "met": bool(big["answers"] >= 10**8 and big["seconds"] <= GOAL_SECONDS and big["peak_rss_mb"] <= GOAL_RSS_MB),
              "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()[0]},
              "data": "synthetic (benchmarks/scale.py noise model), not people"}
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=1))
    _plot(runs, out / f"{NAME}.png")
    return result


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    n = [r["answers"] for r in runs]
    ax[0].loglog(n, [r["seconds"] for r in runs], "o-", label="factory (Parquet, streamed)")
    ax[0].axhline(GOAL_SECONDS, color="grey", ls="--", label="goal 60 s")
    ax[0].scatter([1e8], [703], marker="x", color="C3", label="spark-crowd DS, 1 machine (published)")
    ax[0].set_xlabel("answers")
    ax[0].set_ylabel("seconds (read + EM)")
    ax[0].legend(fontsize=8)
    ax[1].semilogx(n, [r["peak_rss_mb"] / 1024 for r in runs], "o-")
    ax[1].axhline(GOAL_RSS_MB / 1024, color="grey", ls="--", label="goal 8 GB")
    ax[1].set_xlabel("answers")
    ax[1].set_ylabel("peak RSS (GB)")
    ax[1].legend(fontsize=8)
    fig.suptitle("Dawid-Skene on synthetic answers from Parquet (2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    return [(f"{result['answers']:,} answers", f"{result['seconds']} s, {result['peak_rss_mb']:.0f} MB, "
             f"accuracy {result['accuracy']:.4f}", "<= 60 s, <= 8 GB")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--answers", type=int, default=SIZES[-1])
    ap.add_argument("--aggregate", type=Path, help=argparse.SUPPRESS)  # the child process of one size
    a = ap.parse_args(argv)
    if a.aggregate:
        print(json.dumps(aggregate_file(a.aggregate)))
        return
    if not a.out:
        ap.error("--out DIR is required")
    a.out.mkdir(parents=True, exist_ok=True)
    run(a.out, answers=a.answers)


if __name__ == "__main__":
    main()

"""Dawid-Skene as map-reduce over partitions: the same result as the in-memory engine, from frames and
from Parquet streamed in record batches, kept in memory or re-read on every pass."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.engine import aggregate_full
from factory.engine.partitioned import aggregate_partitioned, from_frames, from_parquet

CLASSES = ["a", "b", "c"]
COLS = [f"prob_{c}" for c in CLASSES]


def _crowd(n_items=6000, per=5, n_workers=40, seed=0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n_items)
    acc = rng.uniform(0.45, 0.95, n_workers)
    item = np.repeat(np.arange(n_items), per)
    worker = rng.integers(0, n_workers, len(item))
    right = rng.random(len(item)) < acc[worker]
    lab = np.where(right, truth[item], (truth[item] + rng.integers(1, 3, len(item))) % 3)
    df = pd.DataFrame({"item_id": [f"it{i:05d}" for i in item], "worker_id": [f"w{w:02d}" for w in worker],
                       "label": np.asarray(CLASSES)[lab]})
    return df, truth


def _posteriors(res) -> pd.DataFrame:
    return pd.DataFrame(res["posteriors"], index=res["item_ids"], columns=COLS)


@pytest.mark.parametrize("accelerate", [False, True])
def test_partitions_give_the_in_memory_engines_posteriors(accelerate):
    df, truth = _crowd()
    mem = aggregate_full(df, method="ds", classes=CLASSES, accelerate=accelerate, precision="double")
    step = 5 * 1300  # partitions of whole items, of unequal sizes
    parts = from_frames([df.iloc[i:i + step] for i in range(0, len(df), step)], classes=CLASSES)
    assert len(parts.partitions) == 5
    res = aggregate_partitioned(parts, accelerate=accelerate, precision="double")
    got = _posteriors(res).loc[mem.items.index]
    assert np.abs(got.to_numpy() - mem.items[COLS].to_numpy()).max() < 1e-6
    assert res["iterations"] == mem.iterations
    # and it is a real fit, not the starting vote: better than majority vote on this crowd
    mv = aggregate_full(df, method="mv", classes=CLASSES).items
    truth_s = pd.Series(np.asarray(CLASSES)[truth], index=[f"it{i:05d}" for i in range(len(truth))])
    acc = (pd.Series(np.asarray(CLASSES)[res["label_index"]], index=res["item_ids"]) == truth_s).mean()
    assert acc > (mv["label"] == truth_s.loc[mv.index]).mean() + 0.01


def test_workers_first_met_in_a_later_partition_get_their_own_columns():
    df, _ = _crowd(n_items=2000, n_workers=30)
    late = df["item_id"] >= "it01000"
    df.loc[late, "worker_id"] = df.loc[late, "worker_id"] + "-late"  # only in the second half
    mem = aggregate_full(df, method="ds", classes=CLASSES, precision="double")
    res = aggregate_partitioned(from_frames([df[~late], df[late]], classes=CLASSES), precision="double")
    assert len(res["workers"]) == df["worker_id"].nunique()
    assert np.abs(_posteriors(res).loc[mem.items.index].to_numpy() - mem.items[COLS].to_numpy()).max() < 1e-6


def test_parquet_streamed_in_record_batches_splitting_items_and_re_read_beyond_the_budget(tmp_path):
    df, _ = _crowd()
    path = tmp_path / "answers.parquet"
    # row groups of 997 rows: nearly every group boundary cuts an item's answers in two
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=997)
    mem = aggregate_full(df, method="ds", classes=CLASSES, precision="double")
    for budget in (float("inf"), 50_000):
        parts = from_parquet(path, classes=CLASSES, partition_rows=2500, memory_budget=budget, keep_item_ids=True)
        streamed = sum(p.matrix is None for p in parts.partitions)
        assert (streamed == 0) if budget == float("inf") else (streamed > 0)
        res = aggregate_partitioned(parts, precision="double")
        ids = pd.Index(res["item_ids"])
        assert ids.is_unique and len(ids) == df["item_id"].nunique()  # no item was split between partitions
        assert np.abs(_posteriors(res).loc[mem.items.index].to_numpy() - mem.items[COLS].to_numpy()).max() < 1e-6


def test_bad_partitions_are_refused_with_the_row_and_the_fix():
    df, _ = _crowd(n_items=50)
    shuffled = df.sample(frac=1.0, random_state=0)
    with pytest.raises(ValueError, match="not contiguous; sort the answers by item"):
        from_frames([shuffled], classes=CLASSES)
    bad = df.copy()
    bad.loc[7, "label"] = "zebra"
    with pytest.raises(ValueError, match="row 7: label 'zebra' is not one of the classes"):
        from_frames([bad], classes=CLASSES)
    with pytest.raises(ValueError, match="missing column"):
        from_frames([df.drop(columns="worker_id")], classes=CLASSES)

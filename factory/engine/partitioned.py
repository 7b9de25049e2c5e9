"""Dawid-Skene as map-reduce over partitions of the answers (batches, Parquet row groups, files).

Dawid-Skene's E-step is per item and its M-step only needs sums per (worker, answered class,
true class): so the answers can be cut into partitions that each hold whole items, every EM step
maps each partition to its sufficient statistics (log normalisers, ``A_p.T @ T_p``, class sums,
entropy) and reduces them by adding.  The EM itself is the in-memory engine's (``aggregate._em``:
same priors, same stopping test, same SQUAREM), so the result equals ``factory.aggregate(...,
method="ds")`` on the same answers up to the order of floating-point sums.

What a partition costs: its answers as a sparse design matrix over a *global* worker vocabulary
(int32 indices, one float per answer).  Partitions are kept in memory up to ``memory_budget``
bytes; beyond it a partition is re-read from its source on every pass (streaming), so peak memory
is the budget plus the per-item posteriors (items x classes floats) whatever the number of answers.

Sources: ``from_frames`` (an iterable of DataFrames, e.g. one per batch) and ``from_parquet`` (a
Parquet file or folder read in Arrow record batches: its rows must be grouped by item, as every
export of this factory is; an item split across two record batches is carried over to the next).
The map step is a pure function of (partition, parameters) and runs on a thread pool here; the
same statistics can be computed by Celery tasks or Kubernetes jobs, one per partition, and added.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from scipy import sparse

from factory.engine.aggregate import (DEFAULTS, _BlockedProducts, _em, _normalise_votes, _row_argmax,
                                      _single_thread_blas)

__all__ = ["PartitionedAnswers", "aggregate_partitioned", "from_frames", "from_parquet"]


@dataclass
class _Partition:
    key: str
    n_items: int
    nnz: int
    item_ids: np.ndarray | None  # kept for the result (None: the caller does not need them)
    matrix: sparse.csr_matrix | None  # None when it lives only in its source
    reload: Callable[[], sparse.csr_matrix] | None = None


@dataclass
class PartitionedAnswers:
    """Answers cut into partitions of whole items, over one worker vocabulary and one class list."""

    classes: list
    workers: dict  # worker id -> column block
    partitions: list[_Partition] = field(default_factory=list)
    heaviest_worker: int = 0
    heaviest_column: int = 0  # most answers in one (worker, class) column: decides float32 safety
    _worker_answers: dict = field(default_factory=dict)
    _column_answers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_items(self) -> int:
        return sum(p.n_items for p in self.partitions)

    @property
    def nnz(self) -> int:
        return sum(p.nnz for p in self.partitions)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_items, len(self.workers) * len(self.classes)

    def products(self, K: int, n_threads: int, dtype: type) -> "_BlockedProducts":
        """The EM's per-item work, one block per partition (read from its source when not in memory)."""
        n_cols = self.shape[1]
        blocks, r0, masses = [], 0, []
        for p in self.partitions:
            m = p.matrix
            if m is not None:
                B = _with_columns(m, n_cols, dtype)
                masses.append(np.diff(B.indptr).astype(float))
            else:
                def load(dt, p=p):
                    return _with_columns(p.reload(), n_cols, dt)
                B = load
                masses.append(np.diff(p.reload().indptr).astype(float))
            blocks.append((r0, r0 + p.n_items, B))
            r0 += p.n_items
        item_mass = np.concatenate(masses) if masses else np.zeros(0)
        return _BlockedProducts(None, K, n_threads, dtype, blocks=blocks, item_mass=item_mass)

    def vote_shares(self) -> np.ndarray:
        """Majority-vote shares per item (the EM's starting point, as in the in-memory engine)."""
        K = len(self.classes)
        n_cols = self.shape[1]
        onehot = sparse.csr_matrix((np.ones(n_cols), (np.arange(n_cols), np.arange(n_cols) % K)), shape=(n_cols, K))
        parts = []
        for p in self.partitions:
            m = _with_columns(p.matrix if p.matrix is not None else p.reload(), n_cols, np.float64)
            parts.append(np.asarray((m @ onehot).todense()))
        return _normalise_votes(np.concatenate(parts) if parts else np.zeros((0, K)))


def _with_columns(m: sparse.csr_matrix, n_cols: int, dtype: type) -> sparse.csr_matrix:
    """The partition's matrix widened to the final worker vocabulary (workers met later add columns)."""
    if m.shape[1] != n_cols or m.dtype != dtype:
        m = sparse.csr_matrix((m.data.astype(dtype, copy=False), m.indices, m.indptr), shape=(m.shape[0], n_cols))
    return m


class _Builder:
    """Encodes partitions against a growing worker vocabulary; keeps them within the memory budget."""

    def __init__(self, classes: list, memory_budget: float, keep_item_ids: bool):
        self.out = PartitionedAnswers(classes=list(classes), workers={})
        self.class_code = {c: i for i, c in enumerate(classes)}
        self.budget = memory_budget
        self.used = 0
        self.keep_ids = keep_item_ids

    def encode(self, df: pd.DataFrame, where: str) -> tuple[sparse.csr_matrix, np.ndarray]:
        """(design matrix, item ids) of one partition; its rows must be grouped by item."""
        missing = {"item_id", "worker_id", "label"} - set(df.columns)
        if missing:
            raise ValueError(f"{where}: missing column(s) {sorted(missing)}; need item_id, worker_id, label")
        K = len(self.class_code)
        items = df["item_id"].to_numpy()
        if len(items) == 0:
            return sparse.csr_matrix((0, 0)), items[:0]
        starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
        heads = items[starts]
        if len(pd.unique(heads)) != len(heads):
            dup = pd.Series(heads)[pd.Series(heads).duplicated()].iloc[0]
            raise ValueError(f"{where}: the answers of item {dup!r} are not contiguous; sort the answers by item "
                             f"(e.g. duckdb: COPY (SELECT * FROM 'answers.parquet' ORDER BY item_id) TO 'sorted.parquet')")
        labels = df["label"]
        if pd.api.types.is_integer_dtype(labels) and set(self.class_code) == set(range(K)):
            lab = labels.to_numpy()
            bad = (lab < 0) | (lab >= K)
        else:
            lab = labels.map(self.class_code).to_numpy()
            bad = pd.isna(lab)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: row {i}: label {labels.iloc[i]!r} is not one of the classes {list(self.class_code)}")
        codes, uniq = pd.factorize(df["worker_id"], sort=False)
        w = self.out.workers
        glob = np.array([w.setdefault(u, len(w)) for u in uniq], dtype=np.int64)
        worker = glob[codes]
        counts = np.bincount(worker, minlength=len(w))
        for j in np.flatnonzero(counts):
            self.out._worker_answers[j] = self.out._worker_answers.get(j, 0) + int(counts[j])
        self.out.heaviest_worker = max(self.out._worker_answers.values(), default=0)
        cols = (worker * K + lab.astype(np.int64)).astype(np.int32)
        col_counts = np.bincount(cols, minlength=len(w) * K)
        acc = self.out._column_answers
        if len(acc) < len(col_counts):
            acc = np.concatenate([acc, np.zeros(len(col_counts) - len(acc), dtype=np.int64)])
        acc[:len(col_counts)] += col_counts
        self.out._column_answers = acc
        self.out.heaviest_column = int(acc.max(initial=0))
        row_len = np.diff(np.r_[starts, len(items)])
        indptr = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(row_len, out=indptr[1:])
        m = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), cols, indptr.astype(np.int32)),
                              shape=(len(starts), len(w) * K))
        return m, heads

    def add(self, key: str, df: pd.DataFrame, reload: Callable[[], pd.DataFrame] | None) -> None:
        m, heads = self.encode(df, key)
        size = m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        keep = reload is None or self.used + size <= self.budget
        if keep:
            self.used += size
        re = None if keep else (lambda r=reload, k=key: self.encode(r(), k)[0])
        self.out.partitions.append(_Partition(key, m.shape[0], m.nnz, heads if self.keep_ids else None,
                                              m if keep else None, re))


def from_frames(frames: Iterable[pd.DataFrame], classes: Iterable, *, keep_item_ids: bool = True) -> PartitionedAnswers:
    """Partitions from DataFrames (``item_id, worker_id, label``), e.g. one per batch; each holds whole items."""
    b = _Builder(list(classes), float("inf"), keep_item_ids)
    for i, df in enumerate(frames):
        b.add(f"partition {i}", df, None)
    return b.out


def _parquet_chunks(path: Path, rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
    """Record batches of about `rows` answers that never split an item (its tail is carried over)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")
    carry = None
    n = 0
    for batch in dataset.to_batches(columns=["item_id", "worker_id", "label"], batch_size=rows):
        t = pa.Table.from_batches([batch])
        if carry is not None:
            t = pa.concat_tables([carry, t])
        items = t.column("item_id")
        if len(items) == 0:
            continue
        last = items[len(items) - 1]
        # rows of the last item may continue in the next batch: hold them back
        import pyarrow.compute as pc
        tail_start = len(items) - int(pc.sum(pc.equal(items.slice(max(0, len(items) - 100_000)), last)).as_py() or 0)
        carry = t.slice(tail_start)
        head = t.slice(0, tail_start)
        if head.num_rows:
            yield n, head.to_pandas()
            n += 1
    if carry is not None and carry.num_rows:
        yield n, carry.to_pandas()


def from_parquet(path: str | Path, classes: Iterable, *, partition_rows: int = 5_000_000,
                 memory_budget: float = 4e9, keep_item_ids: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> PartitionedAnswers:
    """Partitions streamed from a Parquet file or folder (rows grouped by item) in record batches.

    Partitions beyond ``memory_budget`` bytes of encoded answers are not kept: each EM pass reads
    them again from the file (the partition's row range), so memory stays bounded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such Parquet file or folder")
    b = _Builder(list(classes), memory_budget, keep_item_ids)
    spans: list[int] = []
    total = 0
    for i, df in _parquet_chunks(path, partition_rows):
        spans.append(len(df))

        def reload(i=i):  # re-read this partition only (the chunking is deterministic)
            for j, d in _parquet_chunks(path, partition_rows):
                if j == i:
                    return d
            raise RuntimeError(f"{path}: partition {i} vanished; the file changed during aggregation")
        b.add(f"{path.name} rows {total}-{total + len(df) - 1}", df, reload)
        total += len(df)
        if progress:
            progress(i + 1, total)
    return b.out


def aggregate_partitioned(parts: PartitionedAnswers, **opts: Any) -> dict:
    """Dawid-Skene over partitions: posteriors (items x classes, partition order), labels, confidence,
    the class prior, iterations and convergence; the options are ``factory.aggregate``'s."""
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **opts}
    K = len(parts.classes)
    T0 = parts.vote_shares()
    with _single_thread_blas():
        T, confusion, rho, iters, converged, ll, _ = _em(
            parts, len(parts.workers), K, T0, "ds", o, 1, None, int(parts.heaviest_worker))
    best, top = _row_argmax(T)
    ids = [p.item_ids for p in parts.partitions]
    return {"posteriors": T, "label_index": best, "confidence": top, "classes": parts.classes,
            "item_ids": np.concatenate(ids) if ids and all(i is not None for i in ids) else None,
            "class_prior": rho, "iterations": iters, "converged": converged, "log_likelihood": ll,
            "workers": list(parts.workers), "confusion": confusion}

"""Answer aggregation: turn many noisy answers per item into one label with a posterior.

All methods work on one sparse matrix ``A`` (items x (worker, observation)) built
once from the answer table; every EM step is two sparse-dense products
(``A @ log_confusion`` for the E-step, ``A.T @ posteriors`` for the M-step), so
there is no Python loop over answers, items or workers.  From 200,000 answers on, the
per-item arrays are float32 (sums over items stay float64), the items are split into
blocks that run on threads (options ``precision`` and ``threads``), and every third EM step
is a SQUAREM extrapolation of the parameters (option ``accelerate``; its stopping test is
stricter than plain EM's, see ``_em``).

Soft answers (a probability vector per answer, columns ``prob_<class>``, e.g. from a
model) enter the Dawid-Skene family as the observation *(argmax class, confidence
bin)*, the bin being the answer's confidence quartile among its own worker's answers.
Each worker's confusion matrix then has K x 4K cells and learns, without any truth,
how often that model is right when it is very sure versus barely sure: a per-model
calibration inside the fusion.  (Fractional counts, the obvious alternative, flatten
the confusion rows until EM settles at near-uniform posteriors.)

Methods
-------
``mv``        majority vote over hard labels (soft answers vote with their argmax);
              posteriors are vote shares; ties go to the first class in ``classes``.
``weighted``  weighted vote: each answer adds ``weight * p`` (soft vote / linear pool).
``ds``        Dawid-Skene (1979) EM with a per-worker confusion matrix under a Dirichlet
              prior that leans to the diagonal (``ds_diag`` on the diagonal, ``ds_alpha``
              elsewhere, per row) and a Dirichlet(``class_alpha``) class prior (MAP
              estimates), initialised from the weighted vote; stops when crowd-kit's
              ELBO-per-answer improves by less than ``tol``.
``one_coin``  Dawid-Skene with one accuracy per worker (errors spread uniformly);
              soft answers count as their argmax.
``loglinear`` logarithmic opinion pool: per item, the weighted geometric mean of the
              answers' probability vectors; a worker's weight is the log-odds of its
              leave-one-out agreement with the others.  Weights sum to one per item.
``auto``      ``ds`` with hierarchical confusion priors: each worker's confusion row is
              shrunk towards the pooled confusion matrix of all workers with
              ``prior_strength`` pseudo-answers on top of the diagonal-leaning prior.
              Works for humans, models (soft answers) and both mixed.  The prior values
              were chosen on the ``dog`` crowd set only (see benchmarks/aggregation.py);
              there the best shrinkage was 0, so by default auto equals ``ds``.  For sparse
              crowds (a few dozen answers per worker) pass ``prior_strength="eb"``: the
              strength is then estimated per class by maximising the Dirichlet-multinomial
              evidence of the workers' counts, which keeps DS from over-fitting each worker.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import beta as beta_dist

try:  # installed with scikit-learn
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover
    ThreadpoolController = None
_BLAS: Any = None


def _single_thread_blas():
    """Our BLAS calls are (n, K<=~20) matrix-vector products: threads only add sync cost,
    and on a busy machine a 2-thread OpenBLAS made the 1M-answer EM 4x slower.  (The EM
    runs its own threads over blocks of items instead.)  The controller is made once:
    finding the loaded BLAS libraries costs milliseconds."""
    global _BLAS
    if ThreadpoolController is None:  # pragma: no cover
        return nullcontext()
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


METHODS = ("auto", "mv", "weighted", "ds", "one_coin", "loglinear")

# Fixed defaults: the prior values were chosen on the dog crowd set only, never on product
# (see benchmarks/aggregation.py and benchmarks/RESULTS-aggregation.md).
DEFAULTS: dict[str, Any] = {
    "max_iter": 100,  # EM iteration cap (same as crowd-kit's benchmarks)
    "tol": 1e-5,  # stop when the evidence lower bound per answer improves less than this
    "ds_alpha": 0.1,  # Dirichlet pseudo-count per off-diagonal confusion cell
    "ds_diag": 0.5,  # Dirichlet pseudo-count on the diagonal: workers start better than chance,
    # so a one-answer worker's answer stays evidence and a class nobody chose stays unlikely
    # auto: pseudo-answers per confusion row drawn from the pooled matrix of all workers, or
    # "eb" to estimate it per class from the data (type-II ML); 0 was best on dog, the tuning set
    "prior_strength": 0.0,
    "class_alpha": 1.0,  # Dirichlet pseudo-count per class on the class prior
    "soft_bins": 4,  # DS family: a soft answer is (argmax, confidence quartile within its worker)
    "loglinear_iter": 5,
    "prob_floor": 1e-6,  # floor on model probabilities before taking logs
    "interval": 0.95,  # reliability interval mass
    # Dawid-Skene EM on large inputs (>= 200,000 answers): "auto" threads = the CPUs this
    # process may use (at most 4), else 1; "auto" precision = float32 per-item arrays with
    # float64 sums (see _work_dtype), "double" forces float64 everywhere
    "threads": "auto",
    "precision": "auto",
    # SQUAREM extrapolation between EM steps: "auto" = on from 200,000 answers (fewer E-steps
    # to the same stopping test), True / False to force it
    "accelerate": "auto",
}
_FAST_MIN_NNZ = 200_000
# answers per block of the large-input EM: the blocks, hence every partial sum, do not depend
# on the number of threads, so 1, 2 or 4 threads give bit-identical results
_BLOCK_NNZ = 250_000
# rows per group in the E-step's per-class multiply (one numpy inner loop of this many x K values)
_GROUP_ROWS = 64


@dataclass
class AggregationResult:
    """Everything an aggregation produced: item posteriors, worker reliability, fit info."""

    items: pd.DataFrame
    workers: pd.DataFrame
    method: str
    iterations: int
    converged: bool
    classes: list
    class_prior: pd.Series
    confusion: np.ndarray | None = None  # (n_workers, K, K): row = true class, col = answered
    log_likelihood: float | None = None
    n_missing_answers: int = 0
    n_anonymous_answers: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class _Encoded:
    classes: list
    item_ids: pd.Index
    worker_ids: pd.Index  # named workers only
    n_workers: int  # named + one anonymous worker per answer without worker_id
    # per entry (one per hard answer, one per non-zero class of a soft answer)
    e_item: np.ndarray
    e_worker: np.ndarray
    e_label: np.ndarray
    e_p: np.ndarray  # probability mass of this class in the answer (1 for hard)
    e_weight: np.ndarray  # the answer's weight
    # per answered row
    a_item: np.ndarray
    a_worker: np.ndarray
    a_weight: np.ndarray
    a_soft: np.ndarray  # bool
    a_hard_label: np.ndarray  # argmax class for soft answers
    a_conf: np.ndarray  # max probability for soft answers, 1 for hard ones
    a_probs: np.ndarray | None  # (n_answered, K) only built for loglinear
    n_missing: int
    n_anonymous: int
    unit: bool = False  # every entry is a hard answer with weight 1


# ----------------------------------------------------------------------------- input


def _label_classes(values: pd.Series, small: Any = False) -> list:
    """Distinct labels, with integral floats (ints that met a NaN) turned back into ints.
    ``small``: ``_small_int_range(values)`` when the caller has it already."""
    small = _small_int_range(values) if small is False else small
    if small is not None:  # integer codes: a bincount instead of hashing every answer
        lo, _, v = small
        return [int(c) for c in np.flatnonzero(np.bincount(v - lo if lo else v)) + lo]
    uniq = pd.unique(values.dropna())
    if len(uniq) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in uniq):
        arr = np.asarray(uniq, dtype=float)
        if np.all(arr == np.round(arr)):
            return [int(v) for v in arr]
        return [float(v) for v in arr]
    return list(uniq)


def _sorted_classes(values: Iterable) -> list:
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


def _suffix_value(suffix: str, numeric: bool) -> Any:
    if numeric:
        try:
            return int(suffix)
        except ValueError:
            return suffix
    return suffix


def _small_int_range(values: pd.Series) -> tuple[int, int, np.ndarray] | None:
    """(minimum, maximum, values) when the column is a plain integer array spanning < 2**20 values."""
    if values.dtype.kind not in "iu" or not len(values):
        return None
    v = values.to_numpy()
    lo, hi = int(v.min()), int(v.max())
    return (lo, hi, v) if hi - lo < 2**20 else None


def _encode_labels(labels: pd.Series, classes: list, small: Any = False) -> np.ndarray:
    """Class index per label (-1 for NaN); raise naming the rows whose label is not a class.
    ``small``: ``_small_int_range(labels)`` when the caller has it already."""
    small = _small_int_range(labels) if small is False else small
    if small is not None and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
        lo, hi, v = small
        span = hi - lo + 1
        lut = np.full(span, -1, dtype=np.int64)  # label value - lo -> class index
        for j, c in enumerate(classes):
            if 0 <= int(c) - lo < span:
                lut[int(c) - lo] = j
        if lo == 0 and (lut == np.arange(span)).all():  # labels 0..K-1 are their own codes
            return v.astype(np.int64, copy=False)  # may be a view of the column: never written to
        codes = lut[v - lo if lo else v]
        if not (codes < 0).any():
            return codes
        # else fall through: the general path names the offending rows
    codes = np.full(len(labels), -1, dtype=np.int64)
    present = labels.notna().to_numpy()
    if not present.any():
        return codes
    vals = labels[present]
    idx = pd.Index(classes)
    got = idx.get_indexer(vals.to_numpy(dtype=object) if vals.dtype == object else vals.to_numpy())
    if (got < 0).any():  # fall back to matching by text: "1" == 1, 1.0 == 1
        def norm(v: Any) -> str:
            if isinstance(v, (float, np.floating)) and float(v).is_integer():
                return str(int(v))
            return str(v)

        text_idx = pd.Index([norm(c) for c in classes])
        got2 = text_idx.get_indexer([norm(v) for v in vals.to_numpy(dtype=object)])
        got = np.where(got < 0, got2, got)
    if (got < 0).any():
        bad_pos = np.flatnonzero(present)[got < 0]
        bad_vals = pd.unique(labels.iloc[bad_pos])[:5]
        raise ValueError(
            f"answers: column 'label' has values not in classes {classes!r}: "
            f"{list(bad_vals)!r} (first rows {list(labels.index[bad_pos[:5]])!r}); "
            "add them to `classes` or fix those rows"
        )
    codes[present] = got
    return codes


def _rows(mask: np.ndarray) -> np.ndarray | slice:
    """Row selector for a mask: a slice (a view, no copy) when every row is selected."""
    return slice(None) if mask.all() else np.flatnonzero(mask)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _factorize_ids(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes (int64, -1 where missing) and uniques of an id column; uniques sorted when the ids sort.

    Same result as ``pd.factorize(col, sort=True)``.  Fast path for Arrow-backed strings
    (pandas' default string dtype) whose equal ids come in runs, as answers grouped by item
    do: only one id per run is hashed, and none when the runs are already in sorted order.
    """
    arr = _arrow_strings(col) if len(col) > 1 else None
    if arr is not None:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(arr)
        probe = min(n, 4096)  # cheap look at the head first: ids in random order skip the full check
        head = arr.slice(0, probe)
        head_changes = pc.sum(pc.fill_null(pc.not_equal(head.slice(1), head.slice(0, probe - 1)), True)).as_py() or 0
        if head_changes >= probe // 2:
            return _arrow_factorize_sorted(arr, col.dtype)
        fixed = _fixed_width_keys(arr)
        if fixed is not None:  # compare integers, not strings
            keys, w = fixed
            change = keys[1:] != keys[:-1]
        else:
            change = pc.fill_null(pc.not_equal(arr.slice(1), arr.slice(0, n - 1)), True).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.concatenate([[True], change]))
        if len(starts) <= n // 2:
            lengths = np.diff(np.append(starts, n))
            if fixed is not None:  # byte order is string order: compare the keys read big-endian
                ordered = keys[starts].byteswap() >> np.uint64(8 * (8 - w))
                ascending = bool((ordered[1:] > ordered[:-1]).all())
            else:
                heads = arr.take(pa.array(starts))
                ascending = heads.null_count == 0 and (
                    len(heads) == 1 or bool(pc.all(pc.less(heads.slice(0, len(heads) - 1), heads.slice(1))).as_py())
                )
            if ascending:  # every run a new id, in order
                return np.repeat(np.arange(len(starts), dtype=np.int64), lengths), pd.Index(col.array.take(starts))
            codes, uniques = _arrow_factorize_sorted(arr.take(pa.array(starts)), col.dtype)
            return np.repeat(codes, lengths), uniques
        return _arrow_factorize_sorted(arr, col.dtype)
    return _factorize_sorted(col)


def _arrow_factorize_sorted(arr: Any, dtype: Any) -> tuple[np.ndarray, pd.Index]:
    """pd.factorize(sort=True) for a pyarrow string array: Arrow's hash encoding (faster than
    pandas' on Arrow strings), then only the distinct values are sorted and the codes remapped."""
    import pyarrow.compute as pc

    encoded = _fixed_width_encode(arr)
    if encoded is None:
        encoded = pc.dictionary_encode(arr)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    if not encoded.indices.null_count:  # int32 indices, read in place: one gather makes the codes
        codes = rank[encoded.indices.to_numpy()]
    else:
        raw = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        codes = np.where(raw >= 0, rank[raw], -1)
    return codes, pd.Index(pd.array(encoded.dictionary.take(order), dtype=dtype))


def _fixed_width_keys(arr: Any) -> tuple[np.ndarray, int] | None:
    """(one 64-bit integer per string, the byte width) for a string array without nulls whose
    strings all have the same length of 1-8 bytes (ids like "w0042"), else None.

    Each integer is the string's bytes read little-endian: a strided view of the Arrow data
    buffer, masked to the width, so no string is touched one by one.  Equal strings give
    equal integers and different strings different ones.
    """
    import pyarrow as pa

    n = len(arr)
    if n == 0 or arr.null_count:
        return None
    _, off_buf, data_buf = arr.buffers()
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    offsets = np.frombuffer(off_buf, dtype=off_type, count=n + 1, offset=arr.offset * np.dtype(off_type).itemsize)
    w = int(offsets[1] - offsets[0])
    if not 1 <= w <= 8 or int(offsets[-1] - offsets[0]) != n * w or not (np.diff(offsets) == w).all():
        return None
    o = int(offsets[0])
    keys = np.empty(n, dtype=np.uint64)
    m = min(n, max((data_buf.size - o - 8) // w + 1, 0))  # strings with 8 readable bytes from their start
    if m:
        view = np.ndarray(shape=(m,), dtype="<u8", buffer=data_buf, offset=o, strides=(w,))
        np.bitwise_and(view, np.uint64((1 << (8 * w)) - 1), out=keys[:m])
    if m < n:  # the last few strings, where 8 bytes would read past the buffer
        tail = np.zeros((n - m, 8), dtype=np.uint8)
        tail[:, :w] = np.frombuffer(data_buf, dtype=np.uint8, count=(n - m) * w, offset=o + m * w).reshape(n - m, w)
        keys[m:] = tail.view("<u8").ravel()
    return keys, w


def _fixed_width_encode(arr: Any) -> Any:
    """Arrow's dictionary encoding of a string array whose strings all have the same length of
    1-8 bytes, computed by hashing their integer keys (``_fixed_width_keys``), or None for any
    other array.  Integers hash several times faster than strings: 1M worker ids take ~7 ms
    instead of ~18 ms.  The dictionary is rebuilt as strings from the distinct integers'
    bytes, so the result equals ``pc.dictionary_encode(arr)``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    fixed = _fixed_width_keys(arr)
    if fixed is None:
        return None
    keys, w = fixed
    encoded = pc.dictionary_encode(pa.array(keys))
    distinct = encoded.dictionary.to_numpy()
    k = len(distinct)
    raw = np.ascontiguousarray(distinct.astype("<u8").view(np.uint8).reshape(k, 8)[:, :w])
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    strings = pa.Array.from_buffers(
        arr.type, k, [None, pa.py_buffer(np.arange(0, (k + 1) * w, w, dtype=off_type)), pa.py_buffer(raw)]
    )
    return pa.DictionaryArray.from_arrays(encoded.indices, strings)


def _factorize_sorted(values: Any) -> tuple[np.ndarray, pd.Index]:
    try:
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # ids of mixed types that do not sort
        codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


def _arrow_strings(col: pd.Series):
    """The column as one pyarrow string array when it is Arrow-backed, else None."""
    if not hasattr(col.array, "__arrow_array__"):
        return None
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pandas' string dtype brings pyarrow
        return None
    arr = pa.array(col.array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) else None


def _encode(answers: pd.DataFrame, classes: Iterable | None, need_probs: bool = False) -> _Encoded:
    if not isinstance(answers, pd.DataFrame):
        raise TypeError(f"answers must be a pandas DataFrame, got {type(answers).__name__}")
    missing_cols = [c for c in ("item_id", "worker_id") if c not in answers.columns]
    prob_cols = [c for c in answers.columns if isinstance(c, str) and c.startswith("prob_")]
    if missing_cols:
        raise ValueError(f"answers: missing column(s) {missing_cols}; expected item_id, worker_id, label")
    if "label" not in answers.columns and not prob_cols:
        raise ValueError("answers: need a 'label' column or 'prob_<class>' columns")
    labels = answers["label"] if "label" in answers.columns else pd.Series(np.nan, index=answers.index)
    w_future = None
    if len(answers) >= _FAST_MIN_NNZ:  # hash the worker ids on a second thread meanwhile
        pool = ThreadPoolExecutor(1)
        w_future = pool.submit(_factorize_ids, answers["worker_id"])
        pool.shutdown(wait=False)  # the submitted job still runs; nothing else can be queued

    small = _small_int_range(labels)  # integer labels: their range, found once
    if classes is None:
        label_cls = _label_classes(labels, small)
        numeric = all(isinstance(c, (int, float)) for c in label_cls)
        prob_cls = [_suffix_value(c[5:], numeric) for c in prob_cols]
        classes = _sorted_classes(label_cls + prob_cls)
    else:
        classes = list(classes)
        if len(set(map(str, classes))) != len(classes):
            raise ValueError(f"classes must be distinct, got {classes!r}")
    if not classes:
        raise ValueError("answers: no labels and no classes given; pass classes=[...]")
    K = len(classes)
    class_text = {str(c): j for j, c in enumerate(classes)}

    item_raw = answers["item_id"]
    if item_raw.isna().any():
        bad = list(answers.index[item_raw.isna().to_numpy()][:5])
        raise ValueError(f"answers: item_id is missing in rows {bad}; every answer needs an item_id")
    item_codes, item_ids = _factorize_ids(item_raw)
    n = len(answers)

    if "weight" in answers.columns:
        weight = pd.to_numeric(answers["weight"], errors="coerce").to_numpy(dtype=float)
        weight = np.where(np.isnan(weight), 1.0, weight)
        if (weight < 0).any():
            bad = list(answers.index[weight < 0][:5])
            raise ValueError(f"answers: negative weight in rows {bad}; weights must be >= 0")
    else:
        weight = np.ones(n)
    has_unit_weight = "weight" not in answers.columns or bool((weight == 1.0).all())

    # soft answers
    soft = np.zeros(n, dtype=bool)
    P = None
    if prob_cols:
        col_idx = []
        for c in prob_cols:
            j = class_text.get(c[5:])
            if j is None:
                raise ValueError(f"answers: column {c!r} names a class not in classes {classes!r}")
            col_idx.append(j)
        raw = answers[prob_cols].to_numpy(dtype=float)
        soft = ~np.isnan(raw).all(axis=1)
        raw = np.nan_to_num(raw, nan=0.0)
        if (raw < 0).any():
            bad = list(answers.index[(raw < 0).any(axis=1)][:5])
            raise ValueError(f"answers: negative probability in rows {bad}")
        P = np.zeros((n, K))
        P[:, col_idx] = raw
        tot = P.sum(axis=1)
        soft &= tot > 0
        P[soft] /= tot[soft, None]

    need_label = ~soft
    if need_label.all():  # the common all-hard case: no masking copies of 1M-row columns
        label_codes = _encode_labels(labels, classes, small)
    else:
        label_codes = np.full(n, -1, dtype=np.int64)
        if need_label.any():
            label_codes[need_label] = _encode_labels(labels[need_label], classes)
    hard = need_label & (label_codes >= 0)
    answered = hard | soft
    n_missing = int((~answered).sum())

    w_codes, worker_ids = w_future.result() if w_future is not None else _factorize_ids(answers["worker_id"])
    # answers without worker_id: each is its own anonymous worker (an unknown person)
    anon = w_codes < 0
    n_named = len(worker_ids)
    n_anon = int(anon.sum())
    if n_anon:
        w_codes[anon] = n_named + np.arange(n_anon)
    n_workers = n_named + n_anon

    if P is not None and soft.any():  # (all-hard label codes may be a read-only view of the column)
        label_codes[soft] = P[soft].argmax(axis=1)

    # entries: hard answers give one, soft answers one per non-zero class
    h = _rows(hard)
    e_item = [item_codes[h]]
    e_worker = [w_codes[h]]
    e_label = [label_codes[h]]
    e_p = [np.broadcast_to(np.float64(1.0), len(e_item[0]))]  # read-only ones, no 8 MB per 1M answers
    e_weight = [weight[h]]
    if P is not None and soft.any():
        s = np.flatnonzero(soft)
        Ps = P[s]
        r, c = np.nonzero(Ps)
        e_item.append(item_codes[s][r])
        e_worker.append(w_codes[s][r])
        e_label.append(c.astype(np.int64))
        e_p.append(Ps[r, c])
        e_weight.append(weight[s][r])

    a = _rows(answered)
    a_probs = None
    if need_probs:
        a_probs = np.zeros((len(item_codes[a]), K))
        if P is not None:
            a_probs[:] = P[a]
        hard_a = hard[a]
        a_probs[np.flatnonzero(hard_a), label_codes[a][hard_a]] = 1.0

    return _Encoded(
        classes=classes,
        item_ids=pd.Index(item_ids, name="item_id"),
        worker_ids=pd.Index(worker_ids, name="worker_id"),
        n_workers=n_workers,
        e_item=_cat(e_item),
        e_worker=_cat(e_worker),
        e_label=_cat(e_label),
        e_p=_cat(e_p),
        e_weight=_cat(e_weight),
        a_item=item_codes[a],
        a_worker=w_codes[a],
        a_weight=weight[a],
        a_soft=soft[a],
        a_hard_label=label_codes[a],
        a_conf=(P.max(axis=1)[a] if P is not None else np.broadcast_to(np.float64(1.0), len(item_codes[a]))),
        a_probs=a_probs,
        n_missing=n_missing,
        n_anonymous=n_anon,
        unit=bool(not soft.any() and has_unit_weight),
    )


# ----------------------------------------------------------------------------- helpers


def _softmax_rows(L: np.ndarray) -> np.ndarray:
    L = L - L.max(axis=1, keepdims=True)
    np.exp(L, out=L)
    L /= L.sum(axis=1, keepdims=True)
    return L


def _vote_counts(enc: _Encoded, K: int, n_items: int, mass: np.ndarray | None, labels: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(items, K) vote mass; mass None means one vote per entry (skips a 1M-float multiply)."""
    return np.bincount(items * K + labels, weights=mass, minlength=n_items * K).reshape(n_items, K)


def _entry_mass(enc: _Encoded) -> np.ndarray | None:
    """Per-entry p * weight, or None when every entry is a hard answer of weight 1."""
    if enc.unit:
        return None
    return enc.e_p * enc.e_weight


def _normalise_votes(V: np.ndarray) -> np.ndarray:
    V = V.astype(float, copy=False)
    K = V.shape[1]
    tot = V @ np.ones(K)  # a BLAS product: numpy's axis=1 sum on (n, K) is several times slower
    if tot.all():
        return V / tot[:, None]
    return np.divide(V, tot[:, None], out=np.full_like(V, 1.0 / K), where=tot[:, None] > 0)


def _confidence_bins(enc: _Encoded, n_bins: int) -> np.ndarray:
    """Per answer, its confidence bin among its own worker's soft answers (0 = least sure).

    Bin edges are each worker's confidence quantiles, so a model that is always 0.99 sure
    and one that is always 0.6 sure both spread over the bins; what a bin *means* for the
    true class is then learned per worker in its confusion matrix.  Hard answers go to the
    top bin.  Ties go to the lower bin, so the result does not depend on row order.
    """
    bins = np.full(len(enc.a_item), n_bins - 1, dtype=np.int64)
    soft_rows = np.flatnonzero(enc.a_soft)
    if n_bins <= 1 or not len(soft_rows):
        return bins
    w = enc.a_worker[soft_rows]
    c = enc.a_conf[soft_rows]
    order = np.lexsort((c, w))
    cs = c[order]
    counts = np.bincount(w, minlength=enc.n_workers)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    q = np.arange(1, n_bins) / n_bins
    pos = starts[:, None] + np.floor(counts[:, None] * q).astype(np.int64)
    pos = np.clip(pos, 0, len(cs) - 1)
    thresholds = cs[pos]  # (workers, n_bins - 1); rows of workers without soft answers are unused
    bins[soft_rows] = (c[:, None] > thresholds[w]).sum(axis=1)
    return bins


def _design_matrix(
    item: np.ndarray, worker: np.ndarray, obs: np.ndarray, mass: np.ndarray, n_items: int, n_workers: int, n_obs: int
) -> sparse.csr_matrix:
    """A[i, worker*J + obs] = weighted mass of that observation for item i (CSR, rows = items).

    Answers already in item order (the usual export) need only their row lengths; repeated
    (item, worker, observation) entries then stay separate non-zeros, which products treat as
    their sum.  Answers in any other order go through scipy's COO -> CSR conversion, a counting
    sort in C (a numpy argsort of 1M shuffled answers took ~150 ms, the conversion ~50 ms),
    which sums the repeated entries.
    """
    n_cols = n_workers * n_obs
    index_dtype = np.int32 if n_cols < 2**31 and len(item) < 2**31 else np.int64
    cols = worker.astype(index_dtype)  # column = worker * n_obs + obs, in the index type
    cols *= n_obs
    cols += obs
    if len(item) > 1 and np.any(item[1:] < item[:-1]):
        return sparse.coo_matrix((mass, (item, cols)), shape=(n_items, n_cols)).tocsr()
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(item, minlength=n_items), out=indptr[1:])
    return sparse.csr_matrix((mass, cols, indptr.astype(index_dtype, copy=False)), shape=(n_items, n_cols))


_EB_GRID = np.logspace(-1, 3, 29)


def _eb_strength(C: np.ndarray, pooled: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per true class, the shrinkage strength s maximising the Dirichlet-multinomial evidence.

    Type-II maximum likelihood over a log grid: each worker's expected counts C[w, k, :]
    are treated as draws from DirMult(s * pooled[k] + base); workers that agree with each
    other get a large s (strong pooling), workers that differ get a small one.
    """
    from scipy.special import gammaln

    n_wk = C.sum(axis=2)  # (W, K)
    a = _EB_GRID[:, None, None, None] * pooled[None, None] + (base if base.ndim == 3 else base[None])[None]  # (G, W|1, K, J)
    a0 = a.sum(axis=3)  # (G, W|1, K)
    ll = (gammaln(a0) - gammaln(a0 + n_wk[None])).sum(axis=1)  # (G, K)
    ll += (gammaln(a + C[None]) - gammaln(a)).sum(axis=(1, 3))
    return _EB_GRID[np.argmax(ll, axis=0)]


def _worker_threads(requested: Any) -> int:
    """Threads for the EM's blocks: the requested number or the CPUs this process may use (<= 4).
    Small inputs are one block (see _BlockedProducts), so they run inline whatever this says."""
    if requested not in (None, "auto"):
        n = int(requested)
        if n < 1:
            raise ValueError(f"threads must be >= 1 or 'auto', got {requested!r}")
        return n
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _work_dtype(A: sparse.csr_matrix, requested: str, heaviest_worker: int | None = None) -> type:
    """float32 for the per-item arrays of large inputs, float64 otherwise.

    Single precision halves the memory the sparse products stream through; the sums that
    decide convergence (evidence, counts per worker) are taken in float64 from per-column
    partial sums.  It is only used when no (worker, observation) column has more than
    2**16 answers, so each float32 partial sum adds at most 65,536 numbers in [0, 1].
    """
    if requested not in ("auto", "double", "single"):
        raise ValueError(f"precision must be 'auto', 'double' or 'single', got {requested!r}")
    if requested == "double" or A.nnz == 0:
        return np.float64
    if requested == "auto" and A.nnz < _FAST_MIN_NNZ:
        return np.float64
    if A.nnz <= 2**16 or (heaviest_worker is not None and heaviest_worker <= 2**16):
        return np.float32  # a column holds a subset of one worker's answers
    heaviest = getattr(A, "heaviest_column", None)  # partitioned answers count it while encoding
    if heaviest is None:
        heaviest = int(np.bincount(A.indices, minlength=A.shape[1]).max())
    return np.float32 if heaviest <= 2**16 else np.float64


def _row_blocks(A: sparse.csr_matrix, n_blocks: int) -> list[tuple[int, int, sparse.csr_matrix]]:
    """Split A's rows into contiguous blocks of about equal non-zeros; each block's data and
    indices are views of A's arrays (no copy of the answers)."""
    n = A.shape[0]
    if n_blocks <= 1 or n < 2 * n_blocks:
        return [(0, n, A)]
    cuts = np.searchsorted(A.indptr, np.linspace(0, A.nnz, n_blocks + 1)[1:-1])
    bounds = sorted({0, n, *(int(c) for c in cuts)})
    blocks = []
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        s, e = int(A.indptr[r0]), int(A.indptr[r1])
        B = sparse.csr_matrix(
            (A.data[s:e], A.indices[s:e], A.indptr[r0 : r1 + 1] - A.indptr[r0]), shape=(r1 - r0, A.shape[1])
        )
        blocks.append((r0, r1, B))
    return blocks


def _accelerate(A: sparse.csr_matrix, requested: Any) -> bool:
    """Whether the EM extrapolates (SQUAREM): by default from ``_FAST_MIN_NNZ`` answers on."""
    if requested == "auto":
        return A.nnz >= _FAST_MIN_NNZ
    if isinstance(requested, (bool, np.bool_)):
        return bool(requested)
    raise ValueError(f"accelerate must be 'auto', True or False, got {requested!r}")


def _log_rho_sum(rho: np.ndarray, log_rho: np.ndarray) -> np.ndarray:
    """log rho for sums weighted by posterior mass: 0 where rho is 0, since such a class has
    no posterior mass anywhere (its terms are 0, not 0 * -inf)."""
    return np.where(rho > 0, log_rho, 0.0)


def _squarem_point(chain: list, n_workers: int, J: int, K: int) -> tuple:
    """SQUAREM's extrapolated parameters (Varadhan & Roland 2008, scheme S3) from three
    parameter sets linked by two EM steps, in the log domain, renormalised.

    With r = t1 - t0 and v = t2 - 2 t1 + t0, the step is t0 - 2 a r + a^2 v with
    a = -|r| / |v|, at most -1 (a = -1 gives t2, the plain EM result).  The confusion
    matrices and the class prior get a step length each: the prior converges more slowly
    (on the speed benchmark one step length for both left it drifting, and the stopping test
    waiting for it).  The caller keeps the point only if its log-likelihood is not below that
    of t1, else it continues from t2.
    """
    (_, _, lp0, lr0, _), (_, _, lp1, lr1, _), (_, _, lp2, lr2, _) = chain
    # a class with prior 0 has log prior -inf in every set: it stays out of the step
    ok = np.isfinite(lr0) & np.isfinite(lr1) & np.isfinite(lr2)

    def step(x0: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        r, v = x1 - x0, x2 - 2.0 * x1 + x0
        rr, vv = float(np.vdot(r, r)), float(np.vdot(v, v))
        if not (vv > 0.0 and np.isfinite(rr) and np.isfinite(vv)):
            return x2
        a = min(-np.sqrt(rr / vv), -1.0)
        return x0 - 2.0 * a * r + a * a * v

    lp3 = step(lp0, lp1, lp2).reshape(n_workers, J, K)
    lr = np.full(K, -np.inf)
    if ok.any():
        lr[ok] = step(lr0[ok], lr1[ok], lr2[ok])
        lr[ok] -= np.logaddexp.reduce(lr[ok])
    # renormalise: pi[w, k, :] sums to 1 over the observations j (logpi rows are (w, j) x k)
    top = lp3.max(axis=1, keepdims=True)
    lp3 = lp3 - (top + np.log(np.exp(lp3 - top).sum(axis=1, keepdims=True)))
    lp = np.ascontiguousarray(lp3.reshape(n_workers * J, K))
    pi = np.exp(lp3).transpose(0, 2, 1)
    rho = np.exp(lr)
    return pi, rho, lp, lr, _log_rho_sum(rho, lr)


class _BlockedProducts:
    """The EM's per-item work, split into row blocks that run on a thread pool.

    scipy's sparse products and numpy's element-wise functions release the GIL, so the
    blocks run in parallel; each iteration has one hand-off (the E-step of a block, then
    that block's share of the next M-step counts).  Inputs below ``_FAST_MIN_NNZ`` are one
    block, run inline; larger ones are cut every ``_BLOCK_NNZ`` answers whatever the number
    of threads.  Per-item arrays are in ``dtype``; sums over items come back in float64.
    """

    def __init__(self, A: sparse.csr_matrix | None, K: int, n_threads: int, dtype: type,
                 blocks: list | None = None, item_mass: np.ndarray | None = None):
        self.K = K
        self.dtype = dtype
        if blocks is not None:  # given blocks (partitions): (first row, end row, matrix or loader)
            self.blocks, self.item_mass = blocks, item_mass
        else:
            if A.dtype != dtype:
                A = sparse.csr_matrix((A.data.astype(dtype), A.indices, A.indptr), shape=A.shape)
            n_blocks = 1 if A.nnz < _FAST_MIN_NNZ else -(-A.nnz // _BLOCK_NNZ)
            self.blocks = _row_blocks(A, n_blocks)
            if (A.data == 1.0).all():  # one unit answer per non-zero: the mass is the row length
                self.item_mass = np.diff(A.indptr).astype(float)
            else:
                self.item_mass = np.asarray(A.sum(axis=1, dtype=np.float64)).ravel()
        # the answers' mass per (worker, observation) column, for the E-step's shifts; set by
        # counts(): A.T @ T summed over classes is exactly that when T's rows sum to 1
        self.column_mass: np.ndarray | None = None
        threads = min(n_threads, len(self.blocks))
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def map(self, fn, *arrays):
        """fn(block, *row-slices of arrays) for every block; results in block order."""
        def run(b):
            r0, r1, B = b
            if callable(B):  # a partition kept out of memory: read it for this pass only
                B = B(self.dtype)
            return fn(B, *(x[r0:r1] for x in arrays))

        if self.pool is None:
            return [run(b) for b in self.blocks]
        return list(self.pool.map(run, self.blocks))

    @staticmethod
    def _counts(B: sparse.csr_matrix, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This block's M-step statistics: B.T @ t and t's column sums, in float64."""
        return np.asarray(B.T @ t, dtype=np.float64), np.ones(t.shape[0]) @ t  # float64 @ float32 sums in float64

    def counts(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """M-step sufficient statistics: A.T @ T (worker-observation x class) and T's column sums.
        T's rows must sum to 1 (posteriors)."""
        parts = self.map(self._counts, T)
        counts = sum(p[0] for p in parts)
        if self.column_mass is None:
            self.column_mass = counts.sum(axis=1)
        return counts, sum(p[1] for p in parts)

    def entropy(self, T: np.ndarray) -> float:
        """Entropy of the posteriors, clipped at 1e-10 before the log as crowd-kit does."""
        def part(B, t):
            tc = np.clip(t, 1e-10, None)
            return -float((tc * np.log(tc)).sum(dtype=np.float64))

        return float(sum(self.map(part, T)))

    def e_step(self, T_out: np.ndarray, logpi: np.ndarray, log_rho: np.ndarray):
        """E-step for the parameters (log confusion rows, log class prior) into T_out; returns
        (sum of the per-item log normalisers, the next M-step counts, the next class sums).

        Softmax without a per-item maximum: each observation's row of log confusion values is
        shifted so that its largest entry is 0.  A shift per answer is the same for every
        class, so the posteriors do not change, and every entry of ``L = A @ shifted`` is
        <= 0: the exponential cannot overflow, and it can only underflow for an item whose
        every class is exp(-87)-unlikely at once (many contradicting answers), which is
        detected (normaliser below 1e-30) and redone with the row maximum subtracted.  The
        shifts' sum over all answers is one dot product with the answers per observation
        column.  This saves the passes that find and subtract a maximum per item, and numpy's
        float32 exp is several times faster than its float64 one on AVX2 machines.
        """
        K = self.K
        dt = self.dtype
        shift = logpi.max(axis=1)
        logpi_w = (logpi - shift[:, None]).astype(dt)
        assert self.column_mass is not None, "counts() runs first"
        lse_shift = float(self.column_mass @ shift)
        rho = np.exp(log_rho)
        # a class with prior exactly 0 (class_alpha=0): its exponent is -inf, so the prior is
        # added in the log domain instead (one more pass over the array)
        log_rho_add = None if (rho > 0).all() else log_rho
        if log_rho_add is not None:
            rho = np.ones(K)
        rho_w = rho.astype(dt)
        rho_tile = np.tile(rho_w, _GROUP_ROWS)

        def part(B, t_out):
            L = np.asarray(B @ logpi_w)
            if log_rho_add is not None:
                L += log_rho_add.astype(dt)
            np.exp(L, out=L)
            z = L @ rho_w  # the normaliser sum_k exp(L_k) * rho_k of every item
            lse = 0.0
            low = np.flatnonzero(z < 1e-30)
            if len(low):  # underflow: redo these items with their maximum subtracted, in float64
                Lb = np.asarray(B[low] @ logpi_w, dtype=np.float64)
                if log_rho_add is not None:
                    Lb += log_rho_add
                mb = Lb.max(axis=1)
                Lb = np.exp(Lb - mb[:, None])
                L[low] = Lb
                z[low] = Lb @ rho
                lse += float(mb.sum())
            # t_out = L * rho / z: the per-class factor on groups of rows (numpy's inner loop
            # over a row of only K values is slow), the per-item one on the transposed view
            np.multiply(L.T, (1.0 / z).astype(dt, copy=False), out=t_out.T, order="C")
            g = (t_out.shape[0] // _GROUP_ROWS) * _GROUP_ROWS
            head = t_out[:g].reshape(-1, _GROUP_ROWS * K)
            np.multiply(head, rho_tile, out=head)
            t_out[g:] *= rho_w
            lse += float(np.log(z).sum(dtype=np.float64))
            return (lse, *self._counts(B, t_out))

        parts = self.map(part, T_out)
        return lse_shift + sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)


def _em(
    A: sparse.csr_matrix,
    n_workers: int,
    K: int,
    T: np.ndarray,
    mode: str,
    opts: dict,
    n_bins: int = 1,
    used_bins: np.ndarray | None = None,
    heaviest_worker: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool, float, np.ndarray]:
    """EM for the Dawid-Skene family over observations j = answered class * n_bins + bin.

    Returns posteriors, confusion (W, K, K*n_bins) and class prior (the parameters whose
    E-step gave the posteriors), iterations (E-steps), converged, log-likelihood at those
    parameters and the counts A.T @ posteriors ((W*J, K), float64).  With n_bins = 1 this is
    textbook Dawid-Skene.  ``heaviest_worker`` (most answers of one worker) lets large inputs
    skip counting answers per column.

    Like crowd-kit's DawidSkene, the fit stops after the first E-step whose posteriors, with
    the parameters the M-step makes of them, raise crowd-kit's evidence bound per answer by
    less than ``tol`` over the previous posteriors.  With ``accelerate`` (SQUAREM, Varadhan &
    Roland 2008), two plain EM steps are followed by one from an extrapolated point; only
    plain steps are tested, and the test is stricter: the bound must move less than ``tol``
    either way and so must the log-likelihood per answer.
    """
    J = K * n_bins
    max_iter = int(opts["max_iter"])
    tol = float(opts["tol"])
    converged = False
    it = 0
    ll = float("nan")
    base = np.full((K, K), float(opts["ds_alpha"]))
    np.fill_diagonal(base, float(opts["ds_diag"]))
    idx = np.arange(K)
    if n_bins > 1:
        # spread each cell's pseudo-count over the bins the worker actually uses, so a worker
        # with hard answers only gets exactly the textbook prior
        assert used_bins is not None
        used_bins = used_bins.copy()
        used_bins[~used_bins.any(axis=1)] = True  # a worker with no usable answer: any bin
        share = used_bins / used_bins.sum(axis=1, keepdims=True)  # (W, B)
        base = base[None, :, :, None] * share[:, None, None, :]  # (W, K, K, B)
        base = base.reshape(n_workers, K, J)
    dtype = _work_dtype(A, opts.get("precision", "auto"), heaviest_worker)
    accelerate = _accelerate(A, opts.get("accelerate", "auto"))

    def m_step(counts: np.ndarray, class_sums: np.ndarray) -> tuple:
        """Parameters from the expected counts: (pi, rho, log pi as (W*J, K), log rho, log rho
        with 0 for classes of prior 0)."""
        C = counts.reshape(n_workers, J, K).transpose(0, 2, 1)  # (w, k, j): expected (true k, answered j) counts
        if mode == "one_coin":  # always called with n_bins == 1
            diag = np.einsum("wkk->w", C)
            nw = C.sum(axis=(1, 2))
            acc = (diag + 2.0) / (nw + 3.0)  # Beta(2,1) prior: workers start better than chance-ish
            pi = np.empty((n_workers, K, K))
            pi[:] = ((1.0 - acc) / max(K - 1, 1))[:, None, None]
            pi[:, idx, idx] = acc[:, None]
        else:
            if mode == "hier":
                pooled = C.sum(axis=0) + (base if base.ndim == 2 else base.mean(axis=0))
                pooled /= pooled.sum(axis=1, keepdims=True)
                if opts["prior_strength"] == "eb":
                    strength = _eb_strength(C, pooled, base)[None, :, None]
                else:
                    strength = float(opts["prior_strength"])
                alpha = strength * pooled[None] + base
            else:
                alpha = base
            num = C + alpha
            den = num.sum(axis=2, keepdims=True)
            # a row with no answers and no prior mass (all pseudo-counts 0): uniform
            pi = np.divide(num, den, out=np.full_like(num, 1.0 / J), where=den > 0)
        rho = class_sums + float(opts["class_alpha"])
        rho /= rho.sum()
        with np.errstate(divide="ignore"):  # a class with prior 0 (class_alpha=0) has log prior -inf
            log_rho = np.log(rho)
        # unused bins have pi = 0: nothing observes them, the floor only keeps 0 * log 0 at 0
        logpi = np.ascontiguousarray(np.log(np.maximum(pi, 1e-300)).transpose(0, 2, 1)).reshape(n_workers * J, K)
        return pi, rho, logpi, log_rho, _log_rho_sum(rho, log_rho)

    def quantity(counts: np.ndarray, entropy: float, par: tuple) -> float:
        """The stopping quantity: crowd-kit DawidSkene's evidence lower bound per answer, at
        (posteriors, the parameters the M-step makes of them); it counts the log class prior
        once per answer.  Using the same quantity makes `tol` mean the same in both libraries.
        sum_i T_i . (A @ logpi)_i = sum(counts * logpi), so no per-item product is needed."""
        _, _, logpi, _, log_rho_sum = par
        return (float(np.vdot(counts, logpi)) + float(counts.sum(axis=0) @ log_rho_sum) + entropy) / total_mass

    def e_step(par: tuple, into: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
        """Posteriors under par into `into`: (log-likelihood, counts, class sums, entropy)."""
        _, _, logpi, log_rho, log_rho_sum = par
        ll, counts, class_sums = work.e_step(into, logpi, log_rho)
        # H(softmax(L)) = sum(lse) - sum(T * L), with L = A @ logpi + log_rho per item
        return ll, counts, class_sums, ll - float(np.vdot(counts, logpi)) - float(class_sums @ log_rho_sum)

    # the per-item work: row blocks of one in-memory matrix, or partitions (factory.engine.partitioned)
    # that expose the same E-step / M-step statistics per block
    make = getattr(A, "products", None)
    work = make(K, _worker_threads(opts.get("threads")), dtype) if make else \
        _BlockedProducts(A, K, _worker_threads(opts.get("threads")), dtype)
    try:
        total_mass = max(float(work.item_mass.sum()), 1.0)
        T = np.array(T, dtype=dtype)  # owned, C-contiguous: the E-steps write into other buffers
        spare = [np.empty_like(T)]  # the E-step writes here while T is kept
        counts, class_sums = work.counts(T)
        par = m_step(counts, class_sums)
        g = quantity(counts, work.entropy(T), par)
        chain = [par]  # parameters linked by plain EM steps, for the extrapolation
        chain_ll: list[float] = []  # log-likelihood at each of them
        # EM: the state is the posteriors T and par = M-step(T).  The stopping test (as in
        # crowd-kit) needs a plain step: posteriors of M-step(old) against the old ones; an
        # extrapolated point is only compared with the plain step that follows it.  The
        # result is T with the parameters of the E-step that made it (`used`).
        used = par  # the parameters of the current posteriors' E-step
        ll_T = -np.inf  # and the log-likelihood that E-step found
        while it < max_iter:
            into = spare.pop()
            ll, new_counts, new_sums, entropy = e_step(par, into)
            it += 1
            new_par = m_step(new_counts, new_sums)
            new_g = quantity(new_counts, entropy, new_par)
            if len(chain) == 3:  # `par` was extrapolated from the chain
                if ll < chain_ll[1]:  # worse than the plain step it skipped: take that one
                    ll = chain_ll[1]  # T is still the posteriors of that step's parameters
                    spare.append(into)
                    par, chain = chain[2], [chain[2]]
                    continue
                spare.append(T)
                used, ll_T = par, ll
                T, counts, class_sums, par, g = into, new_counts, new_sums, new_par, new_g
                chain = [par]
                continue
            plain_gain = new_g - g
            spare.append(T)
            used = par
            T, counts, class_sums, par, g = into, new_counts, new_sums, new_par, new_g
            # crowd-kit stops as soon as its quantity does not rise by tol.  That quantity is
            # not what EM maximises: after an extrapolation it can fall, or barely move, for a
            # step far from convergence.  So the accelerated fit asks more: the quantity must
            # move by less than tol either way, and so must EM's own objective (the
            # log-likelihood per answer) over the same plain step
            ll_gain = (ll - ll_T) / total_mass
            ll_T = ll
            done = plain_gain < tol if not accelerate else abs(plain_gain) < tol and abs(ll_gain) < tol
            if done:  # as in crowd-kit: the posteriors that passed the test are the result
                converged = True
                break
            if accelerate:
                chain_ll = (chain_ll if len(chain) > 1 else []) + [ll]
                chain.append(par)
                if len(chain) == 3:
                    par = _squarem_point(chain, n_workers, J, K)
    finally:
        work.close()
    pi, rho = used[0], used[1]
    if T.dtype != np.float64:  # back to float64 rows that sum to 1 to double precision
        T = T.astype(np.float64)
        T /= (T @ np.ones(K))[:, None]  # a matrix-vector product: axis-1 sums over K values are slow
    return T, pi, rho, it, converged, ll, counts


def _loglinear(enc: _Encoded, K: int, n_items: int, opts: dict) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Weighted geometric mean of answer probability vectors; weights from leave-one-out agreement."""
    P = enc.a_probs
    assert P is not None
    floor = float(opts["prob_floor"])
    logP = np.log(np.clip(P, floor, None))
    item = enc.a_item
    wk = np.ones(enc.n_workers)
    n_iter = int(opts["loglinear_iter"])
    it = 0
    converged = False
    for it in range(1, n_iter + 1):
        w = wk[enc.a_worker] * enc.a_weight
        S = np.zeros((n_items, K))
        for k in range(K):  # loop over classes only
            S[:, k] = np.bincount(item, weights=w * logP[:, k], minlength=n_items)
        wsum = np.bincount(item, weights=w, minlength=n_items)
        # leave-one-out consensus for each answer
        rest = wsum[item] - w
        loo = S[item] - w[:, None] * logP
        ok = rest > 1e-12
        q = _softmax_rows(loo[ok] / rest[ok, None])
        agree = (q * P[ok]).sum(axis=1)
        succ = np.bincount(enc.a_worker[ok], weights=agree, minlength=enc.n_workers)
        cnt = np.bincount(enc.a_worker[ok], minlength=enc.n_workers)
        acc = (succ + 1.0) / (cnt + 2.0)  # Beta(1,1): a worker nobody can check keeps weight ~0.5-level
        acc = np.clip(acc, 1e-6, 1 - 1e-6)
        new = np.maximum(np.log(acc * max(K - 1, 1) / (1.0 - acc)), 0.05) if K > 1 else np.ones_like(acc)
        # workers never compared with anyone keep the average weight
        new = np.where(cnt > 0, new, new[cnt > 0].mean() if (cnt > 0).any() else 1.0)
        if np.max(np.abs(new - wk)) < 1e-4:
            wk = new
            converged = True
            break
        wk = new
    w = wk[enc.a_worker] * enc.a_weight
    S = np.zeros((n_items, K))
    for k in range(K):
        S[:, k] = np.bincount(item, weights=w * logP[:, k], minlength=n_items)
    wsum = np.bincount(item, weights=w, minlength=n_items)
    has = wsum > 0
    T = np.full((n_items, K), 1.0 / K)
    T[has] = _softmax_rows(S[has] / wsum[has, None])
    return T, wk, it, converged


def _choose_auto(enc: _Encoded, opts: dict) -> str:
    return "ds_hier"


# ----------------------------------------------------------------------------- public


def aggregate_full(
    answers: pd.DataFrame,
    method: str = "auto",
    classes: Iterable | None = None,
    **opts: Any,
) -> AggregationResult:
    """Aggregate answers into item posteriors and per-worker reliability (see module docstring).

    Args:
        answers: rows ``item_id, worker_id, label`` plus optional ``weight`` and
            ``prob_<class>`` columns (a probability vector per answer; when given,
            ``label`` may be NaN). Rows with neither a label nor probabilities count
            as missing answers; their items still get a (prior) posterior.
        method: one of ``METHODS``.
        classes: the class list and order; classes no one used get prior mass only.
        **opts: override ``DEFAULTS`` (max_iter, tol, ds_diag, ds_alpha, prior_strength,
            class_alpha, soft_bins, loglinear_iter, prob_floor, interval, threads, precision,
            accelerate).

    Returns:
        AggregationResult with ``items`` (index item_id; label, confidence,
        prob_<class>) and ``workers`` (index worker_id; reliability,
        reliability_low, reliability_high, n_answers[, confusion]).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **opts}
    need_probs = method == "loglinear"
    enc = _encode(answers, classes, need_probs=need_probs)
    K = len(enc.classes)
    n_items = len(enc.item_ids)
    chosen = _choose_auto(enc, o) if method == "auto" else method
    n_answers = np.bincount(enc.a_worker, minlength=enc.n_workers)  # answers per worker (named, then anonymous)
    if chosen != "loglinear":
        enc.a_probs = None  # free memory early

    iters, converged, ll = 0, True, None
    confusion = None
    fit_counts = None
    rho = None
    if chosen == "mv":
        T = _normalise_votes(_vote_counts(enc, K, n_items, None, enc.a_hard_label, enc.a_item))
    elif chosen == "weighted":
        T = _normalise_votes(_vote_counts(enc, K, n_items, _entry_mass(enc), enc.e_label, enc.e_item))
    elif chosen == "loglinear":
        T, _, iters, converged = _loglinear(enc, K, n_items, o)
    else:
        mode = {"ds": "ds", "ds_hier": "hier", "one_coin": "one_coin"}[chosen]
        # Soft answers enter as (argmax class, confidence bin) observations: fractional
        # counts flatten the confusion rows until EM settles at near-uniform posteriors.
        n_bins = int(o["soft_bins"]) if (mode != "one_coin" and enc.a_soft.any()) else 1
        bins = _confidence_bins(enc, n_bins)
        used = None
        if n_bins > 1:
            used = np.zeros((enc.n_workers, n_bins), dtype=bool)
            used[enc.a_worker, bins] = True
        A = _design_matrix(
            enc.a_item, enc.a_worker, enc.a_hard_label * n_bins + bins if n_bins > 1 else enc.a_hard_label, enc.a_weight,
            n_items, enc.n_workers, K * n_bins
        )
        T0 = _normalise_votes(_vote_counts(enc, K, n_items, _entry_mass(enc), enc.e_label, enc.e_item))
        if K == 1:
            T, iters, fit_counts = T0, 0, None
            confusion = np.ones((enc.n_workers, 1, 1))
            rho = np.ones(1)
        else:
            with _single_thread_blas():
                T, confusion, rho, iters, converged, ll, fit_counts = _em(
                    A, enc.n_workers, K, T0, mode, o, n_bins, used, int(n_answers.max(initial=0))
                )
            if n_bins > 1:  # report the class-by-class confusion, bins summed
                confusion = confusion.reshape(enc.n_workers, K, K, n_bins).sum(axis=3)
    if rho is None:
        rho = T.sum(axis=0) + float(o["class_alpha"])
        rho = rho / rho.sum()

    items = _items_frame(T, enc)
    # hard unit answers, one observation per class: A.T @ T from the last E-step already
    # holds each worker's agreement with the result (no second pass over the answers)
    agreement = None
    if chosen not in ("mv", "weighted", "loglinear") and enc.unit and fit_counts is not None and fit_counts.shape[0] == enc.n_workers * K:
        agreement = np.einsum("wll->w", fit_counts.reshape(enc.n_workers, K, K))
    workers = _workers_frame(T, enc, K, confusion, o, n_answers, agreement)
    n_named = len(enc.worker_ids)
    return AggregationResult(
        items=items,
        workers=workers,
        method=("ds" if chosen == "ds_hier" else chosen) if method != "auto" else f"auto:{'ds' if chosen == 'ds_hier' else chosen}",
        iterations=int(iters),
        converged=bool(converged),
        classes=list(enc.classes),
        class_prior=pd.Series(rho, index=[f"prob_{c}" for c in enc.classes], name="class_prior"),
        confusion=None if confusion is None else confusion[:n_named],
        log_likelihood=ll,
        n_missing_answers=enc.n_missing,
        n_anonymous_answers=enc.n_anonymous,
        options=o,
    )


def aggregate(
    answers: pd.DataFrame,
    method: str = "auto",
    classes: Iterable | None = None,
    **opts: Any,
) -> pd.DataFrame:
    """Aggregate answers into one row per item: label, confidence and prob_<class> columns."""
    return aggregate_full(answers, method=method, classes=classes, **opts).items


def _row_argmax(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmax, max) of every row; ties go to the first class, as with ``argmax``.  For a few
    classes a loop over the columns: numpy's axis-1 reductions over rows of ~5 values are
    several times slower than K whole-column passes."""
    n, K = T.shape
    if K > 16 or n == 0:
        best = T.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        return best, T[np.arange(n), best] if n else np.zeros(0)
    best = np.zeros(n, dtype=np.int64)
    top = T[:, 0].copy()
    for k in range(1, K):
        col = T[:, k]
        best[col > top] = k
        np.maximum(top, col, out=top)
    return best, top


def _items_frame(T: np.ndarray, enc: _Encoded) -> pd.DataFrame:
    classes = enc.classes
    best, top = _row_argmax(T)
    cls_arr = pd.Index(classes)
    columns = {"label": cls_arr.take(best).to_numpy() if len(best) else cls_arr[:0].to_numpy(), "confidence": top}
    columns.update({f"prob_{c}": T[:, k] for k, c in enumerate(classes)})
    return pd.DataFrame(columns, index=enc.item_ids)


def _workers_frame(
    T: np.ndarray,
    enc: _Encoded,
    K: int,
    confusion: np.ndarray | None,
    o: dict,
    n_answers: np.ndarray,
    agreement: np.ndarray | None = None,
) -> pd.DataFrame:
    """Reliability = Beta posterior of the share of a worker's answers that agree with the result."""
    n_named = len(enc.worker_ids)
    n_ans = n_answers[:n_named]
    if agreement is not None:  # unit answers: the mass of a worker's answers is their number
        succ = agreement[:n_named]
        tot = n_ans.astype(float)
    else:
        agree = T[enc.e_item, enc.e_label] if len(enc.e_item) else np.zeros(0)
        if not enc.unit:
            agree *= enc.e_p
        succ = np.bincount(enc.e_worker, weights=agree, minlength=enc.n_workers)[:n_named]
        tot = np.bincount(enc.e_worker, weights=None if enc.unit else enc.e_p, minlength=enc.n_workers)[:n_named]
    a = 1.0 + succ
    b = 1.0 + np.maximum(tot - succ, 0.0)
    tail = (1.0 - float(o["interval"])) / 2.0
    frame = pd.DataFrame(
        {
            "reliability": a / (a + b),
            "reliability_low": beta_dist.ppf(tail, a, b) if n_named else np.zeros(0),
            "reliability_high": beta_dist.ppf(1.0 - tail, a, b) if n_named else np.zeros(0),
            "n_answers": n_ans.astype(np.int64),
        },
        index=enc.worker_ids,
    )
    if confusion is not None:
        frame["confusion"] = pd.Series(list(confusion[:n_named]), index=enc.worker_ids, dtype=object)
    return frame

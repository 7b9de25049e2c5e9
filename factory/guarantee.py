"""Auto-accept with a guarantee: pick the confidence threshold from human-verified items so that the
error rate among auto-accepted items is at most epsilon with probability at least 1 - delta.

Method (Learn-then-Test with fixed-sequence testing, Angelopoulos et al. 2021): for every candidate
threshold t, H_t says "the error rate among items with confidence >= t exceeds epsilon".  Its p-value
comes from the exact binomial tail, i.e. H_t is rejected when the one-sided Clopper-Pearson upper bound
at level 1 - delta on the errors among the verified items above t is <= epsilon.  The candidates are
tested from the highest threshold down, each at level delta, and testing stops at the first one that is
not rejected; the family-wise error of this fixed sequence is <= delta, so the lowest rejected threshold
has true error <= epsilon with probability >= 1 - delta.  No threshold is certified when even the
first tested one fails: then nothing is auto-accepted (``threshold is None``).

The sequence starts at the highest candidate with at least ``max(n_min, ceil(0.1 * n))`` verified items
above it, where ``n_min = ceil(log(delta) / log(1 - epsilon))`` is the fewest on which zero errors can
certify epsilon and n is the sample size: one unlucky error among the first few dozen items would
otherwise stop the whole sequence.  That start depends only on the confidences and the sample size,
never on which items were wrong; with error falling as confidence rises it can only make the test more
conservative, and the simulation tests check the guarantee empirically.

What the sample must be: items verified by people, drawn at random (e.g. the audit sample) from the
same population the threshold will be applied to, with ``correct`` = machine label equals people's label.
Items sent to people because the machines disagreed are not a random sample of the high-confidence ones.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from factory.quality import clopper_pearson_upper

METHOD = "fixed-sequence testing of Clopper-Pearson upper bounds, high to low confidence (Learn-then-Test)"
DEFAULT_GRID = tuple(np.round(np.linspace(1.0, 0.0, 1001), 3).tolist())
_DEFAULT_GRID_DESC = np.array(sorted(set(DEFAULT_GRID), reverse=True))


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen auto-accept threshold, the bound that certifies it, and the sample it rests on."""

    threshold: float | None  # None: no threshold is certified, auto-accept nothing
    epsilon: float
    delta: float
    upper_bound: float | None  # Clopper-Pearson upper bound (level 1 - delta) on the error above threshold
    n_accepted: int  # verified items with confidence >= threshold
    errors_accepted: int
    n_sample: int  # verified items in the sample
    sample_sha256: str  # hash of the (confidence, correct) pairs, for provenance
    method: str = METHOD
    n_min: int = 0
    start_n: int = 0  # verified items above the first tested threshold
    tested: list[dict] = field(default_factory=list)  # every hypothesis tested, in order

    @property
    def accepts_any(self) -> bool:
        return self.threshold is not None

    def to_dict(self, with_tested: bool = False) -> dict:
        d = asdict(self)
        if not with_tested:
            d["tested"] = len(self.tested)
        return d


def sample_hash(confidence: np.ndarray, correct: np.ndarray) -> str:
    """sha256 over the sorted (confidence rounded to 1e-6, correct) pairs: the same sample, the same hash."""
    pairs = sorted(zip(np.round(confidence, 6).tolist(), correct.astype(int).tolist()))
    return hashlib.sha256(repr(pairs).encode()).hexdigest()


def choose_threshold(confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                     epsilon: float, delta: float, *,
                     candidates: Sequence[float] | None = None, min_accept: int | None = None) -> ThresholdChoice:
    """Lowest confidence threshold whose auto-accept error rate is <= epsilon with probability >= 1 - delta.

    Parameters
    ----------
    confidence
        The machine confidence of each human-verified item (the number routing compares to the threshold).
    correct
        Whether the machine label of that item equals the people's label (True = correct).
    epsilon
        Largest tolerated error rate among auto-accepted items (e.g. 0.05).
    delta
        Allowed probability that the chosen threshold nonetheless has error > epsilon (e.g. 0.1).
    candidates
        Thresholds to consider, fixed before seeing the data (default: 0.000, 0.001, ..., 1.000).
    min_accept
        Start the sequence only where at least this many verified items lie above the threshold
        (default max(n_min, 10 % of the sample); never below n_min).  A later start trades the highest
        thresholds for robustness against one early unlucky error stopping the sequence; it must not
        depend on `correct`.

    Returns
    -------
    ThresholdChoice with ``threshold`` (None when nothing can be certified; then auto-accept nothing),
    the Clopper-Pearson ``upper_bound`` at that threshold, ``n_accepted``/``errors_accepted``, the sample
    size and its hash, and every tested hypothesis.  Auto-accept an item when its confidence >= threshold.
    """
    if not (0 < epsilon < 1 and 0 < delta < 1):
        raise ValueError(f"choose_threshold: epsilon ({epsilon}) and delta ({delta}) must lie in (0, 1)")
    conf = np.asarray(confidence, dtype=float)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise ValueError(f"choose_threshold: confidence {conf.shape} and correct {ok.shape} must be 1-d of equal length")
    if np.isnan(conf).any():
        raise ValueError("choose_threshold: confidence contains NaN")
    grid = _DEFAULT_GRID_DESC if candidates is None else np.array(sorted({float(c) for c in candidates}, reverse=True))
    n_min = int(math.ceil(math.log(delta) / math.log(1 - epsilon)))
    order = np.argsort(-conf, kind="stable")
    # errors among the n most confident items is err_cum[n] (err_cum[0] = 0, also for an empty sample:
    # a batch with no audited auto-accepted item, as in human-model mode, certifies nothing)
    c_sorted, err_cum = conf[order], np.concatenate([[0], np.cumsum(~ok[order])])
    # items with confidence >= t: the count of sorted-descending confidences >= t
    n_at = np.searchsorted(-c_sorted, -grid, side="right")
    k_at = err_cum[n_at]
    # H_t is rejected when the exact binomial p-value P(Bin(n, epsilon) <= k) is <= delta, which is the same
    # event as "Clopper-Pearson upper bound at level 1 - delta <= epsilon" (and far cheaper than inverting)
    p_at = stats.binom.cdf(k_at, n_at, epsilon)
    start = max(n_min, min_accept if min_accept is not None else int(math.ceil(0.1 * len(conf))))
    idx = np.flatnonzero(n_at >= start)
    reject = p_at[idx] <= delta
    stop = int(np.argmin(reject)) if not reject.all() else len(idx)
    tested_idx = idx[:stop + 1]
    ub = np.atleast_1d(clopper_pearson_upper(k_at[tested_idx], n_at[tested_idx], delta))
    digest = sample_hash(conf, ok)
    tested = [{"threshold": float(grid[j]), "n": int(n_at[j]), "errors": int(k_at[j]),
               "p_value": round(float(p_at[j]), 6), "upper_bound": round(float(u), 6), "rejected": bool(p_at[j] <= delta)}
              for j, u in zip(tested_idx, ub)]
    best = idx[stop - 1] if stop > 0 else None
    ub_best = float(ub[stop - 1]) if stop > 0 else None
    if best is None:
        return ThresholdChoice(None, epsilon, delta, None, 0, 0, len(conf), digest, n_min=n_min, start_n=start,
                               tested=tested)
    return ThresholdChoice(float(grid[best]), epsilon, delta, round(ub_best, 6), int(n_at[best]),
                           int(k_at[best]), len(conf), digest, n_min=n_min, start_n=start, tested=tested)

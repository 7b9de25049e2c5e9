"""Adaptive routing: which items need another human answer, and which go to people at all.

Two entry points, both pure numpy/pandas and deterministic:

- :func:`decide` — the human-in-the-loop step. Given the current posterior of
  every item, choose the items whose next human answer buys the largest
  expected reduction in error probability, stop asking once an item is
  resolved (posterior >= target), never spend more than the budget, and
  escalate items that stay unresolved after ``escalate_after`` answers.
- :func:`route_batch` — the pipeline step after model pre-labelling. Each item
  is sent to people ("review"), left to the machines ("auto"), drawn for a
  random quality "audit" of the auto-accepted items, or, when it is flagged but
  the review budget is spent, "deferred" (no label until a person answers it),
  with the reasons.  A flagged item is never "auto".

Neither function reads truth: they see posteriors, model outputs and counts.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["decide", "expected_error_reduction", "route_batch", "prob_columns"]

ACCEPT, ASK, ESCALATE = "accept", "ask", "escalate"
REVIEW, AUTO, AUDIT, DEFERRED = "review", "auto", "audit", "deferred"


def prob_columns(df: pd.DataFrame) -> list[str]:
    """Return the ``prob_<class>`` columns of ``df`` in their order."""
    return [c for c in df.columns if str(c).startswith("prob_")]


def _binom_pmf(m: int, q: np.ndarray) -> np.ndarray:
    """P(s of m answers agree) for s = 0..m, one row per entry of ``q``; shape (len(q), m+1)."""
    s = np.arange(m + 1)
    coef = np.array([math.comb(m, int(v)) for v in s], dtype=float)
    q = np.clip(q, 1e-12, 1 - 1e-12)[:, None]
    return coef[None, :] * q ** s[None, :] * (1 - q) ** (m - s)[None, :]


def expected_error_reduction(
    p_top: np.ndarray,
    reliability: np.ndarray | float,
    n_classes: int,
    horizon: np.ndarray | int = 1,
) -> np.ndarray:
    """Best expected drop in error probability per answer, looking up to ``horizon`` answers ahead.

    The item's current decision is its top class with probability ``p_top``.
    A worker of one-coin ``reliability`` r says the true class with
    probability r and each other class with (1-r)/(k-1); we collapse the
    answer to "agrees with the top class" or not, so ``m`` answers with ``s``
    agreements are two binomials. Expected error after m answers is
    ``sum_s min(p * B(s; m, r), (1-p) * B(s; m, q0))``; the gain per answer is
    the best ``(error_now - error_after_m) / m`` over m = 1..horizon. Looking
    further than one answer matters: when one answer cannot flip the decision
    the one-step gain is zero although two answers may resolve the item.
    """
    p = np.clip(np.asarray(p_top, dtype=float), 0.0, 1.0)
    n = p.shape[0]
    r = np.broadcast_to(np.asarray(reliability, dtype=float), (n,)).clip(1e-6, 1 - 1e-6)
    q0 = (1.0 - r) / max(n_classes - 1, 1)  # P(answer == top | truth != top)
    h = np.broadcast_to(np.asarray(horizon, dtype=int), (n,))
    err_now = 1.0 - p
    best = np.zeros(n)
    for m in range(1, int(h.max(initial=0)) + 1):
        err_after = np.minimum(p[:, None] * _binom_pmf(m, r), (1 - p)[:, None] * _binom_pmf(m, q0)).sum(1)
        gain = (err_now - err_after) / m
        best = np.where(h >= m, np.maximum(best, gain), best)
    return np.clip(best, 0.0, None)


def decide(
    posteriors: pd.DataFrame,
    n_answers: pd.Series,
    target: float,
    budget_left: int,
    max_answers_per_item: int | pd.Series,
    escalate_after: int,
    *,
    worker_reliability: float | pd.Series = 0.8,
    lookahead: int = 3,
    min_gain: float = 1e-6,
) -> pd.DataFrame:
    """Choose, per item, to ``accept`` its label, ``ask`` one more human answer, or ``escalate`` to an expert.

    Parameters
    ----------
    posteriors
        Indexed by item_id, one ``prob_<class>`` column per class (rows sum to 1).
    n_answers
        Human answers each item already has (missing items count 0).
    target
        Posterior of the top class at which an item counts as resolved.
    budget_left
        Most answers this call may request; one ``ask`` is one answer.
    max_answers_per_item
        Cap on answers per item, global or per item (Series, e.g. the answers
        a replay file holds for each item).
    escalate_after
        An item still below ``target`` with this many answers goes to an expert.
    worker_reliability
        One-coin accuracy of the next worker, global or per item (Series).
    lookahead
        How many answers ahead the expected gain looks (see
        :func:`expected_error_reduction`).
    min_gain
        Items whose best expected gain is below this are not worth an answer.

    Returns
    -------
    DataFrame indexed like ``posteriors`` with ``action``, ``label``,
    ``confidence``, ``n_answers``, ``expected_gain`` (expected drop in error
    probability per answer) and ``reasons`` (list of str). Asked items are the
    highest ``expected_gain`` ones, ties broken by item order; at most
    ``budget_left`` of them.
    """
    cols = prob_columns(posteriors)
    if not cols:
        raise ValueError("decide: posteriors has no prob_<class> columns; pass aggregate()'s output")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"decide: target must be in (0, 1], got {target}")
    probs = posteriors[cols].to_numpy(dtype=float)
    n = probs.shape[0]
    k = len(cols)
    top = probs.argmax(1)
    conf = probs[np.arange(n), top] if n else np.zeros(0)
    answered = n_answers.reindex(posteriors.index).fillna(0).to_numpy(dtype=int)
    if isinstance(worker_reliability, pd.Series):
        rel = worker_reliability.reindex(posteriors.index).fillna(worker_reliability.mean()).to_numpy(float)
    else:
        rel = np.full(n, float(worker_reliability))

    if isinstance(max_answers_per_item, pd.Series):
        item_cap = max_answers_per_item.reindex(posteriors.index).fillna(0).to_numpy(dtype=int)
    else:
        item_cap = np.full(n, int(max_answers_per_item))
    cap = np.minimum(item_cap, int(escalate_after))
    room = np.clip(cap - answered, 0, None)
    gain = expected_error_reduction(conf, rel, k, np.minimum(room, max(int(lookahead), 1)))

    resolved = conf >= target
    exhausted = ~resolved & (answered >= escalate_after)
    capped = ~resolved & ~exhausted & (answered >= item_cap)
    hopeless = ~resolved & ~exhausted & ~capped & (gain < min_gain)
    candidate = ~resolved & ~exhausted & ~capped & ~hopeless

    budget = max(int(budget_left), 0)
    cand_idx = np.flatnonzero(candidate)
    # stable sort on -gain: equal gains keep item order, so the result is deterministic
    order = cand_idx[np.argsort(-gain[cand_idx], kind="stable")]
    asked = np.zeros(n, dtype=bool)
    asked[order[:budget]] = True
    unfunded = candidate & ~asked

    action = np.full(n, ACCEPT, dtype=object)
    action[asked] = ASK
    action[exhausted | capped] = ESCALATE

    reasons: list[list[str]] = []
    for i in range(n):
        if resolved[i]:
            reasons.append([f"posterior {conf[i]:.3f} >= target {target}"])
        elif exhausted[i]:
            reasons.append([f"unresolved after {answered[i]} answers (escalate_after={escalate_after})"])
        elif capped[i]:
            reasons.append([f"unresolved at the cap of {item_cap[i]} answers"])
        elif hopeless[i]:
            reasons.append(["no expected gain from more answers"])
        elif asked[i]:
            reasons.append([f"expected error drop {gain[i]:.4f} per answer"])
        else:
            reasons.append(["budget"])
    labels = np.array([c[len("prob_"):] for c in cols], dtype=object)[top] if n else np.array([], dtype=object)
    out = pd.DataFrame(
        {
            "action": action,
            "label": labels,
            "confidence": conf,
            "n_answers": answered,
            "expected_gain": gain,
            "reasons": reasons,
        },
        index=posteriors.index,
    )
    out.attrs["budget_used"] = int(asked.sum())
    out.attrs["unfunded"] = int(unfunded.sum())
    return out


def _reference_shares(prior: dict | None, seed_distribution: dict | None) -> dict[str, float] | None:
    """Normalise the declared prior (preferred) or the seed labels' distribution to shares."""
    ref = prior if prior else seed_distribution
    if not ref:
        return None
    total = float(sum(ref.values()))
    if total <= 0:
        raise ValueError("route_batch: prior/seed_distribution must have a positive total")
    return {str(c): float(v) / total for c, v in ref.items()}


def route_batch(
    fused: pd.DataFrame,
    model_labels: pd.DataFrame,
    *,
    confidence_threshold: float,
    prior: dict | None = None,
    seed_distribution: dict | None = None,
    audit_rate: float = 0.02,
    bias_ratio: float = 2.0,
    review_budget: int | None = None,
    seed: int = 0,
    audit_min: int = 0,
) -> pd.DataFrame:
    """Send each fused item to people ("review"), leave it to the machines ("auto"), audit it ("audit") or defer it.

    Parameters
    ----------
    fused
        Indexed by item_id with ``label``, ``confidence`` and ``prob_<class>``
        columns (aggregate()'s output over the model labelers).
    model_labels
        Indexed by item_id, one column per labeler holding its argmax label.
    confidence_threshold
        Items whose fused confidence is below it are reviewed ("low_confidence").
        Items whose fused label is a class no labeler predicted are reviewed
        ("no_support"): nothing but the fusion vouches for that label.
    prior, seed_distribution
        Expected class shares (counts or fractions). The declared ``prior`` is
        used when given, else the seed labels' distribution; with neither the
        bias check is off.
    audit_rate
        Share of the auto-accepted items drawn at random for an "audit" review.
    bias_ratio
        A class whose predicted share is above ``bias_ratio`` times (or below
        1/``bias_ratio`` of) its reference share is suspect ("bias"): for an
        over-predicted class its least confident items, as many as the excess
        over the reference count, are reviewed; for an under-predicted class
        the items where it is the runner-up, most probable first, as many as
        the shortfall.
    review_budget
        Most items sent to people, audit included. The audit sample is kept
        first (an unbiased quality estimate needs it), then the highest-value
        review items; the flagged items beyond the budget become "deferred"
        (reasons kept, plus "budget"): never "auto", a flagged item is not
        accepted without a person.
    seed
        Seed of the audit draw; the result is a pure function of the inputs.
    audit_min
        Audit at least this many of the auto-accepted items (all of them if fewer): the sample the
        accuracy gate needs to be reachable (``factory.quality.audit_target``).

    Returns
    -------
    DataFrame indexed by item_id with ``route`` ("review" | "auto" | "audit" | "deferred"),
    ``label``, ``confidence``, ``priority`` (higher = more worth a human look)
    and ``reasons`` (list of "disagreement", "no_support", "low_confidence",
    "bias", "audit", "budget").
    """
    if not 0.0 <= audit_rate <= 1.0:
        raise ValueError(f"route_batch: audit_rate must be in [0, 1], got {audit_rate}")
    if bias_ratio < 1.0:
        raise ValueError(f"route_batch: bias_ratio must be >= 1, got {bias_ratio}")
    for col in ("label", "confidence"):
        if col not in fused.columns:
            raise ValueError(f"route_batch: fused is missing the '{col}' column")
    idx = fused.index
    n = len(idx)
    labels = fused["label"].astype(str).to_numpy()
    conf = fused["confidence"].to_numpy(dtype=float)

    ml = model_labels.reindex(idx).astype("string")
    if ml.shape[1] >= 2:
        # vectorised "more than one distinct non-missing label" (DataFrame.nunique(axis=1) loops in Python)
        first = ml.bfill(axis=1).iloc[:, 0]
        disagreement = (ml.notna() & ml.ne(first, axis=0)).any(axis=1).to_numpy(dtype=bool)
    else:
        disagreement = np.zeros(n, dtype=bool)
    # a label no labeler gave is the fusion's own invention: never accepted without a person
    no_support = np.zeros(n, dtype=bool)
    if ml.shape[1]:
        gave = ml.notna() & ml.eq(pd.Series(labels, index=idx, dtype="string"), axis=0)
        no_support = ~gave.any(axis=1).to_numpy(dtype=bool)
    low_conf = conf < confidence_threshold

    bias = np.zeros(n, dtype=bool)
    shares = _reference_shares(prior, seed_distribution)
    if shares and n:
        pcols = prob_columns(fused)
        probs = fused[pcols].to_numpy(dtype=float) if pcols else None
        class_of_col = [c[len("prob_"):] for c in pcols]
        counts = pd.Series(labels).value_counts()
        for cls, ref_share in shares.items():
            got = int(counts.get(cls, 0))
            expected = ref_share * n
            ratio = got / expected if expected > 0 else (np.inf if got else 1.0)
            if ratio > bias_ratio:
                n_excess = int(math.ceil(got - expected))
                members = np.flatnonzero(labels == cls)
                pick = members[np.argsort(conf[members], kind="stable")[:n_excess]]
                bias[pick] = True
            elif ratio < 1.0 / bias_ratio and probs is not None and cls in class_of_col:
                n_short = int(math.ceil(expected - got))
                j = class_of_col.index(cls)
                others = np.flatnonzero(labels != cls)
                # runner-up score: probability of the missing class among items labelled otherwise
                pick = others[np.argsort(-probs[others, j], kind="stable")[:n_short]]
                bias[pick] = True

    review = disagreement | no_support | low_conf | bias
    # value of a human look: how unsure the machines are, plus what each reason adds
    priority = (1.0 - conf) + 0.5 * disagreement + 0.5 * no_support + 0.25 * bias + 0.25 * low_conf

    rng = np.random.default_rng(seed)
    auto_idx = np.flatnonzero(~review)
    n_audit = int(round(audit_rate * len(auto_idx)))
    if audit_rate > 0 and len(auto_idx) and n_audit == 0:
        n_audit = 1
    n_audit = max(n_audit, min(int(audit_min), len(auto_idx)))  # big enough for the gate to be reachable
    audit = np.zeros(n, dtype=bool)
    if n_audit:
        audit[np.sort(rng.choice(auto_idx, size=n_audit, replace=False))] = True

    dropped = np.zeros(n, dtype=bool)
    if review_budget is not None:
        budget = max(int(review_budget), 0)
        audit_pos = np.flatnonzero(audit)
        if len(audit_pos) > budget:
            # keep a random subset of the audit: still unbiased, just smaller
            keep = np.sort(rng.choice(audit_pos, size=budget, replace=False))
            audit[:] = False
            audit[keep] = True
        room = budget - int(audit.sum())
        rev_idx = np.flatnonzero(review)
        order = rev_idx[np.argsort(-priority[rev_idx], kind="stable")]
        dropped[order[room:]] = True
        review &= ~dropped

    route = np.full(n, AUTO, dtype=object)
    route[review] = REVIEW
    route[dropped] = DEFERRED
    route[audit] = AUDIT
    reasons: list[list[str]] = []
    for i in range(n):
        r = []
        if disagreement[i]:
            r.append("disagreement")
        if no_support[i]:
            r.append("no_support")
        if low_conf[i]:
            r.append("low_confidence")
        if bias[i]:
            r.append("bias")
        if audit[i]:
            r.append("audit")
        if dropped[i]:
            r.append("budget")
        reasons.append(r)
    return pd.DataFrame(
        {"route": route, "label": fused["label"].to_numpy(), "confidence": conf, "priority": priority, "reasons": reasons},
        index=idx,
    )

"""One round of the people-in-the-loop decision, shared by the pipeline and the replay benchmark.

:func:`people_round` is the only place where people's answers meet the models' prior for a
decision: the pipeline's escalation step (``factory.pipeline.escalate``) and ``factory bench
replay`` both call it, so what is benchmarked is what users run.  A round:

1. :func:`fuse_people` -- Dawid-Skene with an item prior (the models' probabilities, temperature-
   calibrated against people's answers, then recalibrated per confidence bin like a labeler whose
   reliability is learned) and per-person confusion matrices *shrunk toward the pooled crowd* by a
   strength estimated from the answers, estimated only from items that more than one person answered.  With one
   answer per item a person's accuracy and the models' cannot be told apart (only their
   product-like agreement is seen), and plain DS then drifts to "everyone is always right",
   confidences near 1 and an early stop.  Without overlap a person counts at the spec's
   ``workforce.default_reliability``.
2. :func:`unverified_bound` -- the estimated accuracy of the items nobody answered: the mean of
   the models' confidence on them, calibrated conservatively (a temperature fitted to people's
   answers as if people were never wrong: every disagreement is charged to the models), minus a
   one-sided interval at the spec's confidence level that counts both the sampling spread and
   the few answered items the calibration rests on.
   With verified items (a random audit answered by an expert, gold, arbitration: ``verified``), the
   fused posterior is first calibrated against them (:func:`calibrate_to_verified`: cross-fitted,
   noise-aware, never sharper than the fusion, pulled toward the measured accuracy while they are
   few); the round then decides on that calibrated posterior, and :func:`certify_unverified` finds
   the lowest confidence threshold (fixed grid, high to low, stop at the first failure) above which
   the unverified items' bound meets the target: those items are accepted as a certified set, the
   unverified items below it are asked while there is budget (least confident first when the
   posterior sees no gain in asking).  Without verified items the bound is the conservative one above.
3. The stopping rule: while that lower bound is below ``spec.quality.min_accuracy`` every item
   may be asked (also confident ones: the set must improve, not only its weak items) in the
   order of the engine's expected error reduction (:func:`factory.engine.routing.decide`),
   within the budget.  Once the bound meets the target only answered items below the target
   are asked (second opinions), and the loop stops when none is left.  People are never
   silently overruled: an item whose fused label differs from its people's majority gets
   another person, then an expert.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from factory.engine.routing import ACCEPT, ASK, ESCALATE, decide
from factory.spec import DatasetSpec

__all__ = ["LoopSettings", "FusedPeople", "RoundResult", "VerifiedCalibration", "fuse_people", "unverified_bound",
           "calibrate_to_verified", "certify_unverified", "people_round"]

# pseudo-answers pulling one person's confusion row toward the pooled crowd's, and the pooled
# crowd's toward the spec's default reliability: chosen once, for every data set
SHRINK_PERSON = 20.0
SHRINK_POOL = 20.0
MIN_OVERLAP_ANSWERS = 30  # overlapping answers needed before the evidence exponent is fitted
# the person->pool pull is estimated from the data (empirical Bayes, :func:`_person_strength`) once
# MIN_OVERLAP_ANSWERS overlapping answers exist; SHRINK_PERSON is its value before that
ESTIMATE_PERSON_STRENGTH = True
STRENGTH_BOUNDS = (0.5, 1000.0)  # pseudo-answers: from "each person is their own" to "everyone is the pool"
# the models' probabilities are recalibrated per (predicted class, confidence quantile bin) against
# people's answers (see _bin_correction); 0 = a temperature only
MODEL_BINS = 5
# calibration of the fused confidence against verified items (audit, gold, arbitrated): folds of the
# cross-fit (no verified item calibrates itself), and the pseudo-items of the pull toward the verified
# items' measured accuracy (few verified items: conservative, the confidence stays near that accuracy)
VERIFIED_FOLDS = 5
VERIFIED_SHRINK = 10.0
# certification of the unverified items above a confidence threshold: thresholds fixed in advance, tested
# from high to low (fixed sequence), starting where this many verified items lie above the threshold
CERTIFY_GRID = tuple(np.round(np.linspace(1.0, 0.5, 101), 3).tolist())
CERTIFY_MIN_SUPPORT = 20


@dataclass(frozen=True)
class LoopSettings:
    """What one round needs from a dataset spec (see :meth:`from_spec`)."""

    target: float  # accuracy the items nobody verified must reach (spec.quality.min_accuracy)
    level: float  # confidence level of the bound (spec.quality.confidence_level)
    default_reliability: float  # a person's accuracy before any overlap says otherwise
    escalate_after: int  # answers after which an unresolved item goes to an expert
    max_answers: int  # answers one item may get at most
    lookahead: int = 3

    @classmethod
    def from_spec(cls, spec: DatasetSpec, *, escalate_after: int = 2, max_answers: int = 3) -> "LoopSettings":
        """Settings of the spec; ``escalate_after`` is a property of the workforce (are there experts?)."""
        return cls(target=float(spec.quality.min_accuracy), level=float(spec.quality.confidence_level),
                   default_reliability=float(spec.workforce.default_reliability),
                   escalate_after=int(escalate_after), max_answers=int(max_answers))


@dataclass
class FusedPeople:
    """Posterior of every item given the models' prior and people's answers, and what was estimated."""

    posterior: pd.DataFrame  # index item_id, prob_<class> columns
    reliability: pd.Series  # per person: expected accuracy under the fitted confusion
    temperature: float  # the models' prior was p ** (1 / temperature), renormalised
    n_calibration: int  # answered items the temperature was fitted on
    pooled_reliability: float
    evidence_exponent: float = 1.0  # confusion matrices were pulled toward uniform by it (held-out fit)
    conservative_confidence: np.ndarray | None = None  # models' top probability, calibrated as if people were never wrong
    conservative_prior: np.ndarray | None = None  # the models' probabilities under that calibration


@dataclass
class RoundResult:
    """One round's outcome: the posterior, each item's action, the bound and whether the loop stops."""

    fused: FusedPeople
    decisions: pd.DataFrame  # decide()'s columns: action, label, confidence, n_answers, expected_gain, reasons
    bound: dict  # unverified_bound()'s output
    stopped: bool  # nothing is asked this round
    stop_reason: str
    extra: dict = field(default_factory=dict)
    # the item posterior the round decided on, calibrated against verified items when there are any,
    # with the verified answers folded in (what the labels and confidences are); else fused.posterior
    posterior: pd.DataFrame | None = None


@dataclass
class VerifiedCalibration:
    """The fused posterior calibrated against verified items (see :func:`calibrate_to_verified`)."""

    posterior: np.ndarray  # (n, k) calibrated; verified items cross-fitted, their verified answer NOT folded in
    final: np.ndarray  # the same with each verified answer folded in at its verifier's reliability
    temperature: float  # fitted on all verified items (what non-verified items get)
    n_verified: int
    measured_accuracy: float  # accuracy of the fused labels on verified items, corrected for the verifier's noise
    weight: float  # m / (m + VERIFIED_SHRINK): the calibrated posterior's share against the measured accuracy
    support: np.ndarray  # each verified item's calibrated (cross-fitted) top confidence


def _onecoin(r: float, k: int) -> np.ndarray:
    m = np.full((k, k), (1.0 - r) / max(k - 1, 1))
    np.fill_diagonal(m, r)
    return m


def _person_strength(counts: np.ndarray, pooled: np.ndarray, fixed: np.ndarray) -> float:
    """Pseudo-answers pulling a person's confusion row toward the pool, by empirical Bayes.

    Every person's row c is a draw from Dirichlet(s * pooled[c]); s is the value that maximises the
    marginal (Dirichlet-multinomial) likelihood of all persons' (soft) answer counts.  A crowd of
    alike people gets a large s (borrow from the pool), one whose people differ a small s (each
    person's own counts decide).  Persons with a known reliability do not count.
    """
    c = counts[~fixed]
    n_row = c.sum(axis=2)
    if c.size == 0 or n_row.sum() < MIN_OVERLAP_ANSWERS:
        return SHRINK_PERSON
    m = np.clip(pooled, 1e-6, None)[None]
    used = n_row > 0

    def neg_loglik(log_s: float) -> float:
        a = np.exp(log_s) * m
        ll = special.gammaln(a.sum(axis=2)) - special.gammaln(a.sum(axis=2) + n_row) \
            + (special.gammaln(c + a) - special.gammaln(a)).sum(axis=2)
        return -float(ll[used].sum())

    lo, hi = np.log(STRENGTH_BOUNDS[0]), np.log(STRENGTH_BOUNDS[1])
    return float(np.exp(optimize.minimize_scalar(neg_loglik, bounds=(lo, hi), method="bounded").x))


def _confidence_bins(prior: np.ndarray, n_bins: int) -> np.ndarray:
    """Each item's bin: (the models' predicted class, quantile bin of their top probability).

    Rows with no model evidence (uniform: the pipeline blanks seed and people-first items) get
    bin -1, which is never recalibrated.
    """
    top = prior.argmax(axis=1)
    p = prior.max(axis=1)
    flat = np.ptp(prior, axis=1) < 1e-9
    sym = np.full(len(prior), -1, dtype=int)
    for c in np.unique(top[~flat]):
        m = (top == c) & ~flat
        edges = np.unique(np.quantile(p[m], np.linspace(0, 1, n_bins + 1)[1:-1]))
        sym[m] = c * n_bins + np.searchsorted(edges, p[m], side="right")
    return sym


def _bin_correction(q: np.ndarray, answered: np.ndarray, tempered: np.ndarray, sym: np.ndarray) -> np.ndarray:
    """Per-bin factors that turn the tempered models' probabilities into what people's answers say.

    The models are a labeler like a person: what they say (predicted class and confidence bin) has a
    class distribution learned from the answered items (EM's posteriors), shrunk toward the tempered
    probabilities' own mean in the bin by a strength estimated as people's is (empirical Bayes).  A
    temperature alone cannot fix a non-monotone miscalibration (product: items at 0.81 were 29 %
    matches, at 0.997 69 %, and the models' 0.999 overruled three people who agreed).
    """
    k = q.shape[1]
    n_sym = int(sym.max()) + 1
    factor = np.ones((n_sym + 1, k))  # the last row is bin -1: no model evidence, left alone
    if n_sym == 0:
        return factor
    has = sym >= 0
    mean = np.zeros((n_sym, k))
    np.add.at(mean, sym[has], tempered[has])
    mean /= np.maximum(np.bincount(sym[has], minlength=n_sym), 1)[:, None]
    counts = np.zeros((n_sym, k))
    np.add.at(counts, sym[answered & has], q[answered & has])
    strength = _person_strength(counts[None], mean, np.zeros(1, dtype=bool))
    rho = (counts + strength * mean) / (counts.sum(axis=1, keepdims=True) + strength)
    factor[:n_sym] = np.clip(rho, 1e-6, None) / np.clip(mean, 1e-6, None)
    return factor


def _temper(prior: np.ndarray, t: float) -> np.ndarray:
    lp = np.log(np.clip(prior, 1e-9, 1.0)) / t
    lp -= lp.max(axis=1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=1, keepdims=True)


def fuse_people(prior: np.ndarray | None, item_index: pd.Index, answers: pd.DataFrame, classes: list[str], *,
                default_reliability: float, known_reliability: pd.Series | None = None,
                calibrate_prior: bool = True, max_iter: int = 50, tol: float = 1e-5) -> FusedPeople:
    """Fuse people's answers (item_id, worker_id, label) with the models' prior by shrunk Dawid-Skene.

    ``prior`` is (len(item_index), k) probabilities, or None for no model (then the class shares
    are estimated).  Persons in ``known_reliability`` (e.g. from gold) keep that one-coin accuracy.
    Hand-written (not crowd-kit) because neither crowd-kit nor the engine's aggregate takes an item
    prior, shrinkage toward the pooled crowd and overlap-only estimation together.
    """
    k = len(classes)
    n = len(item_index)
    have_prior = prior is not None
    base = np.asarray(prior, dtype=float) if have_prior else np.full((n, k), 1.0 / k)
    pos = item_index.get_indexer(answers["item_id"]) if len(answers) else np.zeros(0, dtype=int)
    lab = pd.Index(classes).get_indexer(answers["label"].astype(str)) if len(answers) else np.zeros(0, dtype=int)
    keep = (pos >= 0) & (lab >= 0)
    pos, lab = pos[keep], lab[keep]
    workers, wid = np.unique(answers["worker_id"].astype(str).to_numpy()[keep], return_inverse=True) \
        if keep.any() else (np.array([], dtype=object), np.zeros(0, dtype=int))
    n_w = len(workers)
    per_item = np.bincount(pos, minlength=n)
    overlap = per_item[pos] >= 2  # answers on items someone else answered too: they identify people
    fixed = np.zeros(n_w, dtype=bool)
    fixed_r = np.zeros(n_w)
    if known_reliability is not None and n_w:
        kr = pd.Series(known_reliability).reindex(workers)
        fixed = kr.notna().to_numpy()
        fixed_r = kr.fillna(0.0).to_numpy(dtype=float).clip(1.0 / k + 1e-3, 0.999)
    pool0 = _onecoin(default_reliability, k)
    conf = np.repeat(pool0[None], n_w, axis=0)
    for w in np.flatnonzero(fixed):
        conf[w] = _onecoin(fixed_r[w], k)
    pooled = pool0
    t = 1.0
    rho = np.full(k, 1.0 / k)
    answered = per_item > 0
    prev = None
    # the models' per-bin reliability is learned only once people's is identified (overlap), as the
    # evidence exponent: from single answers it would learn the models' own vote back (self-confirmation),
    # and in the pipeline it let the models overrule single audit answers on a 40-seed batch
    sym = _confidence_bins(base, MODEL_BINS) if have_prior and MODEL_BINS and overlap.sum() >= MIN_OVERLAP_ANSWERS \
        else None
    corr = None

    def model_prior(t_: float) -> np.ndarray:
        tp = _temper(base, t_)
        if corr is None:
            return tp
        tp = tp * corr[sym]
        return tp / tp.sum(axis=1, keepdims=True)

    for _ in range(max_iter):
        item_prior = model_prior(t) if have_prior else np.broadcast_to(rho, (n, k))
        logq = np.log(np.clip(item_prior, 1e-12, 1.0)).copy()
        if len(pos):
            np.add.at(logq, pos, np.log(np.clip(conf[wid, :, lab], 1e-9, 1.0)))
        logq -= logq.max(axis=1, keepdims=True)
        q = np.exp(logq)
        q /= q.sum(axis=1, keepdims=True)
        if prev is not None and np.abs(q - prev).max() < tol:
            break
        prev = q
        # M-step: confusion counts from overlapping answers only
        counts = np.zeros((n_w, k, k))
        if overlap.any():
            np.add.at(counts, (wid[overlap], slice(None), lab[overlap]), q[pos[overlap]])
        tot = counts.sum(axis=0)
        # the pooled crowd is one-coin: a class-conditional pooled matrix let EM drift to a permuted
        # solution on items with two answers (dog: accuracy 0.71 -> 0.35), and on dog's ten answers
        # per item it was worse too (0.8364 vs 0.8426); people's own matrices keep their class-
        # conditional errors once they have the answers to show them
        r_pool = (np.trace(tot) + SHRINK_POOL * k * default_reliability) / (tot.sum() + SHRINK_POOL * k)
        pooled = _onecoin(float(np.clip(r_pool, 1.0 / k + 0.05, 0.999)), k)
        strength = _person_strength(counts, pooled, fixed) if ESTIMATE_PERSON_STRENGTH else SHRINK_PERSON
        new = (counts + strength * pooled[None]) / (counts.sum(axis=2, keepdims=True) + strength)
        new[fixed] = conf[fixed]
        conf = new
        if have_prior and calibrate_prior and answered.any():
            qa, ba = q[answered], base[answered]

            def nll(log_t: float) -> float:
                return -float((qa * np.log(np.clip(_temper(ba, float(np.exp(log_t))), 1e-12, 1.0))).sum())

            t = float(np.exp(optimize.minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))
            if sym is not None:
                corr = _bin_correction(q, answered, _temper(base, t), sym)
        elif not have_prior:
            rho = (q[answered].sum(axis=0) + 1.0) / (answered.sum() + k)
    tau = 1.0
    if overlap.sum() >= MIN_OVERLAP_ANSWERS:
        # EM's confusion matrices are fitted on posteriors that contain the person's own answer, so
        # they over-state people's accuracy, and people's errors are not independent (hard items fool
        # several at once): the posterior is over-confident.  Pull every matrix toward uniform by the
        # factor that best predicts each overlapping answer from the item's OTHER answers and the prior
        # (cross-fitted: no answer calibrates itself), then recompute the posterior.
        item_prior = model_prior(t) if have_prior else np.broadcast_to(rho, (n, k))
        lp = np.log(np.clip(item_prior, 1e-12, 1.0))
        o = np.flatnonzero(overlap)
        raw = conf[wid, :, lab]

        def heldout_nll(lam: float) -> float:
            ll = np.log(lam * raw + (1.0 - lam) / k)
            total = np.zeros((n, k))
            np.add.at(total, pos, ll)
            z = lp[pos[o]] + total[pos[o]] - ll[o]
            z -= z.max(axis=1, keepdims=True)
            qo = np.exp(z)
            qo /= qo.sum(axis=1, keepdims=True)
            return -float(np.log(np.clip((qo * (lam * raw[o] + (1.0 - lam) / k)).sum(axis=1), 1e-12, None)).sum())

        tau = float(optimize.minimize_scalar(heldout_nll, bounds=(0.05, 1.0), method="bounded").x)
        conf = tau * conf + (1.0 - tau) / k
        logq = lp.copy()
        np.add.at(logq, pos, np.log(conf[wid, :, lab]))
        logq -= logq.max(axis=1, keepdims=True)
        q = np.exp(logq)
        q /= q.sum(axis=1, keepdims=True)
        pooled = tau * pooled + (1.0 - tau) / k
    post = pd.DataFrame(q, index=item_index, columns=[f"prob_{c}" for c in classes])
    # the conservative model confidence the stopping bound uses: the temperature that best predicts
    # people's answers as if people were never wrong.  Model accuracy and people's accuracy cannot be
    # told apart from single answers (only their agreement is seen); charging every disagreement to
    # the model can only understate the model (agreement <= accuracy when errors are independent).
    t_cons = 1.0
    if have_prior and answered.any():
        bp, lp_ = base[pos], lab

        def nll_cons(log_t: float) -> float:
            pt = _temper(bp, float(np.exp(log_t)))
            return -float(np.log(np.clip(pt[np.arange(len(lp_)), lp_], 1e-12, 1.0)).sum())

        t_cons = float(np.exp(optimize.minimize_scalar(nll_cons, bounds=(-3.0, 3.0), method="bounded").x))
    conservative_prior = _temper(base, t_cons) if have_prior else np.broadcast_to(rho, (n, k)).copy()
    conservative = conservative_prior.max(axis=1)
    shares = (tot.sum(axis=1) / max(tot.sum(), 1e-9)) if n_w and tot.sum() > 0 else np.full(k, 1.0 / k)
    rel = pd.Series([float((np.diag(conf[w]) * shares).sum()) for w in range(n_w)], index=workers, dtype=float)
    return FusedPeople(post, rel, t if have_prior else 1.0, int(answered.sum()),
                       float((np.diag(pooled) * shares).sum()), tau, conservative, conservative_prior)


def unverified_bound(confidence: np.ndarray, n_calibration: int, level: float) -> dict:
    """Estimated accuracy of items nobody verified and its one-sided lower bound at ``level``.

    The estimate is the mean calibrated confidence.  Its uncertainty has two parts: which of the
    items are right (a sum of Bernoullis: variance sum c(1-c) / n^2) and how well the calibration
    is known (a proportion measured on ``n_calibration`` answered items: variance mu(1-mu) / m).
    """
    c = np.asarray(confidence, dtype=float)
    if c.size == 0:
        return {"n_unverified": 0, "estimate": None, "lower": 1.0, "level": level, "n_calibration": n_calibration}
    mu = float(c.mean())
    var = float((c * (1 - c)).sum()) / c.size ** 2 + mu * (1 - mu) / max(int(n_calibration), 1)
    z = float(stats.norm.ppf(level))
    return {"n_unverified": int(c.size), "estimate": mu, "lower": max(0.0, mu - z * np.sqrt(var)),
            "level": level, "n_calibration": int(n_calibration)}


def _fit_verified(p: np.ndarray, y: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """(temperature, measured accuracy) of posterior rows ``p`` against verified labels ``y``.

    A verifier of reliability r (one-coin: right with probability r, else uniform over the other
    classes) gives label y with probability r * p_T[y] + (1 - r) / (k - 1) * (1 - p_T[y]): the
    temperature maximises that likelihood, so a noisy verifier does not make the fusion look
    worse than it is.  The measured accuracy is the (Laplace-smoothed) agreement corrected the same way.
    """
    k = p.shape[1]
    e = (1.0 - r) / max(k - 1, 1)
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        py = _temper(p, float(np.exp(log_t)))[rows, y]
        return -float(np.log(np.clip(r * py + e * (1.0 - py), 1e-12, None)).sum())

    # T >= 1: verified items may only lower the fusion's confidence.  With few verified items that all agree,
    # the likelihood is maximal at T -> 0 (certainty): bbc's 30 audited items, all agreeing, sharpened a
    # 0.92-accurate fusion to 0.999 and the loop stopped with 101 items nobody answered
    t = float(np.exp(optimize.minimize_scalar(nll, bounds=(0.0, 3.0), method="bounded").x))
    # Laplace: (agreements + 1) / (m + 2), so a handful of agreeing items never measures 1.0
    agree = (float((p.argmax(axis=1) == y).sum()) + 1.0) / (len(y) + 2.0)
    acc = (agree - float(e.mean())) / max(float(r.mean() - e.mean()), 1e-6)
    return t, float(np.clip(acc, 1.0 / k, 1.0))


def _calibrated(p: np.ndarray, t: float, acc: float, w: float) -> np.ndarray:
    """Temper ``p`` by ``t``, then pull it toward "right with the measured accuracy" by 1 - w."""
    k = p.shape[1]
    pt = _temper(p, t)
    q0 = np.full_like(pt, (1.0 - acc) / max(k - 1, 1))
    q0[np.arange(len(pt)), pt.argmax(axis=1)] = acc
    return w * pt + (1.0 - w) * q0


def calibrate_to_verified(posterior: np.ndarray, pos: np.ndarray, label: np.ndarray, reliability: np.ndarray, *,
                          folds: int = VERIFIED_FOLDS, shrink: float = VERIFIED_SHRINK) -> VerifiedCalibration | None:
    """Calibrate the fused posterior against what people verified on this dataset, cross-fitted.

    ``pos`` are the rows of the verified items, ``label`` their verified class (index), ``reliability``
    the verifier's accuracy (from gold, or stated).  The posterior must not contain the verified answers.
    Calibration: a temperature fitted to the verified labels (noise-aware, :func:`_fit_verified`), then
    a pull toward the measured accuracy by ``shrink`` pseudo-items: with few verified items the
    confidence stays near what was measured, never near 1 on the fusion's word.  Cross-fitting: a
    verified item is calibrated by the verified items of the other folds only; the others by all.
    Correlated errors (dog: people fooled together) are invisible in the answers alone, and this is
    where they show: the verified items disagree with a fusion that claimed 0.99.
    Returns None with fewer than two verified items (nothing to cross-fit).
    """
    post = np.asarray(posterior, dtype=float)
    pos, label = np.asarray(pos, dtype=int), np.asarray(label, dtype=int)
    rel = np.clip(np.asarray(reliability, dtype=float), 1.0 / post.shape[1] + 1e-3, 0.999)
    m = len(pos)
    if m < 2:
        return None
    t, acc = _fit_verified(post[pos], label, rel)
    w = m / (m + shrink)
    out = _calibrated(post, t, acc, w)
    fold = np.arange(m) % min(int(folds), m)
    for f in np.unique(fold):
        rest = fold != f
        t_f, acc_f = _fit_verified(post[pos[rest]], label[rest], rel[rest])
        n_f = int(rest.sum())
        out[pos[~rest]] = _calibrated(post[pos[~rest]], t_f, acc_f, n_f / (n_f + shrink))
    support = out[pos].max(axis=1)
    final = out.copy()
    k = post.shape[1]
    lik = np.repeat(((1.0 - rel) / max(k - 1, 1))[:, None], k, axis=1)
    lik[np.arange(m), label] = rel
    final[pos] = out[pos] * lik
    final[pos] /= final[pos].sum(axis=1, keepdims=True)
    return VerifiedCalibration(out, final, t, m, acc, w, support)


def certify_unverified(confidence: np.ndarray, unverified: np.ndarray, support: np.ndarray, level: float,
                       target: float, *, grid=CERTIFY_GRID, min_support: int = CERTIFY_MIN_SUPPORT) -> dict:
    """The lowest confidence threshold above which the unverified items' accuracy bound meets ``target``.

    Thresholds of a grid fixed in advance are tested from high to low, and testing stops at the first
    one whose lower bound (:func:`unverified_bound` on the unverified items at or above it, with the
    verified items at or above it as the calibration's support) is below the target: a fixed sequence,
    so the certified set is the one of the last passing threshold.  Testing starts where at least
    ``min_support`` verified items lie above the threshold (fewer say nothing about calibration there).
    Returns threshold (None: nothing certified), the certified mask, the bound of the certified set (or
    of the first failing one) and every tested threshold.
    """
    c = np.asarray(confidence, dtype=float)
    un = np.asarray(unverified, dtype=bool)
    sup = np.asarray(support, dtype=float)
    best, best_bound, failed, failed_mask, tested = None, None, None, None, []
    for t in grid:
        n_sup = int((sup >= t).sum())
        sel = un & (c >= t)
        if n_sup < min_support or not sel.any():
            continue
        b = unverified_bound(c[sel], n_sup, level)
        tested.append({"threshold": float(t), "n": int(sel.sum()), "support": n_sup, "lower": b["lower"]})
        if b["lower"] < target:
            failed, failed_mask = b, sel
            break
        best, best_bound = float(t), b
    mask = un & (c >= best) if best is not None else np.zeros_like(un)
    bound_mask = mask if best is not None else failed_mask
    return {"threshold": best, "certified": mask, "bound": best_bound if best is not None else failed,
            "bound_mask": bound_mask, "tested": tested}


def _majority(answers: pd.DataFrame, index: pd.Index) -> pd.Series:
    """People's most frequent label per item (ties: the smallest label), NaN where nobody answered."""
    if not len(answers):
        return pd.Series(np.nan, index=index, dtype=object)
    return (answers.groupby(["item_id", "label"]).size().rename("n").reset_index()
            .sort_values(["item_id", "n", "label"], ascending=[True, False, True])
            .drop_duplicates("item_id").set_index("item_id")["label"].astype(str).reindex(index))


def people_round(prior: pd.DataFrame | None, answers: pd.DataFrame, settings: LoopSettings, classes: list[str], *,
                 item_index: pd.Index | None = None, n_answers: pd.Series | None = None, budget_left: int,
                 max_answers_per_item: int | pd.Series | None = None,
                 known_reliability: pd.Series | None = None,
                 verified: pd.DataFrame | None = None) -> RoundResult:
    """One round of the people-in-the-loop decision: fuse, bound the unverified items, decide who is asked.

    ``prior`` is indexed by item_id with ``prob_<class>`` columns (the models' probabilities), or
    None with ``item_index`` given (no model).  ``answers`` holds people's answers (item_id,
    worker_id, label).  ``n_answers`` overrides the per-item answer counts decide() sees (the
    pipeline counts the first review as round one).  ``verified`` (item_id, label, reliability) holds
    what a verifier (audit expert, gold, arbitration) said about a random sample of the items: the
    fused posterior is then calibrated against it (:func:`calibrate_to_verified`), the round decides on
    the calibrated posterior, and the unverified items above a certified confidence threshold are
    accepted as a set (:func:`certify_unverified`), the others asked.  Verified answers do not enter
    the fusion of people's answers (they would calibrate themselves).  Returns the posterior, each
    item's action (accept | ask | escalate) and the bound; ``stopped`` when nothing is asked.
    """
    index = pd.Index(prior.index if prior is not None else item_index)
    pcols = [f"prob_{c}" for c in classes]
    ans = answers[answers["item_id"].isin(index)] if len(answers) else answers
    fused = fuse_people(prior[pcols].to_numpy(dtype=float) if prior is not None else None, index, ans, classes,
                        default_reliability=settings.default_reliability, known_reliability=known_reliability)
    counts = ans.groupby("item_id").size().reindex(index).fillna(0).astype(int) if len(ans) \
        else pd.Series(0, index=index)
    seen = counts if n_answers is None else n_answers.reindex(index).fillna(0).astype(int)
    post = fused.posterior
    final = post
    unverified = (counts == 0).to_numpy().copy()
    cal = None
    if verified is not None and len(verified):
        vpos = index.get_indexer(verified["item_id"])
        vlab = pd.Index(classes).get_indexer(verified["label"].astype(str))
        ok = (vpos >= 0) & (vlab >= 0)
        cal = calibrate_to_verified(post.to_numpy(), vpos[ok], vlab[ok],
                                    verified["reliability"].to_numpy(dtype=float)[ok])
    certified = np.zeros(len(index), dtype=bool)
    extra_info: dict = {}
    if cal is not None:
        # decide on the confidence people verified, not on the fusion's own word
        post = pd.DataFrame(cal.posterior, index=index, columns=post.columns)
        final = pd.DataFrame(cal.final, index=index, columns=post.columns)
        unverified &= ~np.isin(np.arange(len(index)), vpos[ok])
        cert = certify_unverified(cal.posterior.max(axis=1), unverified, cal.support, settings.level, settings.target)
        certified = cert["certified"]
        bound = cert["bound"] or unverified_bound(cal.posterior.max(axis=1)[unverified], cal.n_verified, settings.level)
        bound_mask = cert["bound_mask"] if cert["bound"] is not None else unverified
        met = bool(unverified.any()) and bool(certified[unverified].all()) or not unverified.any()
        extra_info = {"certified_threshold": cert["threshold"], "n_certified": int(certified.sum()),
                      "certified": certified, "verified_temperature": cal.temperature,
                      "verified_accuracy": cal.measured_accuracy, "n_verified": cal.n_verified,
                      "verified_weight": cal.weight, "bound_mask": bound_mask}
    else:
        bound = unverified_bound(fused.conservative_confidence[unverified], fused.n_calibration, settings.level)
        met = bound["lower"] >= settings.target
        if met:
            certified = unverified.copy()
        extra_info = {"bound_mask": unverified, "certified": certified, "n_certified": int(certified.sum())}
    cap = settings.max_answers if max_answers_per_item is None else max_answers_per_item
    # bound not met: nothing counts as resolved, the expected gain alone orders who is asked
    dec = decide(post, seen, target=settings.target if met else 1.0, budget_left=budget_left,
                 max_answers_per_item=cap, escalate_after=settings.escalate_after,
                 worker_reliability=fused.pooled_reliability, lookahead=settings.lookahead)
    left = max(int(budget_left), 0) - int((dec["action"] == ASK).sum())
    if not met and left > 0 and unverified.any():
        # budget left after every answer the posterior values: the bound is still below the target, so
        # keep asking about unverified items, ranked by the conservative confidence the bound uses.  By the
        # EM posterior they looked settled (expected gain ~0) and the loop stopped while the bound stayed
        # below the target (product: at 20% of the answers, bound 0.84 of 0.98).
        rest = unverified & ~certified & (dec["action"] != ASK).to_numpy()
        ranked = pd.DataFrame((cal.posterior if cal is not None else fused.conservative_prior)[rest], index=index[rest],
                              columns=post.columns)
        extra = decide(ranked, seen[rest], target=1.0, budget_left=left, max_answers_per_item=cap if np.isscalar(cap)
                       else pd.Series(cap).reindex(index[rest]), escalate_after=settings.escalate_after,
                       worker_reliability=fused.pooled_reliability, lookahead=settings.lookahead)
        more = extra.index[extra["action"] == ASK]
        dec.loc[more, "action"] = ASK
        dec.loc[more, "expected_gain"] = extra.loc[more, "expected_gain"]
        dec.loc[more, "reasons"] = extra.loc[more, "reasons"]
        left -= len(more)
        if cal is not None and left > 0:
            # still budget and still uncertified: the posterior calls these settled (no expected gain), but what
            # was verified does not certify them, so people look, least confident first (bbc: the loop stopped
            # at 34 % of the answers with 101 items nobody answered and the bound at 0.977 of 0.98)
            capn = pd.Series(cap, index=index) if np.isscalar(cap) else pd.Series(cap).reindex(index).fillna(0)
            still = rest & (dec["action"] != ASK).to_numpy() & (seen < capn).to_numpy()
            idx = np.flatnonzero(still)
            pick = idx[np.argsort(cal.posterior.max(axis=1)[idx], kind="stable")][:left]
            dec.iloc[pick, dec.columns.get_loc("action")] = ASK
            dec.loc[dec.index[pick], "reasons"] = pd.Series([["uncertified"]] * len(pick), index=dec.index[pick],
                                                            dtype=object)
    # the certified unverified items are accepted as a set: only answered items are finished one by one
    dec.loc[certified & (dec["action"] == ASK).to_numpy(), "action"] = ACCEPT
    if cal is not None and certified.any():
        dec.loc[certified, "reasons"] = pd.Series([["certified"]] * int(certified.sum()), index=dec.index[certified],
                                                  dtype=object)
    if not met:
        note = f"unverified accuracy bound {bound['lower']:.3f} < target {settings.target}"
        ask = (dec["action"] == ASK).to_numpy()
        dec.loc[ask, "reasons"] = pd.Series([[*r, note] for r in dec.loc[ask, "reasons"]],
                                            index=dec.index[ask], dtype=object)
    # people are never silently overruled: another person looks, after two an expert decides
    majority = _majority(ans, index)
    top = pd.Series(np.asarray(classes, dtype=object)[post.to_numpy().argmax(axis=1)], index=index)
    overruled = majority.notna() & (top != majority) & (dec["action"] == ACCEPT)
    if overruled.any():
        room = (seen < (cap if np.isscalar(cap) else pd.Series(cap).reindex(index).fillna(0))).to_numpy()
        ov = overruled.to_numpy()
        dec.loc[ov, "action"] = np.where((seen.to_numpy() < 2) & room, ASK, ESCALATE)[ov]
        dec.loc[ov, "reasons"] = pd.Series([["people_and_models_disagree"]] * int(ov.sum()),
                                           index=dec.index[ov], dtype=object)
    ask = (dec["action"] == ASK).to_numpy()
    budget = max(int(budget_left), 0)
    if ask.sum() > budget:  # the overruled items pushed the asks past the budget: drop the least useful
        order = np.flatnonzero(ask)[np.argsort(-dec["expected_gain"].to_numpy()[ask], kind="stable")]
        drop = order[budget:]
        for i in drop:
            dec.iat[i, dec.columns.get_loc("action")] = ACCEPT
            dec.iat[i, dec.columns.get_loc("reasons")] = ["budget"]
    asked = int((dec["action"] == ASK).sum())
    if asked:
        reason = "asking"
    elif met:
        reason = "target met: unverified accuracy bound >= target and answered items resolved"
    else:
        reason = "nothing left worth asking within the caps (bound below target)"
    return RoundResult(fused, dec, bound, stopped=asked == 0, stop_reason=reason,
                       extra={"bound_met": bool(met), **extra_info}, posterior=final)

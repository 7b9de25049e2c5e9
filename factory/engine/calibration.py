"""Calibrated confidence: measure it (ECE) and fix it from human-verified items.

A fused posterior is often over-confident (models make correlated errors, which a
product of likelihoods treats as independent evidence) or under-confident (a
geometric-mean pool).  The pipeline fits a calibrator on items whose label a person
verified (``correct`` = the fused label was right) and applies it to new items'
``confidence`` before routing.

Methods:
``platt``     logistic regression on the logit of the confidence (``a * logit(c) + b``;
              ``a = 1/T, b = 0`` is temperature scaling), with a weak Gaussian prior
              pulling towards the identity map so a few dozen items cannot overfit.
``isotonic``  monotone step fit (pool-adjacent-violators), interpolated; needs more data.
``auto``      isotonic from 1,000 verified items on, Platt below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

_EPS = 1e-6


def expected_calibration_error(confidence: Any, correct: Any, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|.

    Bins are ``(b/bins, (b+1)/bins]`` as in Guo et al. (2017); a confidence of exactly 0
    falls in the first bin.  Empty input gives 0.0.
    """
    conf = np.asarray(confidence, dtype=float).ravel()
    corr = np.asarray(correct, dtype=float).ravel()
    if conf.shape != corr.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
    if np.isnan(conf).any() or np.isnan(corr).any():
        raise ValueError("confidence/correct contain NaN; drop unverified items first")
    if ((conf < 0) | (conf > 1)).any():
        raise ValueError("confidence must lie in [0, 1]")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    n = conf.size
    if n == 0:
        return 0.0
    b = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    sum_conf = np.bincount(b, weights=conf, minlength=bins)
    sum_corr = np.bincount(b, weights=corr, minlength=bins)
    return float(np.abs(sum_corr - sum_conf).sum() / n)


def _logit(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, _EPS, 1.0 - _EPS)
    return np.log(c) - np.log1p(-c)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class Calibrator:
    """A fitted monotone map from raw confidence to calibrated confidence."""

    method: str
    params: dict = field(default_factory=dict)
    n_fit: int = 0
    ece_before: float | None = None
    ece_after: float | None = None

    def apply(self, confidence: Any) -> np.ndarray:
        """Calibrated confidence for raw confidence values (array in, array out)."""
        c = np.asarray(confidence, dtype=float)
        if self.method == "identity":
            return c.copy()
        if self.method == "platt":
            return _sigmoid(self.params["a"] * _logit(c) + self.params["b"])
        if self.method == "isotonic":
            return np.interp(c, np.asarray(self.params["x"]), np.asarray(self.params["y"]))
        raise ValueError(f"unknown calibrator method {self.method!r}")

    def apply_frame(self, items: pd.DataFrame) -> pd.DataFrame:
        """Copy of aggregate()'s output with calibrated `confidence` and prob_ columns rescaled.

        The chosen label's probability becomes the calibrated confidence; the other
        classes share the rest in their old proportions, so rows still sum to 1.  The
        `label` column is kept as it was.
        """
        return set_top_probability(items, self.apply(items["confidence"].to_numpy(dtype=float)))

    def to_dict(self) -> dict:
        """JSON-safe form for storage."""
        return {
            "method": self.method,
            "params": {k: (list(map(float, v)) if isinstance(v, (list, np.ndarray)) else float(v)) for k, v in self.params.items()},
            "n_fit": int(self.n_fit),
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        """Inverse of to_dict."""
        return cls(
            method=data["method"],
            params=dict(data.get("params", {})),
            n_fit=int(data.get("n_fit", 0)),
            ece_before=data.get("ece_before"),
            ece_after=data.get("ece_after"),
        )


def _fit_platt(conf: np.ndarray, y: np.ndarray, prior_weight: float) -> tuple[float, float]:
    """MAP logistic fit of y ~ sigmoid(a*logit(conf)+b), prior N((1,0), 1/prior_weight).

    scipy's L-BFGS on the (convex) negative log posterior: plain Newton steps diverged when all raw
    confidences sat near 1 (over-confident models: p(1-p) ~ 0, so the first step overshoots)."""
    from scipy.optimize import minimize

    x = _logit(conf)
    prior = np.array([1.0, 0.0])

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        # -log-likelihood of Bernoulli(sigmoid(z)), written with logaddexp to stay finite for large |z|
        nll = float(np.sum(np.logaddexp(0.0, z) - y * z))
        r = _sigmoid(z) - y
        grad = np.array([r @ x, r.sum()]) + prior_weight * (theta - prior)
        return nll + 0.5 * prior_weight * float((theta - prior) @ (theta - prior)), grad

    res = minimize(objective, prior.copy(), jac=True, method="L-BFGS-B")
    return float(res.x[0]), float(res.x[1])


def _fit_isotonic(conf: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(conf, y)
    return np.asarray(iso.X_thresholds_, dtype=float), np.asarray(iso.y_thresholds_, dtype=float)


def fit_calibrator(confidence: Any, correct: Any, method: str = "auto", prior_weight: float = 1.0, bins: int = 15) -> Calibrator:
    """Fit a calibrator on verified items: raw `confidence` and whether the label was `correct`.

    With no items (or only one outcome seen and fewer than 10 items) the identity map is
    returned, so a new dataset routes on raw confidence until people verified some items.
    """
    conf = np.asarray(confidence, dtype=float).ravel()
    y = np.asarray(correct, dtype=float).ravel()
    if conf.shape != y.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {y.size}")
    keep = ~(np.isnan(conf) | np.isnan(y))
    conf, y = np.clip(conf[keep], 0.0, 1.0), y[keep]
    if method not in ("auto", "platt", "isotonic", "identity"):
        raise ValueError(f"unknown calibration method {method!r}; use auto, platt, isotonic or identity")
    n = conf.size
    before = expected_calibration_error(conf, y, bins) if n else None
    if n == 0 or method == "identity" or (n < 10 and np.unique(y).size < 2):
        return Calibrator("identity", {}, n, before, before)
    if method == "auto":
        method = "isotonic" if n >= 1000 else "platt"
    if method == "platt":
        a, b = _fit_platt(conf, y, prior_weight)
        cal = Calibrator("platt", {"a": a, "b": b}, n)
    else:
        xs, ys = _fit_isotonic(conf, y)
        cal = Calibrator("isotonic", {"x": xs, "y": ys}, n)
    cal.ece_before = before
    cal.ece_after = expected_calibration_error(np.clip(cal.apply(conf), 0, 1), y, bins)
    return cal


PRIOR_STRENGTH = 20.0  # pseudo-items of the prior: with 20 verified items, half the weight is on the data


def cross_fit_confidence(
    confidence: Any,
    correct: Any,
    *,
    prior_accuracy: float | None = None,
    prior_strength: float = PRIOR_STRENGTH,
    folds: int = 5,
    method: str = "auto",
    seed: int = 0,
    bins: int = 15,
) -> tuple[np.ndarray, dict]:
    """Calibrated confidence for every item, fit on the verified ones, cross-fitted, shrunk to a prior.

    ``correct`` is 1/0 where a person verified the item's label (right / wrong) and NaN elsewhere.
    The map is :func:`fit_calibrator` on the verified items, blended with the constant
    ``prior_accuracy`` by weight ``n / (n + prior_strength)`` (n verified items): the posterior mean
    under a prior worth ``prior_strength`` pseudo-items, so with few verified items the confidence
    stays near the measured accuracy instead of the models' own probabilities.  ``prior_accuracy``
    None means the verified items' accuracy (Beta(1, 1) posterior mean; needs at least one).

    Cross-fitting: a verified item's value comes from a calibrator (and prior) fit on the other
    folds only (K-fold, ``folds``), so no item calibrates itself and the ECE of the verified items
    measured on these values is honest.  Unverified items use the calibrator fit on all verified.

    Returns (calibrated confidence, info) with info: n_verified, method, prior_accuracy,
    prior_weight, folds, ece_raw and ece_calibrated (on the verified items, cross-fitted).
    """
    conf = np.clip(np.asarray(confidence, dtype=float).ravel(), 0.0, 1.0)
    y = np.asarray(correct, dtype=float).ravel()
    if conf.shape != y.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {y.size}")
    if prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength}")
    verified = np.flatnonzero(~np.isnan(y))
    n = verified.size
    if prior_accuracy is None and n == 0:
        raise ValueError("no verified item and no prior_accuracy: nothing says how often the models are right")

    def fitted(train: np.ndarray) -> tuple[Calibrator, float, float]:
        """Calibrator, prior and weight of the data from the verified items at positions `train`."""
        m = train.size
        a0 = prior_accuracy if prior_accuracy is not None else (y[train].sum() + 1.0) / (m + 2.0)
        w = m / (m + prior_strength) if m + prior_strength > 0 else 0.0
        return fit_calibrator(conf[train], y[train], method=method, bins=bins), float(a0), w

    def apply(cal: Calibrator, a0: float, w: float, x: np.ndarray) -> np.ndarray:
        return np.clip(w * cal.apply(x) + (1.0 - w) * a0, 0.0, 1.0)

    out = np.empty_like(conf)
    cal, a0, w = fitted(verified)
    rest = np.setdiff1d(np.arange(conf.size), verified)
    out[rest] = apply(cal, a0, w, conf[rest])
    k = min(int(folds), n)
    if k >= 2:
        from sklearn.model_selection import KFold

        for tr, te in KFold(n_splits=k, shuffle=True, random_state=seed).split(verified):
            c_k, a_k, w_k = fitted(verified[tr])
            out[verified[te]] = apply(c_k, a_k, w_k, conf[verified[te]])
    elif n == 1:  # one verified item: it cannot be fit on the others, so it gets the prior alone
        if prior_accuracy is None:
            raise ValueError("one verified item and no prior_accuracy: it cannot be calibrated on the others")
        out[verified] = prior_accuracy
    info = {"n_verified": int(n), "method": cal.method, "prior_accuracy": round(a0, 6),
            "prior_weight": round(1.0 - w, 6), "prior_strength": float(prior_strength), "folds": int(k),
            "ece_raw": round(expected_calibration_error(conf[verified], y[verified], bins), 6) if n else None,
            "ece_calibrated": round(expected_calibration_error(out[verified], y[verified], bins), 6) if n else None}
    return out, info


def set_top_probability(items: pd.DataFrame, confidence: Any) -> pd.DataFrame:
    """Copy of aggregate()'s output whose top class gets `confidence`; the others share the rest in proportion."""
    out = items.copy()
    out["confidence"] = np.asarray(confidence, dtype=float)
    prob_cols = [c for c in out.columns if isinstance(c, str) and c.startswith("prob_")]
    if not prob_cols:
        return out
    old = items["confidence"].to_numpy(dtype=float)
    new = out["confidence"].to_numpy(dtype=float)
    P = out[prob_cols].to_numpy(dtype=float)
    best = np.argmax(P, axis=1)
    rest_old = 1.0 - old
    scale = np.divide(1.0 - new, rest_old, out=np.zeros_like(new), where=rest_old > 1e-12)
    P = P * scale[:, None]
    K = len(prob_cols)
    spill = (rest_old <= 1e-12) & (K > 1)
    P[spill] = ((1.0 - new[spill]) / (K - 1))[:, None]
    P[np.arange(len(P)), best] = new
    out[prob_cols] = P
    return out

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
        out = items.copy()
        prob_cols = [c for c in out.columns if isinstance(c, str) and c.startswith("prob_")]
        old = out["confidence"].to_numpy(dtype=float)
        new = self.apply(old)
        out["confidence"] = new
        if prob_cols:
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
    """MAP logistic fit of y ~ sigmoid(a*logit(conf)+b), prior N((1,0), 1/prior_weight)."""
    x = _logit(conf)
    theta = np.array([1.0, 0.0])
    prior = np.array([1.0, 0.0])
    X = np.column_stack([x, np.ones_like(x)])
    for _ in range(50):  # Newton steps on a 2-parameter concave problem
        p = _sigmoid(X @ theta)
        g = X.T @ (p - y) + prior_weight * (theta - prior)
        H = (X * (p * (1 - p))[:, None]).T @ X + prior_weight * np.eye(2)
        step = np.linalg.solve(H, g)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


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

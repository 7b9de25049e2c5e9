"""Seed selection: which items people label first, before any model exists.

A random seed over-samples the big clusters and can miss a small class
entirely. :func:`select_seed` picks a diverse set by k-means++ (D²) sampling on
the item features — each next pick is drawn with probability proportional to
its squared distance to the nearest pick so far, so every well-separated group
gets a representative — and, when model probabilities exist, spends part of
the seed on the items the model is least sure about (highest entropy).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["select_seed", "entropy"]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``probs``."""
    p = np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)
    return -(p * np.log(p)).sum(1)


def _sq_norms(x) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.multiply(x).sum(1)).ravel()
    return np.einsum("ij,ij->i", x, x)


def _sq_dist_to(x, norms: np.ndarray, i: int) -> np.ndarray:
    """Squared Euclidean distance of every row of ``x`` to row ``i``."""
    row = x[i]
    dots = x @ row.T
    dots = np.asarray(dots.todense()).ravel() if sp.issparse(dots) else np.asarray(dots).ravel()
    return np.clip(norms + norms[i] - 2.0 * dots, 0.0, None)


def select_seed(
    features,
    n: int,
    seed: int,
    probs: np.ndarray | None = None,
    *,
    uncertainty_share: float = 0.3,
    candidates_per_pick: int = 1,
) -> np.ndarray:
    """Return ``n`` distinct row indices to label first: diverse by k-means++ sampling, plus uncertain ones.

    Parameters
    ----------
    features
        (n_items, d) dense array or scipy sparse matrix (e.g. TF-IDF). Rows
        are compared by Euclidean distance, so scale them beforehand.
    n
        How many items to pick (capped at the number of rows).
    seed
        Seed of the random draws; same inputs and seed give the same picks.
    probs
        Optional (n_items, k) model probabilities. When given,
        ``uncertainty_share`` of the picks are the highest-entropy items not
        already chosen for diversity.
    candidates_per_pick
        Greedy k-means++: draw this many D² candidates per step and keep the
        one farthest from the picks so far (1 = plain k-means++).

    Returns
    -------
    np.ndarray of int row indices: the diversity picks in pick order, then the
    uncertainty picks by decreasing entropy.
    """
    if not sp.issparse(features):
        features = np.asarray(features, dtype=float)
        if features.ndim != 2:
            raise ValueError(f"select_seed: features must be 2-D, got shape {features.shape}")
    else:
        features = sp.csr_matrix(features, dtype=float)
    n_items = features.shape[0]
    n = int(min(max(n, 0), n_items))
    if n == 0:
        return np.zeros(0, dtype=int)
    if probs is not None and len(probs) != n_items:
        raise ValueError(f"select_seed: probs has {len(probs)} rows, features {n_items}")
    rng = np.random.default_rng(seed)
    n_uncertain = int(round(uncertainty_share * n)) if probs is not None else 0
    n_diverse = n - n_uncertain

    norms = _sq_norms(features)
    chosen: list[int] = []
    taken = np.zeros(n_items, dtype=bool)
    if n_diverse > 0:
        first = int(rng.integers(n_items))
        chosen.append(first)
        taken[first] = True
        d2 = _sq_dist_to(features, norms, first)
        while len(chosen) < n_diverse:
            w = np.where(taken, 0.0, d2)
            total = w.sum()
            if total <= 0:
                # every remaining row duplicates a pick: fall back to uniform draws
                rest = np.flatnonzero(~taken)
                cand = rng.choice(rest, size=min(candidates_per_pick, len(rest)), replace=False)
            else:
                cand = rng.choice(n_items, size=candidates_per_pick, p=w / total)
            best = int(cand[np.argmax(d2[cand])]) if total > 0 else int(cand[0])
            chosen.append(best)
            taken[best] = True
            d2 = np.minimum(d2, _sq_dist_to(features, norms, best))
    if n_uncertain > 0:
        ent = entropy(probs)
        ent[taken] = -np.inf
        order = np.argsort(-ent, kind="stable")[:n_uncertain]
        chosen.extend(int(i) for i in order)
    return np.asarray(chosen, dtype=int)

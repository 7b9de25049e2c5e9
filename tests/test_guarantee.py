"""The auto-accept guarantee: over many simulated samples the chosen threshold's true error exceeds
epsilon in at most a delta share of runs (plus binomial slack), and the procedure still accepts items."""
import math

import numpy as np
import pytest

from factory.guarantee import choose_threshold


def _population(rng, n, miscalibration=1.3):
    """Confidences in (0.5, 1); P(wrong | c) = min(1, miscalibration * (1 - c)): overconfident models."""
    c = 0.5 + 0.5 * rng.beta(6.0, 1.0, n)
    wrong = rng.random(n) < np.minimum(1.0, miscalibration * (1 - c))
    return c, ~wrong


@pytest.fixture(scope="module")
def true_risk():
    """The true error among items with confidence >= t, from one large sample (1e6 items)."""
    rng = np.random.default_rng(12345)
    c, ok = _population(rng, 1_000_000)
    order = np.argsort(-c)
    cs, errs = c[order], np.cumsum(~ok[order])

    def risk(t):
        n = np.searchsorted(-cs, -t, side="right")
        return errs[n - 1] / n if n else 0.0
    return risk


def test_guarantee_holds_over_many_seeds(true_risk):
    eps, delta, runs = 0.05, 0.1, 400
    violations, accepted = 0, []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        c, ok = _population(rng, 800)
        ch = choose_threshold(c, ok, eps, delta)
        if ch.threshold is None:
            continue
        violations += true_risk(ch.threshold) > eps
        accepted.append(ch.n_accepted / 800)
    # delta share plus three binomial standard deviations of slack
    slack = 3 * math.sqrt(delta * (1 - delta) / runs)
    assert violations / runs <= delta + slack, (violations, runs)
    # and it is useful: most runs certify a threshold that auto-accepts a good share of items
    assert len(accepted) > 0.7 * runs and np.mean(accepted) > 0.3


def test_naive_threshold_violates_where_the_guarantee_does_not(true_risk):
    # choosing the lowest threshold whose *empirical* error is <= eps fails about half the time:
    # the test above would catch a procedure that ignores sampling error
    eps, runs, bad = 0.05, 100, 0
    grid = np.round(np.linspace(1, 0, 1001), 3)
    for seed in range(runs):
        c, ok = _population(np.random.default_rng(seed), 800)
        order = np.argsort(-c)
        n = np.searchsorted(-c[order], -grid, side="right")
        k = np.cumsum(~ok[order])[np.maximum(n - 1, 0)]
        good = (n >= 30) & (k <= eps * n)
        t_naive = grid[good].min()
        bad += true_risk(t_naive) > eps
    assert bad / runs > 0.25


def test_choice_records_bound_and_sample():
    rng = np.random.default_rng(0)
    c, ok = _population(rng, 2000)
    ch = choose_threshold(c, ok, 0.05, 0.1)
    assert ch.threshold is not None and ch.upper_bound <= 0.05
    assert ch.n_accepted == int((c >= ch.threshold).sum())
    assert ch.errors_accepted == int((~ok[c >= ch.threshold]).sum())
    assert ch.n_sample == 2000 and len(ch.sample_sha256) == 64
    assert ch.tested[-1]["rejected"] is False or ch.tested[-1]["threshold"] == 0.0
    assert ch.n_min == 45 and ch.start_n == 200  # ceil(log 0.1 / log 0.95); 10 % of the sample
    assert ch.tested[0]["n"] >= 200 and all(t["rejected"] for t in ch.tested[:-1])
    d = ch.to_dict()
    assert d["threshold"] == ch.threshold and isinstance(d["tested"], int)
    # the same sample in another order gives the same answer and hash
    p = rng.permutation(2000)
    assert choose_threshold(c[p], ok[p], 0.05, 0.1) == ch
    # an explicit earlier start is honoured but never below n_min
    assert choose_threshold(c, ok, 0.05, 0.1, min_accept=10).start_n == 45


def test_too_little_evidence_accepts_nothing():
    ch = choose_threshold([0.99] * 20, [True] * 20, 0.05, 0.1)  # 20 < n_min = 45
    assert ch.threshold is None and ch.n_accepted == 0
    ch = choose_threshold(np.full(100, 0.99), np.arange(100) >= 30, 0.05, 0.1)  # 30 % wrong everywhere
    assert ch.threshold is None and ch.tested[0]["rejected"] is False
    with pytest.raises(ValueError, match="epsilon"):
        choose_threshold([0.9], [True], 0.0, 0.1)
    with pytest.raises(ValueError, match="equal length"):
        choose_threshold([0.9, 0.8], [True], 0.05, 0.1)


def test_an_empty_audit_sample_certifies_nothing():
    """human-model batches auto-accept nothing, so their release has no audit sample at all."""
    choice = choose_threshold(np.array([]), np.array([], dtype=bool), 0.05, 0.1)
    assert choice.threshold is None and choice.n_sample == 0 and choice.n_accepted == 0

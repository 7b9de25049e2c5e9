"""The people-in-the-loop round (factory.loop): when it stops, who it asks, and one loop for pipeline and replay."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from factory import loop as L
from factory.loop import LoopSettings, fuse_people, people_round

CLASSES = ["a", "b", "c"]


def _settings(target: float = 0.95, reliability: float = 0.8) -> LoopSettings:
    return LoopSettings(target=target, level=0.95, default_reliability=reliability, escalate_after=3, max_answers=3)


def _truth(n: int, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.choice(CLASSES, size=n), index=[f"i{j:04d}" for j in range(n)])


def _prior(truth: pd.Series, right: float, top: float | None = None, seed: int = 1) -> pd.DataFrame:
    """Model probabilities of a model whose top class is right with probability `right` (mass `top` on it)."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    top = right if top is None else top
    p = np.full((len(truth), k), (1 - top) / (k - 1))
    picks = [t if rng.random() < right else rng.choice([c for c in CLASSES if c != t]) for t in truth]
    p[np.arange(len(truth)), [CLASSES.index(c) for c in picks]] = top
    return pd.DataFrame(p, index=truth.index, columns=[f"prob_{c}" for c in CLASSES])


class Crowd:
    """People of accuracy `r` answering on request, at most 3 answers per item, 10 people."""

    def __init__(self, truth: pd.Series, r: float, seed: int = 2):
        self.truth, self.r, self.rng = truth, r, np.random.default_rng(seed)
        self.rows: list[tuple] = []

    def ask(self, items) -> None:
        for i in items:
            t = self.truth[i]
            lab = t if self.rng.random() < self.r else self.rng.choice([c for c in CLASSES if c != t])
            self.rows.append((i, f"w{self.rng.integers(10)}", lab))

    @property
    def answers(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["item_id", "worker_id", "label"])


def test_weak_models_keep_asking_within_the_budget():
    # models barely better than chance: the items nobody answered cannot be certified, so every round
    # spends its whole budget instead of stopping (the old replay stopped after one answer per item)
    truth = _truth(600)
    prior = _prior(truth, right=0.5, top=0.6)
    crowd = Crowd(truth, r=0.85)
    crowd.ask(truth.index[:30])
    for _ in range(8):
        res = people_round(prior, crowd.answers, _settings(), CLASSES, budget_left=40)
        assert not res.stopped and res.bound["lower"] < 0.95
        asked = res.decisions.index[res.decisions["action"] == "ask"]
        assert len(asked) == 40
        crowd.ask(asked)
    assert len(crowd.rows) == 30 + 8 * 40


def test_strong_models_stop_once_the_bound_meets_the_target():
    # the bound charges every disagreement to the models, so it certifies only what careful people confirm
    truth = _truth(400)
    prior = _prior(truth, right=0.995)
    crowd = Crowd(truth, r=0.995)
    crowd.ask(truth.index[:150])
    res = people_round(prior, crowd.answers, _settings(target=0.95), CLASSES, budget_left=100)
    assert res.bound["lower"] >= 0.95
    assert res.extra["bound_met"]
    # certified as a set: no unverified item is asked
    unverified = ~res.decisions.index.isin(crowd.answers["item_id"])
    assert not (res.decisions.loc[unverified, "action"] == "ask").any()


@pytest.mark.parametrize("margin, stops", [(-1e-3, False), (0.0, True)])
def test_stopping_is_decided_by_the_lower_bound(monkeypatch, margin, stops):
    # the same state (models right on ~97% of items); only the bound differs: just below the target the
    # loop keeps asking about unverified items, at the target it asks none of them
    truth = _truth(400)
    prior = _prior(truth, right=0.97)
    prior.iloc[300:] = [0.5, 0.3, 0.2]  # unverified items the models are unsure of: worth asking unless certified
    crowd = Crowd(truth, r=0.9)
    crowd.ask(truth.index[:150])
    real = L.unverified_bound

    def bound(conf, m, level):
        return {**real(conf, m, level), "lower": 0.9 + margin}

    monkeypatch.setattr(L, "unverified_bound", bound)
    res = people_round(prior, crowd.answers, _settings(target=0.9, reliability=0.9), CLASSES, budget_left=50)
    unverified = ~res.decisions.index.isin(crowd.answers["item_id"])
    asked_unverified = int((res.decisions.loc[unverified, "action"] == "ask").sum())
    if stops:
        assert asked_unverified == 0 and res.extra["bound_met"]
    else:
        assert asked_unverified > 0 and not res.stopped and not res.extra["bound_met"]
        assert any("unverified accuracy bound" in r for rs in res.decisions["reasons"] for r in rs)


def test_bound_does_not_trust_an_assumed_reliability():
    # people are better (0.9) than the spec assumes (0.8): fitted jointly, the models' temperature then
    # over-sharpens (disagreements blamed on people) and the bound claimed ~1.0 for items only 97% right.
    # The bound charges disagreements to the models, so it stays at or below the truth.
    truth = _truth(400)
    prior = _prior(truth, right=0.97)
    crowd = Crowd(truth, r=0.9)
    crowd.ask(truth.index[:150])
    res = people_round(prior, crowd.answers, _settings(target=0.9, reliability=0.8), CLASSES, budget_left=50)
    unverified = ~prior.index.isin(crowd.answers["item_id"])
    model_top = np.asarray(CLASSES)[prior.to_numpy().argmax(1)]
    true_acc = float((model_top[unverified] == truth.to_numpy()[unverified]).mean())
    assert res.bound["lower"] <= true_acc


def test_bound_below_target_keeps_asking_even_when_the_posterior_looks_sure():
    # the same misspecified state: by the jointly fitted posterior every unverified item is settled (no expected
    # gain), but the bound is below the target, so the loop must go on asking within its budget
    truth = _truth(400)
    prior = _prior(truth, right=0.97)
    crowd = Crowd(truth, r=0.9)
    crowd.ask(truth.index[:150])
    res = people_round(prior, crowd.answers, _settings(target=0.95, reliability=0.8), CLASSES, budget_left=50)
    assert res.bound["lower"] < 0.95
    assert res.fused.posterior.to_numpy().max(axis=1).min() > 0.999  # what made the old loop stop
    assert not res.stopped and int((res.decisions["action"] == "ask").sum()) == 50


def test_items_are_asked_in_order_of_expected_gain():
    truth = _truth(200)
    rng = np.random.default_rng(5)
    right = rng.uniform(0.34, 0.99, size=len(truth))
    k = len(CLASSES)
    p = np.repeat(((1 - right) / (k - 1))[:, None], k, axis=1)
    p[np.arange(len(truth)), [CLASSES.index(t) for t in truth]] = right
    prior = pd.DataFrame(p, index=truth.index, columns=[f"prob_{c}" for c in CLASSES])
    crowd = Crowd(truth, r=0.85)
    crowd.ask(truth.index[:20])
    res = people_round(prior, crowd.answers, _settings(target=0.99), CLASSES, budget_left=15)
    d = res.decisions
    asked = set(d.index[d["action"] == "ask"])
    assert len(asked) == 15
    eligible = d[d["expected_gain"] > 0].sort_values("expected_gain", ascending=False, kind="stable")
    assert asked == set(eligible.index[:15])
    # the most uncertain item is among the asked, the most certain is not
    conf = d["confidence"]
    assert conf.idxmin() in asked and conf.idxmax() not in asked


def test_two_answers_per_item_do_not_flip_the_labels():
    # Dawid-Skene with two answers per item is not identified; unshrunk per-person confusion drifted to a
    # permuted solution on the real dog set (accuracy 0.71 -> 0.35).  Shrinkage toward a one-coin crowd holds.
    rng = np.random.default_rng(7)
    classes = ["0", "1", "2", "3"]
    truth = pd.Series(rng.choice(classes, size=600), index=[f"g{j}" for j in range(600)])
    acc = rng.uniform(0.6, 0.8, size=30)
    rows = []
    for i, t in truth.items():
        for w in rng.choice(30, size=2, replace=False):
            lab = t if rng.random() < acc[w] else rng.choice([c for c in classes if c != t])
            rows.append((i, f"w{w}", lab))
    answers = pd.DataFrame(rows, columns=["item_id", "worker_id", "label"])
    fused = fuse_people(None, truth.index, answers, classes, default_reliability=0.9)
    label = np.asarray(classes)[fused.posterior.to_numpy().argmax(1)]
    first = answers.groupby("item_id")["label"].first().reindex(truth.index)
    assert (label == truth.to_numpy()).mean() >= (first == truth).mean() - 0.02
    assert fused.pooled_reliability > 0.5


def test_replay_drives_the_core_round(monkeypatch):
    """`factory bench replay` runs factory.loop.people_round, not a loop of its own."""
    from benchmarks.replay import DEFAULTS, run_seed

    truth = _truth(120)
    crowd = Crowd(truth, r=0.8)
    for _ in range(3):
        crowd.ask(truth.index)
    calls = []
    real = L.people_round

    def spy(*a, **k):
        calls.append(k.get("budget_left"))
        return real(*a, **k)

    monkeypatch.setattr(L, "people_round", spy)
    items = pd.DataFrame({"item_id": truth.index})
    out = run_seed(items, "none", crowd.answers, truth, CLASSES, dict(DEFAULTS), 0,
                   budgets=(0.5, 1.0), schedule=(0.1, 0.5, 1.0))
    assert len(calls) == len(out["rounds"]) >= 2
    assert out["rounds"][-1]["answers_used"] > out["rounds"][0]["answers_used"]


@pytest.mark.slow
def test_pipeline_escalation_drives_the_core_round(monkeypatch, root, fx, bbc_small, truth, tmp_path):
    """The pipeline's escalation step runs factory.loop.people_round too: one loop, benchmarked as it runs."""
    from factory.simulate import SimulatedPool
    from tests.test_modes import _run

    calls = []
    real = L.people_round

    def spy(*a, **k):
        res = real(*a, **k)
        calls.append(res)
        return res

    monkeypatch.setattr(L, "people_round", spy)
    pool = SimulatedPool(truth, n_reviewers=6, acc_low=0.7, acc_high=0.8, seed=3)
    batch = _run(fx, root, bbc_small, pool, tmp_path, n=60)
    assert calls, "the pipeline decided second opinions without factory.loop.people_round"
    second = fx.ledger.tasks("news", batch_id=batch)
    asked = {i for res in calls for i in res.decisions.index[res.decisions["action"] == "ask"]}
    # every second opinion the pipeline opened is an item the core round asked for
    assert set(second.loc[second["kind"] == "second", "item_id"]) <= asked


def _crowd_answers(truth: pd.Series, acc: np.ndarray, per_item: int, classes: list, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, t in truth.items():
        for w in rng.choice(len(acc), size=per_item, replace=False):
            lab = t if rng.random() < acc[w] else rng.choice([c for c in classes if c != t])
            rows.append((i, f"w{w:02d}", lab))
    return pd.DataFrame(rows, columns=["item_id", "worker_id", "label"])


def test_person_shrinkage_is_estimated_from_the_crowd():
    # a fixed pull of 20 pseudo-answers toward the pooled crowd kept dog's all-answers fusion below
    # Dawid-Skene (0.835 vs 0.843): people who differ must keep their own accuracy, alike people borrow
    rng = np.random.default_rng(3)
    classes = ["0", "1", "2", "3"]
    truth = pd.Series(rng.choice(classes, size=300), index=[f"g{j}" for j in range(300)])
    acc = np.r_[np.full(10, 0.95), np.full(10, 0.45)]
    answers = _crowd_answers(truth, acc, 4, classes, seed=4)  # ~60 answers per person
    fused = fuse_people(None, truth.index, answers, classes, default_reliability=0.9)
    rel = fused.reliability
    good = rel[[f"w{w:02d}" for w in range(10)]].mean()
    bad = rel[[f"w{w:02d}" for w in range(10, 20)]].mean()
    assert good - bad >= 0.45 * (0.95 - 0.45)  # 0.25 estimated; a fixed 20 pseudo-answers gave 0.18
    # the estimated strength: small for a crowd that differs, large for one that is alike
    counts_differ = np.stack([np.diag(np.full(4, 15 * a)) + (1 - np.eye(4)) * 15 * (1 - a) / 3 for a in acc])
    counts_alike = np.stack([np.diag(np.full(4, 15 * 0.7)) + (1 - np.eye(4)) * 15 * 0.1 for _ in acc])
    pooled = L._onecoin(0.7, 4)
    none = np.zeros(len(acc), dtype=bool)
    assert 4 * L._person_strength(counts_differ, pooled, none) < L._person_strength(counts_alike, pooled, none)


def test_models_are_recalibrated_per_confidence_bin_against_people():
    # product: the models' fused probabilities are not monotone in truth (items at 0.81 were 29 % matches,
    # at 0.999 69 %); one temperature let a 0.999 model overrule three people who agreed.  Learned per
    # confidence bin from people's answers, as a person's reliability is, it does not.
    rng = np.random.default_rng(5)
    classes = ["0", "1"]
    n = 900
    group = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
    p1 = np.array([0.002, 0.81, 0.999])[group] + rng.uniform(-1e-3, 1e-3, size=n).clip(-0.0015, 0.0005)
    rate1 = np.array([0.01, 0.3, 0.6])[group]
    truth = pd.Series(np.where(rng.random(n) < rate1, "1", "0"), index=[f"p{j}" for j in range(n)])
    answers = _crowd_answers(truth, rng.uniform(0.75, 0.9, size=30), 3, classes, seed=6)
    prior = np.c_[1 - p1, p1]
    fused = fuse_people(prior, truth.index, answers, classes, default_reliability=0.9)
    label = pd.Series(np.asarray(classes)[fused.posterior.to_numpy().argmax(1)], index=truth.index)
    votes = answers.groupby("item_id")["label"].agg(lambda s: s.mode()[0] if s.nunique() == 1 else None)
    unanimous = votes.dropna()
    overruled = (label.reindex(unanimous.index) != unanimous).sum()
    majority = answers.groupby("item_id")["label"].agg(lambda s: s.value_counts().index[0]).reindex(truth.index)
    assert overruled <= 0.01 * len(unanimous)
    assert (label == truth).mean() >= (majority == truth).mean()


def test_rows_without_model_evidence_are_not_recalibrated():
    # the pipeline blanks the prior (uniform) of seed and people-first items: no bin may give them one
    prior = np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.2, 0.8], [0.5, 0.5]])
    sym = L._confidence_bins(prior, 5)
    assert sym[2] == sym[4] == -1 and (sym[[0, 1, 3]] >= 0).all()
    q = np.array([[0.1, 0.9], [0.2, 0.8], [0.0, 1.0], [0.9, 0.1], [0.0, 1.0]])
    factor = L._bin_correction(q, np.ones(5, dtype=bool), prior, sym)
    assert np.allclose(factor[sym[[2, 4]]], 1.0)
    assert not np.allclose(factor[sym[[0, 1, 3]]], 1.0)


def test_models_bins_wait_for_overlap(monkeypatch):
    # from single answers the models' per-bin reliability would be learned from posteriors that contain the
    # models' own vote; like people's reliability it waits for items that two people answered
    rng = np.random.default_rng(8)
    truth = _truth(300)
    prior = _prior(truth, right=0.7, top=0.9)
    prior.iloc[::3] = prior.iloc[::3].to_numpy()[:, ::-1] * 0.5 + 0.5 / 3  # a second confidence level
    single = _crowd_answers(truth, rng.uniform(0.7, 0.9, size=10), 1, CLASSES, seed=9)
    with_bins = fuse_people(prior.to_numpy(), truth.index, single, CLASSES, default_reliability=0.9).posterior
    monkeypatch.setattr(L, "MODEL_BINS", 0)
    without = fuse_people(prior.to_numpy(), truth.index, single, CLASSES, default_reliability=0.9).posterior
    assert np.allclose(with_bins.to_numpy(), without.to_numpy())


# --------------------------------------------------------------------------- calibration against verified items


def _expert(truth: pd.Series, items, r: float, seed: int = 11) -> pd.DataFrame:
    """A verifier right with probability r (else a uniformly drawn other class) on `items`."""
    rng = np.random.default_rng(seed)
    labels = [truth[i] if rng.random() < r else rng.choice([c for c in CLASSES if c != truth[i]]) for i in items]
    return pd.DataFrame({"item_id": list(items), "worker_id": "expert", "label": labels, "reliability": r})


def _fooled_crowd(truth: pd.Series, fooled: float, seed: int = 12) -> pd.DataFrame:
    """Three answers per item; on a `fooled` share of the items all three give the same wrong class (dog's
    correlated errors: invisible in the answers, they agree with each other)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, t in truth.items():
        lab = t if rng.random() >= fooled else rng.choice([c for c in CLASSES if c != t])
        for w in rng.choice(12, size=3, replace=False):
            rows.append((i, f"w{w}", lab))
    return pd.DataFrame(rows, columns=["item_id", "worker_id", "label"])


def test_verified_items_stop_an_overconfident_fusion_from_stopping():
    # dog: correlated errors make the fusion claim ~1.0 on items 80 % right, the per-item rule stopped at 40 % of
    # the answers.  Calibrated against a random audit, the confidence is what the audit measured, and it asks on
    truth = _truth(400)
    answers = _fooled_crowd(truth, fooled=0.2)
    settings = LoopSettings(target=0.95, level=0.95, default_reliability=0.9, escalate_after=6, max_answers=6)
    blind = people_round(None, answers, settings, CLASSES, item_index=truth.index, budget_left=100)
    assert blind.stopped  # the fusion alone trusts itself
    audit = _expert(truth, truth.sample(80, random_state=1).index, r=0.95)
    res = people_round(None, answers, settings, CLASSES, item_index=truth.index, budget_left=100, verified=audit)
    assert not res.stopped and int((res.decisions["action"] == "ask").sum()) == 100
    conf = res.posterior.to_numpy().max(axis=1)
    label = np.asarray(CLASSES)[res.posterior.to_numpy().argmax(axis=1)]
    accuracy = float((label == truth.to_numpy()).mean())
    assert abs(float(conf.mean()) - accuracy) < 0.08  # calibrated; the raw fusion claimed ~1.0
    assert float(blind.fused.posterior.to_numpy().max(axis=1).mean()) - accuracy > 0.1


def test_verified_items_never_calibrate_themselves():
    rng = np.random.default_rng(3)
    post = rng.dirichlet(np.ones(3) * 0.3, size=200)
    pos = np.arange(0, 200, 4)
    label = post[pos].argmax(axis=1)
    label[::3] = (label[::3] + 1) % 3
    rel = np.full(len(pos), 0.95)
    a = L.calibrate_to_verified(post, pos, label, rel)
    flipped = label.copy()
    flipped[7] = (flipped[7] + 1) % 3
    b = L.calibrate_to_verified(post, pos, flipped, rel)
    assert np.allclose(a.posterior[pos[7]], b.posterior[pos[7]])  # its own label did not move it (cross-fit)
    assert not np.allclose(a.posterior[1], b.posterior[1])  # it does calibrate the items nobody verified


def test_few_verified_items_keep_the_confidence_conservative():
    post = np.tile([0.9999, 0.00005, 0.00005], (1000, 1))
    few = L.calibrate_to_verified(post, np.arange(5), np.zeros(5, dtype=int), np.full(5, 0.95))
    many = L.calibrate_to_verified(post, np.arange(600), np.zeros(600, dtype=int), np.full(600, 0.95))
    assert few.posterior[900].max() < 0.95  # five agreeing items do not vouch for 0.9999
    assert many.posterior[900].max() > 0.98


def test_a_noisy_verifier_does_not_make_the_fusion_look_worse():
    truth = _truth(400)
    post = np.full((400, 3), 0.005)
    post[np.arange(400), [CLASSES.index(t) for t in truth]] = 0.99
    audit = _expert(truth, truth.index[:300], r=0.9)
    pos, lab = np.arange(300), pd.Index(CLASSES).get_indexer(audit["label"])
    honest = L.calibrate_to_verified(post, pos, lab, np.full(300, 0.9))
    naive = L.calibrate_to_verified(post, pos, lab, np.full(300, 0.999))
    assert honest.measured_accuracy > 0.96 and naive.measured_accuracy < 0.94
    assert honest.posterior[350].max() > 0.95


def test_verified_items_never_sharpen_the_fusion():
    # 30 audited items that all agreed sharpened a 0.92-accurate fusion to 0.999 (bbc) before T >= 1
    post = np.tile([0.8, 0.1, 0.1], (300, 1))
    cal = L.calibrate_to_verified(post, np.arange(30), np.zeros(30, dtype=int), np.full(30, 0.95))
    assert cal.temperature >= 1.0 - 1e-6
    # what is left above the models' 0.8 is only the pull toward the measured accuracy, not a sharper fusion
    assert cal.posterior[100].max() <= cal.weight * 0.8 + (1 - cal.weight) * cal.measured_accuracy + 1e-9


def test_certification_is_a_fixed_sequence_that_stops_at_the_first_failure(monkeypatch):
    conf = np.r_[np.full(10, 0.995), np.full(10, 0.985), np.full(10, 0.975)]
    support = np.full(100, 0.999)

    def bound(c, m, level):  # passes on 10 and 30 items, fails on 20
        return {"n_unverified": len(c), "estimate": 0.99, "lower": {10: 0.99, 20: 0.9, 30: 0.99}[len(c)],
                "level": level, "n_calibration": m}

    monkeypatch.setattr(L, "unverified_bound", bound)
    out = L.certify_unverified(conf, np.ones(30, dtype=bool), support, 0.95, 0.98, grid=(0.99, 0.98, 0.97))
    assert out["threshold"] == 0.99 and int(out["certified"].sum()) == 10


def test_certification_starts_where_verified_items_support_it():
    conf = np.full(50, 0.999)
    few = L.certify_unverified(conf, np.ones(50, dtype=bool), np.full(L.CERTIFY_MIN_SUPPORT - 1, 0.9999), 0.95, 0.9)
    enough = L.certify_unverified(conf, np.ones(50, dtype=bool), np.full(200, 0.9999), 0.95, 0.9)
    assert few["threshold"] is None and enough["threshold"] is not None


def test_certified_unverified_items_are_accepted_and_the_rest_asked():
    truth = _truth(600)
    prior = _prior(truth, right=1.0, top=0.93)  # sure, yet not so sure that another answer is worth nothing
    prior.iloc[500:] = [0.5, 0.3, 0.2]  # items the models are unsure of
    crowd = Crowd(truth, r=0.9)  # nobody answered yet: the models' 0.99 is not re-tempered against people
    audit = _expert(truth, truth.index[20:500:2], r=0.99)
    res = people_round(prior, audit.iloc[:0][["item_id", "worker_id", "label"]], _settings(target=0.88), CLASSES,
                       budget_left=150, verified=audit)
    d = res.decisions
    nobody = ~d.index.isin(crowd.answers["item_id"]) & ~d.index.isin(audit["item_id"])
    sure, unsure = nobody & (np.arange(600) < 500), nobody & (np.arange(600) >= 500)
    assert res.extra["certified_threshold"] is not None
    assert (d.loc[sure, "action"] == "accept").all()
    assert all(r == ["certified"] for r in d.loc[sure, "reasons"])
    # the budget (150) is more than the unsure items (100): the certified ones are still not asked
    assert not res.extra["bound_met"] and (d.loc[unsure, "action"] == "ask").all()


def test_uncertified_items_are_asked_even_when_the_posterior_calls_them_settled(monkeypatch):
    # bbc: the posterior called the items nobody answered settled (no expected gain) and the loop stopped at 34 %
    # of the answers, the bound 0.977 below 0.98: uncertified items are asked while there is budget
    truth = _truth(1200)
    prior = _prior(truth, right=1.0, top=0.999999)
    audit = _expert(truth, truth.index[:1000], r=0.999)
    monkeypatch.setattr(L, "certify_unverified", lambda c, un, *a, **k: {
        "threshold": None, "certified": np.zeros_like(un), "bound": None, "bound_mask": None, "tested": []})
    res = people_round(prior, audit.iloc[:0][["item_id", "worker_id", "label"]], _settings(target=0.98), CLASSES,
                       budget_left=50, verified=audit)
    assert res.posterior.to_numpy().max(axis=1).min() > 0.999
    assert int((res.decisions["action"] == "ask").sum()) == 50 and not res.stopped


def test_replay_audit_is_a_stated_simulated_person_whose_answers_count():
    from benchmarks.replay import DEFAULTS, audit_size, run_seed

    truth = _truth(200)
    crowd = Crowd(truth, r=0.8)
    for _ in range(3):
        crowd.ask(truth.index)
    items = pd.DataFrame({"item_id": truth.index})
    out = run_seed(items, "none", crowd.answers, truth, CLASSES, dict(DEFAULTS), 0, budgets=(1.0,),
                   schedule=(0.1, 1.0))
    n_audit, _ = audit_size(200, DEFAULTS)
    seed_answers = int(0.1 * len(crowd.answers))
    assert n_audit == 20
    assert out["rounds"][0]["answers_used"] == seed_answers + n_audit
    assert out["rounds"][0]["verified_accuracy"] is not None  # the round was calibrated against the audit

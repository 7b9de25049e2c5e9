"""Issue 12, items 1-2: honest confidence and no silent auto-accept (routing, calibration, deferral)."""
import numpy as np
import pandas as pd

from factory.engine.routing import route_batch


def _fused3(labels, conf, ids):
    conf = np.asarray(conf, float)
    lab = np.asarray(labels)
    return pd.DataFrame({"label": lab, "confidence": conf,
                         **{f"prob_{c}": np.where(lab == c, conf, (1 - conf) / 2) for c in "abc"}},
                        index=pd.Index(ids, name="item_id"))


def test_route_batch_no_support_sends_a_label_no_labeler_gave_to_people():
    ids = ["i0", "i1", "i2", "i3"]
    fused = _fused3(["c", "a", "c", "b"], [0.99, 0.99, 0.99, 0.99], ids)
    # i0: models say a, b, b and the fusion says c; i2: all models say a, the fusion says c
    models = pd.DataFrame({"m1": ["a", "a", "a", "b"], "m2": ["b", "a", "a", "b"], "m3": ["b", "a", "a", "b"]},
                          index=fused.index)
    out = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, seed=0)
    assert out.loc["i0", "route"] == "review" and "no_support" in out.loc["i0", "reasons"]
    assert out.loc["i2", "route"] == "review" and out.loc["i2", "reasons"] == ["no_support"]  # no disagreement
    assert out.loc["i1", "route"] == "auto" and out.loc["i3", "route"] == "auto"
    # an unsupported label outranks a supported one at the same confidence when the budget is short
    short = route_batch(fused, models, confidence_threshold=0.9, audit_rate=0.0, review_budget=1, seed=0)
    assert short.loc["i0", "route"] == "review"


# ----------------------------------------------------------------------------- calibrated confidence
from factory.engine.calibration import cross_fit_confidence, expected_calibration_error  # noqa: E402


def _overconfident(n=3000, seed=0):
    """Models that say 0.99+ while being right 55-95% of the time (truth drawn from the true rate)."""
    rng = np.random.default_rng(seed)
    p_true = rng.uniform(0.55, 0.95, n)
    raw = 1.0 - (1.0 - p_true) * 0.02  # ranks right, level far too high
    correct = (rng.random(n) < p_true).astype(float)
    return raw, correct


def test_calibrated_confidence_fixes_overconfident_models():
    raw, correct = _overconfident()
    y = np.full(raw.size, np.nan)
    y[:400] = correct[:400]  # people verified 400 items
    cal, info = cross_fit_confidence(raw, y, seed=0)
    unverified = slice(400, None)
    ece_raw = expected_calibration_error(raw[unverified], correct[unverified])
    ece_cal = expected_calibration_error(cal[unverified], correct[unverified])
    assert ece_raw > 0.2 and ece_cal < 0.05 and ece_cal < ece_raw / 4
    assert info["n_verified"] == 400 and info["ece_calibrated"] < info["ece_raw"] / 3  # cross-fitted, noisier
    assert np.median(cal) < 0.85 < np.median(raw)


def test_cross_fitting_an_items_own_label_never_changes_its_own_confidence():
    raw, correct = _overconfident(n=600, seed=1)
    y = np.full(raw.size, np.nan)
    y[:200] = correct[:200]
    base, _ = cross_fit_confidence(raw, y, seed=0)
    for j in (0, 57, 199):
        flipped = y.copy()
        flipped[j] = 1.0 - flipped[j]
        again, _ = cross_fit_confidence(raw, flipped, seed=0)
        assert again[j] == base[j]  # its own label is not in the calibrator that scores it
        assert not np.allclose(again, base)  # ... but it does calibrate the others


def test_few_verified_items_shrink_to_the_measured_accuracy_not_the_models_099():
    raw = np.full(50, 0.99)
    none, info = cross_fit_confidence(raw, np.full(50, np.nan), prior_accuracy=0.7)
    assert np.allclose(none, 0.7) and info["prior_weight"] == 1.0
    y = np.full(50, np.nan)
    y[:4] = 1.0  # four verified, all right: a little evidence, not certainty
    few, _ = cross_fit_confidence(raw, y, prior_accuracy=0.7)
    assert 0.7 < few[10] < 0.8


# ----------------------------------------------------------------------------- a weak-model dataset, end to end
import json  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from factory import pipeline as P  # noqa: E402
from factory import release as R  # noqa: E402
from factory.ingest import ingest, item_id_for  # noqa: E402
from factory.simulate import SimulatedPool  # noqa: E402

FLAGS = {"disagreement", "no_support", "low_confidence", "bias"}


def _random_word_texts(n, seed, k=3, vocab=300, tilt=0.25):
    """Texts of 25 random words whose word frequencies differ only a little by class: weak models by design."""
    rng = np.random.default_rng(1234)  # the class word distributions are fixed; `seed` draws the items
    base = rng.dirichlet(np.ones(vocab))
    dists = [base * np.exp(tilt * rng.normal(size=vocab)) for _ in range(k)]
    dists = [d / d.sum() for d in dists]
    words = np.array([f"w{i:03d}" for i in range(vocab)])
    r = np.random.default_rng(seed)
    y = r.integers(0, k, n)
    return [" ".join(r.choice(words, size=25, p=dists[c])) for c in y], [f"c{c}" for c in y]


def _weak_spec(budget):
    return {"name": "weak", "description": "random words, three barely different classes (test)",
            "license": "CC-BY-4.0", "task": {"type": "classification", "input": "text", "metadata": []},
            "classes": [{"name": f"c{i}", "definition": f"class {i}"} for i in range(3)],
            "guideline": {"version": "1.0"}, "seed": {"size": 30},
            "quality": {"confidence_threshold": 0.9, "audit_rate": 0.05, "max_quarantine_rate": 0.5},
            "review": {"budget": budget}}


def _stage(fx, root, instance, pool, stage, batch_id=None):
    """Run a Dagster stage; while it waits for people, the simulated people answer."""
    from assets.runner import run_stage

    for _ in range(8):
        r = run_stage(root, "weak", stage, instance, batch_id)
        if not r.waiting:
            assert r.success, (r.failures, r.failed_checks)
            return r
        assert pool.answer_open_tasks(fx.ledger, fx.spec("weak")) > 0
    raise AssertionError(f"{stage} still waiting: {r.failures}")


def _route_batch_of(fx, root, instance, path, pool, invent=False):
    """Ingest and prepare through Dagster; train, predict, fuse and route through the pipeline functions
    (so a test can stand between fusion and routing)."""
    from assets.runner import add_batch_partition

    spec = fx.spec("weak")
    b = ingest(path, spec, fx.ledger).batch_id
    add_batch_partition(instance, "weak", b)
    _stage(fx, root, instance, pool, "prepare", b)
    pool.answer_open_tasks(fx.ledger, spec)  # the seed
    tr = P.train_labelers(fx, "weak", b)
    P.model_predictions(fx, "weak", b, tr)
    P.fuse(fx, "weak", b)
    invented = None
    if invent:  # a fusion that invents a class: every labeler says one thing, the fused label is another
        fused = P.read_table(fx, "fused_labels", "weak", b)
        preds = P.read_table(fx, "model_predictions", "weak", b)
        wide = preds.pivot(index="item_id", columns="labeler", values="label")
        seeded = set(fx.ledger.tasks("weak", batch_id=b).query("kind == 'seed'")["item_id"])
        agree = wide.index[(wide.nunique(axis=1) == 1) & ~wide.index.isin(seeded)]
        invented = agree[0]
        other = next(c for c in spec.class_names if c != wide.loc[invented].iloc[0])
        i = fused.index[fused["item_id"] == invented][0]
        fused.loc[i, ["label", "confidence"]] = [other, 0.999]
        P.write_table(fused, fx.paths.table("fused_labels", "weak", b))
    routes = P.review_tasks(fx, "weak", b)
    return b, routes.set_index("item_id"), invented


@pytest.fixture(scope="module")
def weak_flow(tmp_path_factory):
    """Two batches of a weak-model dataset with simulated people; batch 1 is finalised and released,
    batch 2 only routed (its budget funds batch 1's deferred items first)."""
    from assets.runner import instance_for
    from factory.workforce import Workforce

    base = tmp_path_factory.mktemp("weak")
    root = base / "factory"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "weak.yaml").write_text(yaml.safe_dump(_weak_spec(0.3)))
    (base / "dagster_home").mkdir()
    (base / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_HOME", str(root))
    mp.setenv("DAGSTER_HOME", str(base / "dagster_home"))
    mp.delenv("FACTORY_DATABASE_URL", raising=False)
    fx = P.Factory.at(root)
    instance = instance_for(root)
    t1, y1 = _random_word_texts(240, seed=1)
    t2, y2 = _random_word_texts(120, seed=2)
    truth = {item_id_for(t): y for t, y in zip(t1 + t2, y1 + y2)}
    pool = SimulatedPool(truth, seed=0, acc_low=0.9, acc_high=0.97)
    pool.register(Workforce(fx.ledger))
    pd.DataFrame({"text": t1}).to_csv(base / "b1.csv", index=False)
    pd.DataFrame({"text": t2}).to_csv(base / "b2.csv", index=False)
    b1, routes1, invented = _route_batch_of(fx, root, instance, base / "b1.csv", pool, invent=True)
    deferred_after_routing = P.deferred_items(fx, "weak", b1)
    pool.answer_open_tasks(fx.ledger, fx.spec("weak"))
    _stage(fx, root, instance, pool, "finalise", b1)
    final1 = P.read_table(fx, "final_labels", "weak", b1)
    _stage(fx, root, instance, pool, "release")
    rel = R.latest_release(fx, "weak")
    b2, routes2, _ = _route_batch_of(fx, root, instance, base / "b2.csv", pool)
    yield dict(fx=fx, root=root, b1=b1, b2=b2, routes1=routes1, routes2=routes2, invented=invented,
               deferred1=deferred_after_routing, final1=final1, release=rel, truth=truth)
    mp.undo()


@pytest.mark.slow
def test_weak_models_flagged_items_go_to_people_or_wait_never_auto(weak_flow):
    r = weak_flow["routes1"]
    flagged = r["reasons"].map(lambda x: bool(FLAGS & set(x)))
    assert flagged.sum() > 0.5 * len(r[r["route"] != "seed"])  # the models are weak: most items are flagged
    assert not (flagged & (r["route"] == "auto")).any()  # ... and none of them is accepted without a person
    deferred = r[r["route"] == "deferred"]
    assert len(deferred) > 0 and deferred["reasons"].map(lambda x: "budget" in x and bool(FLAGS & set(x))).all()
    assert set(weak_flow["deferred1"]["item_id"]) == set(deferred.index)  # the state is in the ledger
    spec = weak_flow["fx"].spec("weak")
    to_people = r["route"].isin(["review", "audit"]).sum()
    assert to_people <= spec.review.items_allowed(len(r[r["route"] != "seed"]))


@pytest.mark.slow
def test_no_support_label_is_routed_not_accepted(weak_flow):
    r = weak_flow["routes1"].loc[weak_flow["invented"]]
    assert "no_support" in r["reasons"] and r["route"] in ("review", "deferred")


@pytest.mark.slow
def test_fused_confidence_is_calibrated_on_people_and_raw_is_kept(weak_flow):
    fx, b1 = weak_flow["fx"], weak_flow["b1"]
    fused = P.read_table(fx, "fused_labels", "weak", b1)
    assert {"confidence", "raw_confidence"} <= set(fused.columns)
    checks = fx.ledger.latest_checks("weak")
    info = json.loads(checks[(checks["asset"] == "confidence_calibration") & (checks["batch_id"] == b1)]
                      .iloc[-1]["details"])
    assert info["n_verified"] >= 25 and info["method"] in ("platt", "isotonic", "identity")
    # honest on this dataset: the mean calibrated confidence is near the models' real accuracy
    truth = weak_flow["truth"]
    acc = float((fused["label"] == fused["item_id"].map(truth)).mean())
    assert abs(float(fused["confidence"].mean()) - acc) < 0.15
    assert float(fused["raw_confidence"].mean()) != pytest.approx(float(fused["confidence"].mean()), abs=1e-3)


@pytest.mark.slow
def test_deferred_items_have_no_label_and_are_left_out_of_the_release_with_a_count(weak_flow):
    final = weak_flow["final1"].set_index("item_id")
    d = final[final["source"] == "deferred"]
    assert len(d) == len(weak_flow["deferred1"]) > 0
    assert d["label"].isna().all() and final.loc[final["source"] != "deferred", "label"].notna().all()
    rel = weak_flow["release"]
    table = pd.read_parquet(f"{rel['path']}/labels.parquet")
    assert not table["item_id"].isin(d.index).any() and rel["n_items"] == len(final) - len(d)
    cert = json.loads(open(f"{rel['path']}/quality/certificate.json").read())
    assert cert["deferred"]["items"] == len(d) and cert["deferred"]["reasons"].get("budget") == len(d)
    card = open(f"{rel['path']}/README.md").read()
    assert f"{len(d)} deferred item(s)" in card


@pytest.mark.slow
def test_next_batch_budget_funds_the_deferred_items_first(weak_flow):
    fx, b1 = weak_flow["fx"], weak_flow["b1"]
    tasks = fx.ledger.tasks("weak", batch_id=b1)
    funded = tasks[tasks["reasons"].map(lambda x: "deferred" in json.loads(x))]
    n_before = len(weak_flow["deferred1"])
    budget = fx.spec("weak").review.items_allowed(int((weak_flow["routes2"]["route"] != "seed").sum()))
    reserve = weak_flow["routes2"].attrs["auto_accept"]["audit_reserved"]
    assert len(funded) == min(budget - reserve, n_before) > 0
    # the audit batch 2 needs to be certifiable comes first: deferred items never crowd it out
    assert (weak_flow["routes2"]["route"] == "audit").sum() >= reserve
    assert set(funded["item_id"]) <= set(weak_flow["deferred1"]["item_id"])
    assert len(P.deferred_items(fx, "weak", b1)) == n_before - len(funded)
    assert P.needs_finalise(fx, "weak", b1)  # batch 1 is finalised again once they are answered


@pytest.mark.slow
def test_cli_status_and_tasks_list_show_deferred(weak_flow):
    from factory.cli import main

    root = str(weak_flow["root"])
    n = len(P.deferred_items(weak_flow["fx"], "weak"))
    assert n > 0
    res = CliRunner().invoke(main, ["tasks", "list", "--dataset", "weak", "--status", "deferred", "--root", root,
                                    "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == n and all("budget" in r["reasons"] for r in rows)
    res = CliRunner().invoke(main, ["tasks", "list", "--dataset", "weak", "--root", root])
    assert f"{n} flagged item(s) are deferred" in res.output
    res = CliRunner().invoke(main, ["status", "--dataset", "weak", "--root", root])
    assert res.exit_code == 0, res.output
    assert "deferred" in res.output and "--status deferred" in res.output
    # every batch's work, finished or not: batch 1 is final with the deferred items it funded now open as tasks;
    # batch 2 is routed and waits (its budget went to batch 1's backlog). Each says what comes next.
    res = CliRunner().invoke(main, ["status", "--dataset", "weak", "--root", root, "--json"])
    work = {w["batch_id"]: w for w in json.loads(res.output)["work"]}
    fx, b1, b2 = weak_flow["fx"], weak_flow["b1"], weak_flow["b2"]
    tasks = fx.ledger.tasks("weak")
    n_open = {b: int(((tasks["batch_id"] == b) & (tasks["status"] == "open")).sum()) for b in (b1, b2)}
    assert work[b1]["stage"] == "final" and work[b2]["stage"] == "routed"
    assert work[b1]["open"] == n_open[b1] > 0 and work[b2]["open"] == n_open[b2]
    for b in (b1, b2):
        assert work[b]["deferred"] == len(P.deferred_items(fx, "weak", b)) > 0
    res = CliRunner().invoke(main, ["status", "--dataset", "weak", "--root", root])
    assert f"batch {b1}: final; tasks open {n_open[b1]}" in res.output
    assert f"factory tasks list --dataset weak --batch {b1}" in res.output
    assert f"batch {b2}: routed; tasks open {n_open[b2]}" in res.output


@pytest.mark.slow
def test_cli_run_says_how_many_flagged_items_exceed_the_budget(weak_flow):
    from factory.cli import main

    fx, b2 = weak_flow["fx"], weak_flow["b2"]
    res = CliRunner().invoke(main, ["run", "--dataset", "weak", "--batch", b2, "--stage", "annotate",
                                    "--root", str(weak_flow["root"])])
    n = len(P.deferred_items(fx, "weak", b2))
    assert n > 0, res.output
    assert f"{n} flagged item(s) exceed review.budget" in res.output and "--status deferred" in res.output


@pytest.mark.slow
def test_fuse_never_overrules_labelers_that_agree(fx):
    """Weak labelers (40 noisy BBC seed labels): Dawid-Skene over the three of them relabelled items all
    three agreed on (62 of 2,185 in benchmarks/fusion_support.py); fuse() must keep their class."""
    from factory.datasets import load_bbc_news
    from factory.labelers import make_labelers

    news = load_bbc_news(seed=0).reset_index(drop=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(news))
    news["item_id"] = [f"it_{i:020x}" for i in range(len(news))]
    train, test = news.iloc[idx[:40]], news.iloc[idx[40:]]
    classes = fx.spec("news").class_names
    y = train["label"].to_numpy().copy()
    flip = rng.random(len(y)) < 0.3
    y[flip] = rng.choice(classes, int(flip.sum()))
    frames = []
    for lb in make_labelers(seed=0):
        lb.fit(train[["item_id", "text"]], list(y), classes)
        p = lb.predict_proba(test[["item_id", "text"]])
        f = pd.DataFrame(p, columns=[f"prob_{c}" for c in classes])
        f.insert(0, "item_id", test["item_id"].to_numpy())
        f.insert(1, "labeler", lb.info.name)
        f.insert(2, "labeler_version", f"{lb.info.name}@test")
        f.insert(3, "label", np.asarray(classes, dtype=object)[p.argmax(axis=1)])
        f.insert(4, "confidence", p.max(axis=1))
        frames.append(f)
    preds = pd.concat(frames, ignore_index=True)
    P.write_table(preds, fx.paths.table("model_predictions", "news", "b_weak"))
    fused = P.fuse(fx, "news", "b_weak").set_index("item_id")
    wide = preds.pivot(index="item_id", columns="labeler", values="label")
    agree = wide[wide.nunique(axis=1) == 1].iloc[:, 0]
    assert len(agree) > 500
    assert (fused.loc[agree.index, "label"] == agree).all()

"""The three collaboration modes end to end through the Dagster assets, people simulated with known skill."""
import json
import math

import pandas as pd
import pytest
import yaml

from assets.runner import add_batch_partition, instance_for, run_stage
from factory.ingest import ingest
from factory.pipeline import read_table
from factory.simulate import SimulatedPool
from tests.conftest import news_spec, write_csv

pytestmark = pytest.mark.slow


def _use_spec(root, **overrides):
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(**overrides)))


def _stage(fx, root, instance, pool, stage, batch_id):
    """Run a stage; while it waits for people, the simulated people answer."""
    for _ in range(6):
        r = run_stage(root, "news", stage, instance, batch_id)
        if not r.waiting:
            assert r.success, r.failures
            return r
        assert pool.answer_open_tasks(fx.ledger, fx.spec("news")) > 0
    raise AssertionError(f"{stage} still waiting: {r.failures}")


def _run(fx, root, bbc_small, pool, tmp_path, n=80):
    instance = instance_for(root)
    rep = ingest(write_csv(tmp_path / "b.csv", bbc_small["text"][:n]), fx.spec("news"), fx.ledger)
    add_batch_partition(instance, "news", rep.batch_id)
    for st in ("prepare", "annotate", "finalise"):
        _stage(fx, root, instance, pool, st, rep.batch_id)
        if st != "finalise":
            pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    return rep.batch_id


def test_human_model_people_first_models_verify(root, fx, bbc_small, truth, tmp_path):
    _use_spec(root, mode="human-model", human_model={"overlap": 2, "flag_tier": "L2"})
    fx = type(fx).at(root)
    pool = SimulatedPool(truth, n_reviewers=6, acc_low=0.75, acc_high=0.8, seed=3)  # noisy people: flags happen
    batch = _run(fx, root, bbc_small, pool, tmp_path)
    tasks = fx.ledger.tasks("news", batch_id=batch)
    ann = tasks[tasks["kind"] == "annotate"]
    assert ann.groupby("item_id").size().eq(2).all() and ann["item_id"].nunique() == 80  # every item, twice
    assert ann.groupby("item_id")["annotator"].nunique().eq(2).all()  # blind overlap: two different people
    routes = read_table(fx, "routing", "news", batch).set_index("item_id")
    reasons = routes["reasons"].map(json.loads)
    assert set(routes["route"]) <= {"annotated", "verify"} and (routes["mode"] == "human-model").all()
    disagree = ann.groupby("item_id")["answer"].nunique() > 1
    assert routes.loc[disagree[disagree].index, "route"].eq("verify").all()  # people disagreed -> flagged
    assert reasons[disagree[disagree].index].map(lambda r: "annotators_disagree" in r).all()
    verify = tasks[tasks["kind"] == "verify"]
    assert set(verify["item_id"]) == set(routes.index[routes["route"] == "verify"])
    assert (verify["required_tier"] == "L2").all() and verify["suggestion"].isna().all()
    final = read_table(fx, "final_labels", "news", batch).set_index("item_id")
    assert set(final["source"]) <= {"annotated", "calibrated", "arbitrated"}
    assert (final.loc[routes.index[routes["route"] == "annotated"], "source"] == "annotated").all()
    acc_final = (final["label"] == final.index.map(truth)).mean()
    first = ann.groupby("item_id")["answer"].first()
    acc_people = (first == first.index.map(truth)).mean()
    assert acc_final > acc_people  # verification and escalation beat one noisy person
    # a human-model batch auto-accepts nothing, so there is no audit sample: the release still
    # goes out and certifies no auto-accept threshold (it crashed on the empty sample before)
    r = run_stage(root, "news", "release", instance_for(root))
    assert r.success, r.failures or r.failed_checks
    cert = json.loads(next((root / "releases" / "news").glob("*/quality/certificate.json")).read_text())
    assert cert["auto_accept_guarantee"]["threshold"] is None and cert["auto_accept_guarantee"]["n_sample"] == 0


def test_prelabel_model_verifier_excludes_disagreements(root, fx, bbc_small, truth, tmp_path):
    _use_spec(root, mode="prelabel-model",
              prelabel_model={"accept_confidence": 0.6, "on_disagreement": "exclude", "audit_rate": 0.05})
    fx = type(fx).at(root)
    pool = SimulatedPool(truth, acc_low=1.0, acc_high=1.0, expert_accuracy=1.0)
    batch = _run(fx, root, bbc_small, pool, tmp_path, n=120)
    routes = read_table(fx, "routing", "news", batch).set_index("item_id")
    assert set(routes["route"]) <= {"seed", "verified", "excluded", "audit"}
    ex = routes.index[routes["route"] == "excluded"]
    ver = routes.index[routes["route"] == "verified"]
    assert len(ex) and len(ver)
    final = read_table(fx, "final_labels", "news", batch).set_index("item_id")
    assert not set(ex) & set(final.index)  # excluded items get no label ...
    events = fx.ledger.events("news", batch_id=batch, kind="exclusion")
    assert set(events["item_id"]) == set(ex)  # ... and the reason is recorded
    assert all("verifier" in " ".join(json.loads(p)["reasons"]) or "below" in " ".join(json.loads(p)["reasons"])
               for p in events["payload"])
    assert (final.loc[ver, "source"] == "verified").all()
    n_audit = (routes["route"] == "audit").sum()
    # the minimum audit sample: a share of ALL the batch's items, or what the accuracy gate needs if more
    from factory.quality import audit_target
    n_ok = len(ver) + n_audit
    need = audit_target(fx.spec("news").quality, routes.loc[routes["route"].isin(["verified", "audit"]), "confidence"])
    assert n_audit == max(min(math.ceil(0.05 * len(routes)), n_ok), min(need, n_ok))
    preds = read_table(fx, "model_predictions", "news", batch)
    assert preds["labeler"].nunique() == 3
    verifier_notes = [r for rs in routes["reasons"].map(json.loads) for r in rs if r.startswith("verifier ")]
    assert verifier_notes and all(r.startswith("verifier glove_sif_logreg says") for r in verifier_notes)
    # the embedding labeler embedded through the factory's cache folder, by content hash
    assert list((root / "data" / "embeddings").glob("glove-*/*.npz"))


def test_slices_route_items_by_metadata(root, fx, tmp_path):
    _use_spec(root, mode="prelabel-human",
              slices=[{"field": "source_file", "equals": ["legal"], "mode": "human-model"}])
    fx = type(fx).at(root)
    from factory.pipeline import item_modes

    p = tmp_path / "s.csv"
    pd.DataFrame({"text": ["a contract clause", "a sports report"], "source_file": ["legal", "web"]}).to_csv(p, index=False)
    rep = ingest(p, fx.spec("news"), fx.ledger)
    items = fx.ledger.items("news", batch_id=rep.batch_id)
    modes = item_modes(fx.spec("news"), items)
    assert modes.to_dict() == {items.item_id[items.text == "a contract clause"].iloc[0]: "human-model",
                               items.item_id[items.text == "a sports report"].iloc[0]: "prelabel-human"}


def _people_effort(fx, dataset, batch):
    """Items people decided (annotated, calibrated, arbitrated) and answers people gave, for one batch."""
    final = read_table(fx, "final_labels", dataset, batch)
    tasks = fx.ledger.tasks(dataset, batch_id=batch)
    return (int(final["source"].isin(["annotated", "calibrated", "arbitrated"]).sum()),
            int((tasks["status"] == "answered").sum()))


def test_modes_are_ordered_by_human_effort(root, bbc_small, truth, tmp_path):
    """The same 150 items in the three modes: prelabel-model (people on the seed, the audit and the verifier's
    disagreements only) needs fewer people-decided items and answers than prelabel-human (flags within the
    budget), which needs fewer than human-model (every item, twice). Fails when prelabel-model stops accepting
    what its verifier agreed with, or human-model stops putting people first."""
    from factory.pipeline import Factory

    # the point-estimate gate: on 150 items an audit sized for the lower bound (53) would dominate every mode
    quality = {"confidence_threshold": 0.8, "audit_rate": 0.05, "max_quarantine_rate": 0.5, "accuracy_gate": "estimate"}
    modes = {"prelabel-model": {"prelabel_model": {"accept_confidence": 0.8, "audit_rate": 0.05}},
             "prelabel-human": {}, "human-model": {"human_model": {"overlap": 2, "flag_tier": "L2"}}}
    for mode, extra in modes.items():
        (root / "datasets" / f"{mode}.yaml").write_text(yaml.safe_dump(
            news_spec(name=mode, mode=mode, quality=quality, **extra)))
    fx = Factory.at(root)
    instance = instance_for(root)
    effort = {}
    for mode in modes:
        spec = fx.spec(mode)
        pool = SimulatedPool(truth, seed=0)
        # one file per mode (the batch id is the file's hash): the same texts, tagged with the mode
        csv = write_csv(tmp_path / f"{mode}.csv", bbc_small["text"], {"source_file": [mode] * len(bbc_small)})
        rep = ingest(csv, spec, fx.ledger)
        add_batch_partition(instance, mode, rep.batch_id)
        for st in ("prepare", "annotate", "finalise"):
            for _ in range(6):
                r = run_stage(root, mode, st, instance, rep.batch_id)
                if not r.waiting:
                    break
                pool.answer_open_tasks(fx.ledger, spec)
            assert r.success and not r.waiting, (mode, st, r.failures)
            if st != "finalise":
                pool.answer_open_tasks(fx.ledger, spec)
        effort[mode] = _people_effort(fx, mode, rep.batch_id)
        if mode == "prelabel-model":
            routes = read_table(fx, "routing", mode, rep.batch_id)
            assert (routes["route"] == "verified").sum() > len(routes) / 2  # the verifier's agreement is accepted
    items, answers = {m: e[0] for m, e in effort.items()}, {m: e[1] for m, e in effort.items()}
    assert items["prelabel-model"] < items["prelabel-human"] < items["human-model"] == len(bbc_small), effort
    assert answers["prelabel-model"] < answers["prelabel-human"] < answers["human-model"], effort

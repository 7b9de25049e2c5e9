"""multi-label end to end through the CLI: init --type multi-label, ingest, run, answer sets, release, verify, trace.

The data set is built here: each text names the tags it carries through keywords (several per tag, so the
labelers can learn them from a small seed), tags drawn at random, some items with none.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import add_crew, answer_until_final, write_csv

TAGS = {"sport": ["football match", "the striker scored", "tennis final", "the league table"],
        "politics": ["the election", "parliament voted", "the minister said", "a new government policy"],
        "economy": ["stock markets fell", "inflation rose", "the central bank", "jobs and wages"]}
FILLER = ["on monday", "according to reports", "in the capital", "this week", "people said", "later on"]


def make_items(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, truth = [], []
    names = list(TAGS)
    for i in range(n):
        tags = [t for t in names if rng.random() < 0.4]
        parts = [str(rng.choice(TAGS[t])) for t in tags] + [str(rng.choice(FILLER)) for _ in range(2)]
        rng.shuffle(parts)
        texts.append(f"Item {i}: " + ", ".join(parts) + ".")
        truth.append("|".join(tags))
    return texts, truth


def _answer_open(cli, truth_by_text: dict, tmp_path: Path, dataset: str, name: str) -> int:
    open_tasks = [t for t in json.loads(cli("tasks", "list", "--dataset", dataset, "--json").output)
                  if t.get("status", "open") == "open"]
    if not open_tasks:
        return 0
    who = {"arbitrate": "expert-1", "second": "rev-2", "seed": "ann-1"}
    rows = [{"task_id": t["task_id"], "annotator": who.get(t["kind"], "rev-1"),
             "labels": truth_by_text[t["text"]], "rationale": "keywords" if t["kind"] == "arbitrate" else ""}
            for t in open_tasks]
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    out = cli("tasks", "import", tmp_path / name).output
    assert f"imported {len(rows)} answers" in out
    return len(rows)


def test_multilabel_flow_from_init_to_trace(cli, root, fx, tmp_path):
    out = cli("init", "tags", "--type", "multi-label").output
    assert "wrote" in out
    spec_path = root / "datasets" / "tags.yaml"
    text = spec_path.read_text()
    assert "type: multi-label" in text and "'|'" in text  # the commented template of the type
    spec = yaml.safe_load(text)
    assert [c["name"] for c in spec["classes"]] == ["sport", "politics", "economy"]
    spec["seed"]["size"] = 24
    # a 24-item seed makes modest models (calibrated set confidence ~0.4-0.7): a low threshold lets some through
    spec["quality"].update(audit_rate=0.5, min_accuracy=0.5, confidence_threshold=0.55)
    spec["review"]["budget"] = 1.0
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "tags").output

    add_crew(cli)
    texts, truth = make_items(60)
    truth_by_text = dict(zip(texts, truth))
    src = write_csv(tmp_path / "tags.csv", texts)
    cli("ingest", src, "--dataset", "tags")
    batch = fx.ledger.batches("tags").iloc[0]["batch_id"]
    assert "wait for people" in cli("run", "--dataset", "tags", "--batch", batch).output
    listing = json.loads(cli("tasks", "list", "--batch", batch, "--json").output)
    assert len(listing) == 24 and all(t["kind"] == "seed" for t in listing)

    # one answer by hand: a set joined by '|'; a class outside the schema is refused with the cause
    t0 = listing[0]
    res = cli("tasks", "answer", t0["task_id"], "sport|weather", "--annotator", "ann-1", ok=False)
    assert res.exit_code == 2 and "weather" in res.output
    cli("tasks", "answer", t0["task_id"], truth_by_text[t0["text"]], "--annotator", "ann-1")
    # the rest from a CSV with a labels column (an empty cell is the empty set)
    assert _answer_open(cli, truth_by_text, tmp_path, "tags", "seed.csv") == 23

    out = cli("run", "--dataset", "tags", "--batch", batch, ok=False).output
    preds = pd.read_parquet(fx.paths.table("model_predictions", "tags", batch))
    assert preds["labeler"].nunique() == 3  # three one-vs-rest families
    assert {"prob_sport", "prob_politics", "prob_economy"} <= set(preds.columns)
    # the models learnt the keywords: their pooled set is the truth on most items never shown to them
    fused = pd.read_parquet(fx.paths.table("fused_labels", "tags", batch))
    items = fx.ledger.items("tags").set_index("item_id")["text"]
    exact = (fused["label"] == fused["item_id"].map(items).map(truth_by_text)).mean()
    assert exact >= 0.7, exact
    routes = pd.read_parquet(fx.paths.table("routing", "tags", batch))
    reasons = set(routes["reasons"].map(json.loads).explode().dropna())
    assert {"disagreement", "low_confidence", "audit"} <= reasons, reasons
    assert any(r.startswith("uncertain: ") for r in reasons)  # routing names the classes to look at first
    assert {"audit", "review"} <= set(routes["route"])  # the audit: machine-accepted sets checked by people
    # review/audit tasks, then second opinions or arbitrations finalise may open
    answer_until_final(cli, "tags", batch, out,
                       lambda i: _answer_open(cli, truth_by_text, tmp_path, "tags", f"round{i}.csv"))
    final = pd.read_parquet(fx.paths.table("final_labels", "tags", batch))
    assert final["label"].map(lambda s: set(s.split("|")) - {""} <= set(TAGS)).all()
    assert "release: ok" in cli("run", "--dataset", "tags", "--stage", "release").output
    rel = Path(fx.ledger.releases("tags").iloc[0]["path"])
    assert "every file matches" in cli("verify-release", rel).output

    # the release carries sets as lists of class names
    table = pd.read_parquet(rel / "labels.parquet")
    assert all(isinstance(v, np.ndarray) and set(v) <= set(TAGS) for v in table["label"])
    by_text = dict(zip(table["text"], table["label"].map(list)))
    right = np.mean([by_text[t] == [c for c in TAGS if c in truth_by_text[t].split("|")] for t in by_text])
    assert right >= 0.9, right

    import datasets

    ds = datasets.load_dataset(str(rel))
    split = next(iter(ds.values()))
    feat = split.features["label"]
    names = getattr(getattr(feat, "feature", None), "names", None) or feat[0].names
    assert names == list(TAGS)
    first = split[0]
    assert [names[j] for j in first["label"]] == by_text[first["text"]]

    import mlcroissant as mlc

    mlc.Dataset(jsonld=str(rel / "croissant.json"))  # raises on an invalid Croissant file

    trace = json.loads(cli("trace", t0["item_id"], "--dataset", "tags", "--json").output)["events"]
    kinds = [e["kind"] for e in trace]
    assert kinds[0] == "human" and "model" in kinds and kinds[-1] == "final"
    assert trace[0]["label"] == truth_by_text[t0["text"]]

    (rel / "labels.parquet").write_bytes(b"tampered")
    assert cli("verify-release", rel, ok=False).exit_code == 1


def test_multilabel_labelers_predict_sets(tmp_path):
    from factory import tasks
    from factory.labelers import Labeler

    texts, truth = make_items(80, seed=1)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(80)], "text": texts})
    tt = tasks.get("multi-label")
    classes = list(TAGS)
    labelers = tt.make_labelers(seed=0)
    assert len({lb.family for lb in labelers}) == 3
    for lb in labelers:
        lb.fit(items[:50], truth[:50], classes)
        p = lb.predict_proba(items[50:])
        assert p.shape == (30, 3) and ((p > 0) & (p < 1)).all()
        labels, conf = tt.decide(p, classes)
        assert list(labels) == lb.predict(items[50:])
        assert ((conf > 0) & (conf <= 1)).all()
        if lb.family != "pretrained-embedding":  # bag-of-words learn these keywords from 50 items
            assert np.mean(np.array(labels) == np.array(truth[50:])) >= 0.6
        lb.save(tmp_path / lb.name)
        again = Labeler.load(tmp_path / lb.name)
        assert np.allclose(again.predict_proba(items[50:]), p)
    with pytest.raises(ValueError, match="weather"):
        labelers[0].fit(items[:2], ["sport", "weather"], classes)
    # a class the seed never ticks keeps a small probability, never 0
    lb = tt.make_labelers()[0].fit(items[:10], ["sport"] * 5 + [""] * 5, classes)
    assert (lb.predict_proba(items[10:12])[:, 1] > 0).all()


def test_decide_thresholds_marginals_and_prices_the_set():
    from factory import tasks

    tt = tasks.get("multi-label")
    labels, conf = tt.decide(np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]]), ["a", "b", "c"])
    assert list(labels) == ["a|c", ""]
    assert np.allclose(conf, [0.9 * 0.8 * 0.6, 0.9 ** 3])
    assert tt.uncertain_classes(np.array([[0.9, 0.45, 0.6], [0.99, 0.01, 0.02]]), ["a", "b", "c"]) == [["b", "c"], []]
    one = tasks.get("classification").decide(np.array([[0.2, 0.8]]), ["x", "y"])
    assert list(one[0]) == ["y"] and np.allclose(one[1], [0.8])


def test_multilabel_runs_in_every_mode():
    from factory.tasks import get

    assert set(get("multi-label").modes) == {"prelabel-human", "human-model", "prelabel-model"}


def test_people_and_the_models_pooled_set_are_fused_as_sets():
    from factory import tasks

    tt = tasks.get("multi-label")
    models = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "worker_id": "models:pooled", "label": ["a", "a", "b"]})
    people = pd.DataFrame({"item_id": ["i1", "i1", "i2"], "worker_id": ["p1", "p2", "p1"], "label": ["a|b", "a|b", "a"]})
    out = tt.fuse_with_models(people, models, ["a", "b", "c"])
    assert sorted(out.index) == ["i1", "i2"]  # only what people answered
    assert out.at["i1", "label"] == "a|b"  # two people outweigh the models' one set
    assert out.at["i2", "label"] == "a" and out.at["i2", "confidence"] > out.at["i1", "confidence"] * 0 + 0.5


def test_in_schema_checks_each_class_of_a_set(root):
    from factory.pipeline import in_schema
    from factory.spec import template, load_spec

    (root / "datasets" / "tags.yaml").write_text(template("tags", "multi-label"))
    spec = load_spec(root / "datasets" / "tags.yaml")
    got = in_schema(spec, pd.Series(["sport|politics", "", "politics|sport", "sport|weather", "economy"]))
    assert got.tolist() == [True, True, False, False, True]  # not canonical order is not the stored form


def test_the_standards_label_check_becomes_the_types():
    from checks.standards import expectations, typed_expectations
    from factory import tasks

    decl = expectations("final_labels", "factory-default-1.2.0")
    assert typed_expectations(decl, tasks.get("classification"), ["a", "b"]) == decl  # unchanged for one class
    sets = typed_expectations(decl, tasks.get("multi-label"), ["a", "b"])
    check = next(e for e in sets if e["name"] == "label_in_schema")  # the name asset checks are declared under
    assert check["type"] == "expect_column_values_to_match_regex" and [e["name"] for e in sets] == [e["name"] for e in decl]


def test_multilabel_runs_in_prelabel_model_mode(cli, root, fx, tmp_path):
    """Model pre-label + model verification for sets: the embedding family verifies the pooled set of the others."""
    cli("init", "tags", "--type", "multi-label")
    spec_path = root / "datasets" / "tags.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["mode"] = "prelabel-model"
    spec["seed"]["size"] = 24
    spec["quality"].update(min_accuracy=0.5)
    spec["prelabel_model"] = {"accept_confidence": 0.5, "on_disagreement": "to-human", "audit_rate": 0.1}
    spec_path.write_text(yaml.safe_dump(spec))
    add_crew(cli)
    texts, truth = make_items(60)
    truth_by_text = dict(zip(texts, truth))
    cli("ingest", write_csv(tmp_path / "tags.csv", texts), "--dataset", "tags")
    batch = fx.ledger.batches("tags").iloc[0]["batch_id"]
    cli("run", "--dataset", "tags", "--batch", batch, ok=False)
    assert _answer_open(cli, truth_by_text, tmp_path, "tags", "seed.csv") == 24
    out = cli("run", "--dataset", "tags", "--batch", batch, ok=False).output
    routes = pd.read_parquet(fx.paths.table("routing", "tags", batch)).set_index("item_id")
    reasons = routes["reasons"].map(json.loads)
    assert set(routes["route"]) <= {"seed", "verified", "review", "audit"} and (routes["route"] == "verified").any()
    assert reasons[routes["route"] == "verified"].map(lambda r: r == ["verifier_agrees"]).all()
    # the verifier is the embedding family, kept out of the pooled set it checks
    notes = [r for rs in reasons for r in rs if r.startswith("verifier ")]
    assert all(r.startswith("verifier ovr_glove_logreg says") for r in notes)
    assert (routes["route"] == "audit").sum() >= 6  # audit_rate 0.1 of 60 items
    answer_until_final(cli, "tags", batch, out,
                       lambda i: _answer_open(cli, truth_by_text, tmp_path, "tags", f"round{i}.csv"))
    final = pd.read_parquet(fx.paths.table("final_labels", "tags", batch)).set_index("item_id")
    verified = routes.index[routes["route"] == "verified"]
    assert (final.loc[verified, "source"] == "verified").all()
    items = fx.ledger.items("tags").set_index("item_id")["text"]
    right = (final["label"] == final.index.map(items).map(truth_by_text)).mean()
    assert right >= 0.8, right
    assert "release" in cli("run", "--dataset", "tags", "--stage", "release", ok=False).output


def test_the_set_verifier_needs_the_same_set_and_a_joint_probability():
    from factory.tasks.multilabel import MultiLabel

    classes = ["a", "b"]
    fused = pd.DataFrame({"label": ["a", "a", "a|b"], "prob_a": [0.9, 0.9, 0.6], "prob_b": [0.1, 0.1, 0.6]})
    ver = pd.DataFrame({"label": ["a", "", "a|b"], "prob_a": [0.8, 0.4, 0.6], "prob_b": [0.2, 0.2, 0.6]})
    ok = MultiLabel().verifier_accepts(fused, ver, classes, 0.8)
    # agreeing confident sets pass; a different set never does; agreeing but unsure (joint 0.69^2) does not
    assert ok.tolist() == [True, False, False]
    assert MultiLabel().verifier_accepts(fused, ver, classes, 0.4).tolist() == [True, False, True]


def test_multilabel_runs_in_human_model_mode(cli, root, fx, tmp_path):
    """People first (two blind sets per item), the one-vs-rest labelers verify class by class, flagged sets go up."""
    cli("init", "tags", "--type", "multi-label")
    spec_path = root / "datasets" / "tags.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["mode"] = "human-model"
    spec["human_model"] = {"overlap": 2, "flag_tier": "L2"}
    spec["quality"].update(min_accuracy=0.5)
    # a logic rule on sets: the sports desk files no economy (any forbidden class of a set is the anomaly)
    spec["task"]["metadata"] = ["desk"]
    spec["rules"] = [{"name": "sports-desk", "field": "desk", "equals": ["sports"], "forbids": ["economy"]}]
    spec_path.write_text(yaml.safe_dump(spec))
    for who, tier in (("ann-1", "L1"), ("ann-2", "L1"), ("rev-1", "L2"), ("rev-2", "L2"), ("expert-1", "expert")):
        cli("annotators", "add", who, "--tier", tier)
    texts, truth = make_items(60)
    truth_by_text = dict(zip(texts, truth))
    desk = ["sports" if i % 4 == 0 else "news" for i in range(len(texts))]
    cli("ingest", write_csv(tmp_path / "tags.csv", texts, {"desk": desk}), "--dataset", "tags")
    batch = fx.ledger.batches("tags").iloc[0]["batch_id"]
    cli("run", "--dataset", "tags", "--batch", batch, ok=False)
    open_tasks = json.loads(cli("tasks", "list", "--dataset", "tags", "--json").output)
    assert len(open_tasks) == 120 and {t["kind"] for t in open_tasks} == {"annotate"}  # every item, twice
    # people answer blind: ann-1 is right; ann-2 drops a true class on some items (a missed tag)
    rows, seen = [], set()
    for t in sorted(open_tasks, key=lambda t: t["task_id"]):
        right = truth_by_text[t["text"]]
        first = t["item_id"] not in seen
        seen.add(t["item_id"])
        tags = right.split("|") if right else []
        wrong = "|".join(tags[1:]) if tags and int(t["item_id"][-2:], 16) % 3 == 0 else right
        rows.append({"task_id": t["task_id"], "annotator": "ann-1" if first else "ann-2",
                     "labels": right if first else wrong})
    pd.DataFrame(rows).to_csv(tmp_path / "first.csv", index=False)
    assert "imported 120 answers" in cli("tasks", "import", tmp_path / "first.csv").output
    out = cli("run", "--dataset", "tags", "--batch", batch, ok=False).output
    routes = pd.read_parquet(fx.paths.table("routing", "tags", batch)).set_index("item_id")
    reasons = routes["reasons"].map(json.loads)
    assert set(routes["route"]) == {"annotated", "verify"} and (routes["mode"] == "human-model").all()
    ann = pd.DataFrame(rows).merge(pd.DataFrame(open_tasks)[["task_id", "item_id"]], on="task_id")
    split = ann.groupby("item_id")["labels"].nunique() > 1
    assert routes.loc[split[split].index, "route"].eq("verify").all()  # people disagreed -> another person
    assert reasons[split[split].index].map(lambda r: "annotators_disagree" in r).all()
    desk_of = dict(zip(texts, desk))
    text_of = fx.ledger.items("tags").set_index("item_id")["text"]
    breaks = [i for i in routes.index if desk_of[text_of[i]] == "sports" and "economy" in truth_by_text[text_of[i]]]
    assert breaks and routes.loc[breaks, "route"].eq("verify").all()
    assert reasons[breaks].map(lambda r: any(x.startswith("rule:sports-desk") for x in r)).all()
    answer_until_final(cli, "tags", batch, out,
                       lambda i: _answer_open(cli, truth_by_text, tmp_path, "tags", f"round{i}.csv"))
    final = pd.read_parquet(fx.paths.table("final_labels", "tags", batch)).set_index("item_id")
    assert set(final["source"]) <= {"annotated", "calibrated", "arbitrated"}
    items = fx.ledger.items("tags").set_index("item_id")["text"]
    right = (final["label"] == final.index.map(items).map(truth_by_text)).mean()
    assert right >= 0.95, right
    assert "release: ok" in cli("run", "--dataset", "tags", "--stage", "release").output


def test_set_verification_flags_the_class_the_models_contradict():
    from factory.tasks.multilabel import MultiLabel

    classes = ["a", "b"]
    rng = np.random.default_rng(0)
    n = 60
    truth_a = rng.random(n) < 0.5
    truth_b = rng.random(n) < 0.5
    oos = np.column_stack([np.where(truth_a, 0.95, 0.05), np.where(truth_b, 0.9, 0.1)])
    given = ["|".join(c for c, t in zip(classes, (x, y)) if t) for x, y in zip(truth_a, truth_b)]
    bad = int(np.flatnonzero(truth_a)[0])  # a person missed 'a' on this item
    given[bad] = "b" if truth_b[bad] else ""
    sus = MultiLabel().suspect_sets(given, oos, classes, index=[f"i{i}" for i in range(n)])
    assert sus.index[sus["flag"]].tolist() == [f"i{bad}"]
    assert sus.at[f"i{bad}", "reasons"][0].startswith("class 'a': not ticked, the models say yes")
    # people's posterior of the class is blended in (as for one label): people sure the tag is absent clear it
    people = np.column_stack([np.array([g.split("|").count("a") for g in given], float),
                              np.array([g.split("|").count("b") for g in given], float)])
    sure = MultiLabel().suspect_sets(given, oos, classes, people, index=[f"i{i}" for i in range(n)])
    assert not sure["flag"].any()


def test_a_set_nobody_gave_for_the_item_becomes_the_likeliest_given_set():
    from factory.tasks.multilabel import given_set

    classes = ["a", "b", "c"]
    fused = pd.DataFrame({"label": ["a|b", "c"], "confidence": [0.7, 0.9],
                          "prob_a": [0.9, 0.1], "prob_b": [0.8, 0.1], "prob_c": [0.1, 0.95]},
                         index=pd.Index(["i1", "i2"], name="item_id"))
    answers = pd.DataFrame({"item_id": ["i1", "i1", "i2"], "worker_id": ["p1", "p2", "p1"],
                            "label": ["a", "b|c", "c"]})
    out = given_set(fused, answers, classes)
    assert out.at["i1", "label"] == "a"  # 0.9*0.2*0.9 beats 0.1*0.8*0.1; the fused 'a|b' nobody gave
    assert out.at["i1", "confidence"] == pytest.approx(min(0.9 * 0.2 * 0.9, 1 - 0.7))
    assert out.at["i2", "label"] == "c" and out.at["i2", "confidence"] == 0.9  # given: kept as fused


def test_people_and_models_fusion_never_returns_a_set_the_item_was_not_given(monkeypatch):
    """The wiring: the label-set fusion's candidates are pooled over all items, so it can answer a set nobody gave
    for this item; fuse_with_models (escalation and final labels) turns it into a given one."""
    from factory.tasks import multilabel as ml

    def invents(answers, labels, **opts):  # a fusion that picks a set no answer of i1 gave
        idx = pd.Index(sorted(answers["item_id"].unique()), name="item_id")
        return pd.DataFrame({"labels": [["a", "c"]] * len(idx), "confidence": 0.8, "n_answers": 2,
                             "prob_a": 0.9, "prob_b": 0.3, "prob_c": 0.6}, index=idx)

    monkeypatch.setattr(ml, "aggregate_multilabel", invents)
    people = pd.DataFrame({"item_id": ["i1", "i1"], "worker_id": ["p1", "p2"], "label": ["a", "b"]})
    models = pd.DataFrame({"item_id": ["i1"], "worker_id": ["models:pooled"], "label": ["a|b"]})
    out = ml.MultiLabel().fuse_with_models(people, models, ["a", "b", "c"])
    assert out.at["i1", "label"] in {"a", "b", "a|b"}
    assert out.at["i1", "confidence"] <= 0.2 + 1e-12  # never surer than the mass the fusion left off its own set

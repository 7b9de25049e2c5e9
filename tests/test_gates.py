"""Gates that block: min_accuracy on the interval's lower bound, "audit too small to certify" as a refusal,
refusals on every surface (release(), `factory release create`, `factory run --stage release`, `release list`),
and a card/certificate that claim only what happened."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from conftest import news_spec, write_csv
from factory.datasets import load_bbc_news
from factory.errors import ReleaseRefused
from factory.ingest import ingest, item_id_for
from factory.pipeline import Factory, write_table
from factory.release import release
from tests.test_release import CLASSES, finalise


@pytest.fixture(scope="module")
def news():
    df = load_bbc_news(limit_per_class=12, seed=3).reset_index(drop=True)
    return df, {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}


def make_root(tmp_path: Path, **quality) -> Path:
    root = tmp_path / "factory"
    (root / "datasets").mkdir(parents=True)
    q = {"confidence_threshold": 0.8, "audit_rate": 0.05, "max_quarantine_rate": 0.5} | quality
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec(seed_size=2, quality=q)))
    return root


def make_batch(fx, texts, truth, path, plan: list[tuple[str, bool, list[str]]]) -> str:
    """A finished batch straight through the ledger.  plan: one (route, machine_right, routing reasons) per
    item; the machine label is the truth when machine_right, another class otherwise; people answer the truth
    on every item routed to them; `finalise` (tests/test_release.py) writes the final labels."""
    spec = fx.spec("news")
    b = ingest(write_csv(path, texts), spec, fx.ledger).batch_id
    raw = fx.ledger.items("news", batch_id=b)[["item_id", "batch_id", "text", "meta", "source_file", "source_row"]]
    write_table(raw, fx.paths.table("raw_items", "news", b))
    meta = {"spec_version": spec.version, "guideline_version": spec.guideline.version, "run_id": "run-a"}
    preds, events, tasks, routes = [], [], [], []
    for item, (route, right, reasons) in zip(raw["item_id"], plan):
        t = truth[item]
        lab = t if right else next(c for c in CLASSES if c != t)
        for lb in ("word_tfidf_logreg", "char_ngram_sgd"):
            preds.append({"item_id": item, "labeler": lb, "labeler_version": f"{lb}@1.0+abc", "label": lab,
                          "confidence": 0.9})
            events.append(dict(batch_id=b, item_id=item, kind="model", actor=f"{lb}@1.0+abc", label=lab,
                               confidence=0.9, payload={}, dedup_key=f"m:{b}:{item}:{lb}", **meta))
        if route != "auto":
            tasks.append(dict(task_id=f"t_{item}", dataset="news", batch_id=b, item_id=item, kind=route,
                              reasons=reasons or [route], suggestion=lab, run_id="run-a"))
        routes.append({"item_id": item, "route": route, "reasons": json.dumps(reasons)})
    fx.ledger.append_events("news", events)
    fx.ledger.create_tasks(tasks)
    for t in tasks:
        fx.ledger.answer_task(t["task_id"], truth[t["item_id"]], "ann-1", CLASSES, spec_version=spec.version,
                              guideline_version=spec.guideline.version)
    write_table(pd.DataFrame(preds), fx.paths.table("model_predictions", "news", b))
    write_table(pd.DataFrame(routes), fx.paths.table("routing", "news", b))
    finalise(fx, b)
    return b


def plan(n_audit: int, audit_wrong: int, n_auto: int, n_review: int = 2, flagged_auto: int = 0):
    p = [("audit", i >= audit_wrong, ["audit"]) for i in range(n_audit)]
    p += [("review", False, ["disagreement"]) for _ in range(n_review)]
    p += [("auto", True, ["disagreement", "budget"]) for _ in range(flagged_auto)]
    p += [("auto", True, []) for _ in range(n_auto)]
    return p


def test_nine_of_ten_audited_is_refused_everywhere(tmp_path, news):
    """The measured failure: 1.1.0 was certified PASS on 9 of 10 audited (Wilson [0.596, 0.982])."""
    df, truth = news
    root = make_root(tmp_path, min_accuracy=0.9)
    fx = Factory.at(root)
    make_batch(fx, df["text"][:30], truth, tmp_path / "b1.csv", plan(10, 1, 18))
    with pytest.raises(ReleaseRefused, match=r"release 1.0.0 of 'news' REFUSED") as e:
        release(fx, "news")
    msg = str(e.value)
    assert "gate audit_accuracy: 0.59585 not >= 0.9" in msg and "audit too small to certify" in msg
    assert not (fx.paths.releases / "news" / "1.0.0").exists() and fx.ledger.releases("news").empty
    rel_dir = fx.paths.releases / "news"
    assert not rel_dir.exists() or not list(rel_dir.iterdir())  # no temporary folder left either

    cli = CliRunner()
    out = cli.invoke(main(), ["release", "create", "--dataset", "news", "--root", str(root)])
    assert out.exit_code == 3 and "release 1.0.0 of 'news' REFUSED" in out.output
    assert "gate audit_accuracy" in out.output and "Traceback" not in out.output
    listed = cli.invoke(main(), ["release", "list", "--dataset", "news", "--root", str(root)])
    assert listed.exit_code == 0 and "1.0.0  REFUSED" in listed.output and "audit_accuracy" in listed.output
    rows = json.loads(cli.invoke(main(), ["release", "list", "--dataset", "news", "--root", str(root), "--json"]).output)
    assert [(r["version"], r["status"]) for r in rows] == [("1.0.0", "REFUSED")]

    # the same through the Dagster asset graph: `factory run --stage release` exits non-zero, naming the gate
    out = cli.invoke(main(), ["run", "--dataset", "news", "--stage", "release", "--root", str(root)])
    assert out.exit_code == 3, out.output
    assert "release 1.0.0 of 'news' REFUSED" in out.output and "gate audit_accuracy" in out.output
    assert "Traceback" not in out.output and "Stack Trace" not in out.output and fx.ledger.releases("news").empty


def test_a_big_enough_audit_certifies_and_the_opt_out_says_it_is_not_certified(tmp_path, news):
    df, truth = news
    root = make_root(tmp_path, min_accuracy=0.9)
    fx = Factory.at(root)
    make_batch(fx, df["text"][:50], truth, tmp_path / "b1.csv", plan(40, 0, 8))  # 40/40: Wilson low 0.912
    r = release(fx, "news")
    cert = json.loads((Path(r["path"]) / "quality" / "certificate.json").read_text())
    gate = {g["name"]: g for g in cert["gates"]}["audit_accuracy"]
    assert gate["passed"] is True and gate["value"] == pytest.approx(0.91238, abs=1e-4) and cert["passed"]
    # verify-release recomputes the verdict from the evidence: a certificate edited to claim 0.95 is caught
    import shutil

    from factory.release import verify_release, write_listings
    forged = tmp_path / "forged"
    shutil.copytree(r["path"], forged)
    doc = json.loads((forged / "quality" / "certificate.json").read_text())
    next(g for g in doc["gates"] if g["name"] == "audit_accuracy")["threshold"] = 0.95
    (forged / "quality" / "certificate.json").write_text(json.dumps(doc))
    write_listings(forged)  # an insider rewrites the listings too
    assert verify_release(r["path"])["ok"]
    problems = verify_release(forged)["problems"]
    assert any("accuracy gate says passed" in p and "0.9124 < 0.95" in p for p in problems), problems

    # 9/10 with the explicit opt-out: released, and the certificate and card say the bound was not reached
    root2 = make_root(tmp_path / "b", min_accuracy=0.9, accuracy_gate="estimate")
    fx2 = Factory.at(root2)
    make_batch(fx2, df["text"][:30], truth, tmp_path / "b2.csv", plan(10, 1, 18))
    r2 = release(fx2, "news")
    cert2 = json.loads((Path(r2["path"]) / "quality" / "certificate.json").read_text())
    assert any("not a certified bound" in s for s in cert2["statements"])
    assert "not a certified bound" in (Path(r2["path"]) / "README.md").read_text()
    listed = CliRunner().invoke(main(), ["release", "list", "--dataset", "news", "--root", str(root2)]).output
    assert "1.0.0  PASS (point estimate, not certified)" in listed


@pytest.mark.parametrize("flagged_auto", [0, 3])
def test_the_card_says_flagged_items_went_to_people_only_when_they_did(tmp_path, news, flagged_auto):
    df, truth = news
    root = make_root(tmp_path, min_accuracy=0.6)
    fx = Factory.at(root)
    make_batch(fx, df["text"][:30], truth, tmp_path / "b1.csv", plan(12, 0, 14 - flagged_auto, 4, flagged_auto))
    r = release(fx, "news")
    path = Path(r["path"])
    card = (path / "README.md").read_text()
    cert = json.loads((path / "quality" / "certificate.json").read_text())
    assert cert["routing"]["flagged"] == 4 + flagged_auto
    assert cert["routing"]["flagged_accepted_without_a_person"] == flagged_auto
    if flagged_auto:
        assert "go to people" not in card and "decided by a person" not in card
        assert f"{flagged_auto} were accepted WITHOUT a person" in card and "budget 3" in card
    else:
        assert "Every one of the 4 items routing flagged" in card and "WITHOUT" not in card
    # nothing unmeasured is printed as None: a plain sentence says what was not measured
    assert "None" not in card and "None" not in " ".join(cert["statements"])
    assert any("No gold items were given" in s for s in cert["statements"])
    assert "None" not in (path / "quality" / "report.html").read_text().split("<img")[0]


def main():
    from factory.cli import main as m

    return m


def _confident(n: int, conf: float = 0.995) -> pd.DataFrame:
    idx = pd.Index([f"it_{i:04d}" for i in range(n)], name="item_id")
    labels = [CLASSES[i % len(CLASSES)] for i in range(n)]
    probs = {f"prob_{c}": [conf if lab == c else (1 - conf) / (len(CLASSES) - 1) for lab in labels] for c in CLASSES}
    return pd.DataFrame({"label": labels, "confidence": conf, **probs}, index=idx)


def test_route_batch_audits_at_least_audit_min():
    from factory.engine.routing import route_batch

    fused = _confident(200)
    agree = pd.DataFrame({"m1": fused["label"], "m2": fused["label"]})
    kw = dict(confidence_threshold=0.8, audit_rate=0.02, seed=0)
    assert (route_batch(fused, agree, **kw)["route"] == "audit").sum() == 4
    assert (route_batch(fused, agree, audit_min=53, **kw)["route"] == "audit").sum() == 53
    assert (route_batch(fused, agree, audit_min=500, **kw)["route"] == "audit").sum() == 200


def test_the_pipeline_sizes_the_audit_for_the_accuracy_gate():
    from factory.routing_policy import prelabel_human_routes, prelabel_model_routes
    from factory.quality import audit_sample_size, audit_target
    from factory.spec import parse_spec

    spec = parse_spec(news_spec(quality={"confidence_threshold": 0.8, "audit_rate": 0.02, "min_accuracy": 0.9}))
    # confident models (0.995): sized for 99% right, 53 items, not the 2% audit_rate (6 of 300)
    assert audit_target(spec.quality, [0.995] * 300) == audit_sample_size(0.9, expected_accuracy=0.99) == 53
    fused = _confident(300)
    agree = pd.DataFrame({"m1": fused["label"], "m2": fused["label"]})
    budget = spec.review.items_allowed(len(fused))
    r = prelabel_human_routes(spec, fused, agree, {}, 0, 0.8, budget)
    assert (r["route"] == "audit").sum() == 53
    # model pre-label + model verification: the verified items' audit is sized the same way
    preds = pd.concat([fused.reset_index().assign(labeler=n) for n in ("word_tfidf", "char_sgd", "lsa_knn")])
    r = prelabel_model_routes(spec, preds, fused.index, 0)
    assert (r["route"] == "audit").sum() == 53
    # the opt-out gates on the point estimate and keeps audit_rate alone
    est = parse_spec(news_spec(quality={"audit_rate": 0.02, "accuracy_gate": "estimate"}))
    assert (prelabel_human_routes(est, fused, agree, {}, 0, 0.8, budget)["route"] == "audit").sum() == 6


def test_batch_quality_reports_ece_and_reliability_bins_on_verified_items(tmp_path, news):
    from factory.engine.calibration import expected_calibration_error
    from factory.quality import reliability_markdown
    from factory.release import measure_batch

    df, truth = news
    fx = Factory.at(make_root(tmp_path, min_accuracy=0.6))
    b = make_batch(fx, df["text"][:30], truth, tmp_path / "b1.csv", plan(12, 3, 12, 4))
    q = measure_batch(fx, "news", b)
    cal = q["measures"]["calibration"]
    final = pd.read_parquet(fx.paths.table("final_labels", "news", b))
    checked = final[final["route"].isin(["audit", "review"])]  # what people verified: 12 audited + 4 reviewed
    want = expected_calibration_error(checked["fused_confidence"], checked["fused_label"] == checked["label"], bins=10)
    assert cal["verified"]["n"] == 16 and cal["verified"]["ece"] == pytest.approx(want, abs=1e-6)
    assert cal["audit"]["n"] == 12 and cal["audit"]["accuracy"] == pytest.approx(9 / 12, abs=1e-6)
    assert sum(b["n"] for b in cal["verified"]["bins"]) == 16
    assert "| confidence bin | items |" in reliability_markdown(cal)


def test_the_certificate_counts_a_proportional_subsample_of_uneven_audits():
    """Batches audited at different rates: each keeps the lowest rate's share, so the pooled sample is self-weighting."""
    from factory.quality import proportional_audit

    # batch a: 800 accepted, 53 audited (6.6%); batch b: 1000 accepted, 30 audited (3%)
    rows = []
    for b, accepted, audited in (("a", 800, 53), ("b", 1000, 30)):
        rows += [(b, f"{b}{i}", "audit" if i < audited else "verified", "calibrated" if i < audited else "verified")
                 for i in range(accepted)]
    df = pd.DataFrame(rows, columns=["batch", "item_id", "route", "source"])
    keep = proportional_audit(df["batch"], df["route"], df["source"].eq("verified"), df["item_id"])
    kept = df[keep].groupby("batch").size()
    assert kept["b"] == 30 and kept["a"] == round(800 * 30 / 1000) == 24
    assert set(df.loc[keep, "route"]) == {"audit"}
    # the subsample is blind to labels and reproducible: the same rows every time
    assert keep.equals(proportional_audit(df["batch"], df["route"], df["source"].eq("verified"), df["item_id"]))
    # one batch, or equal rates: everything audited counts
    one = df[df["batch"] == "a"]
    assert proportional_audit(one["batch"], one["route"], one["source"].eq("verified"), one["item_id"]).sum() == 53


def test_release_evidence_marks_the_audit_beyond_the_proportional_share(fx):
    """The release's evidence (what the certificate and verify-release count) keeps the proportional audit only."""
    from factory.pipeline import write_table
    from factory.release import AUDIT_SURPLUS, _evidence

    for b, accepted, audited in (("b1", 800, 53), ("b2", 1000, 30)):
        n = accepted
        write_table(pd.DataFrame({
            "item_id": [f"{b}-{i}" for i in range(n)],
            "route": ["audit" if i < audited else "verified" for i in range(n)],
            "fused_label": "sport", "fused_confidence": 0.99, "label": "sport",
            "source": ["calibrated" if i < audited else "verified" for i in range(n)]}),
            fx.paths.table("final_labels", "news", b))
    ev = _evidence(fx, "news", ["b1", "b2"])
    batch = ev["item_id"].str.split("-").str[0]
    assert ev[ev["route"] == "audit"].groupby(batch).size().to_dict() == {"b1": 24, "b2": 30}
    assert (ev["route"] == AUDIT_SURPLUS).sum() == 53 - 24
    assert "_batch" not in ev.columns

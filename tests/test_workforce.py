"""The tiered workforce: certification, continuous evaluation, refusals, dispatch rules."""
import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory.errors import TaskError
from factory.ingest import ingest
from factory.gate import submit
from factory.workforce import RANK, TIERS, Policy, Workforce, dispatch, open_qualification
from tests.conftest import write_csv

POLICY = Policy(pass_threshold={"L1": 0.6, "L2": 0.8, "L3": 0.9, "expert": 0.95}, test_size=10,
                suspend_below=0.7, promote_above=0.9, min_gold_answers=10)


@pytest.fixture
def team(fx, bbc_small, truth, tmp_path):
    """A dataset with 40 gold items and a registry."""
    rep = ingest(write_csv(tmp_path / "b.csv", bbc_small["text"][:60]), fx.spec("news"), fx.ledger)
    items = fx.ledger.items("news", batch_id=rep.batch_id)["item_id"].tolist()
    wf = Workforce(fx.ledger)
    wf.add_gold("news", {i: truth[i] for i in items[:40]})
    wf.add("ann-good", "L1")
    wf.add("ann-bad", "L1")
    wf.add("exp-1", "expert", domains=["news"])
    return wf, rep.batch_id, items


def _take_test(fx, wf, who, tier, truth, n_right):
    tids = open_qualification(fx, "news", who, tier, 10)
    tasks = fx.ledger.tasks("news", batch_id="qualification").set_index("task_id").loc[tids]
    assert tasks["suggestion"].isna().all()  # the gold label never reaches the annotator
    for k, (tid, t) in enumerate(tasks.iterrows()):
        gold = truth[t["item_id"]]
        label = gold if k < n_right else next(c for c in fx.spec("news").class_names if c != gold)
        submit(fx, tid, label, who)
    return wf.grade("news", who, tier, POLICY)


def test_certification_pass_and_fail(fx, team, truth):
    wf, _, _ = team
    ok = _take_test(fx, wf, "ann-good", "L2", truth, n_right=9)
    assert ok["passed"] and wf.get("ann-good")["tier"] == "L2"
    bad = _take_test(fx, wf, "ann-bad", "L2", truth, n_right=7)
    assert not bad["passed"] and wf.get("ann-bad")["tier"] == "L1"
    kinds = list(wf.events("ann-bad")["kind"])
    assert kinds == ["added", "failed_certification"]
    assert "7/10 correct" in wf.events("ann-bad").iloc[-1]["reason"]


def test_a_qualification_task_belongs_to_its_candidate(fx, team):
    wf, _, _ = team
    tids = open_qualification(fx, "news", "ann-good", "L2", 10)
    with pytest.raises(TaskError, match="held by another person"):
        submit(fx, tids[0], "tech", "ann-bad")
    assert "refused_answer" in set(wf.events("ann-bad")["kind"])


def test_suspension_below_the_floor_and_refusal_after(fx, team, truth):
    wf, batch, items = team
    _take_test(fx, wf, "ann-bad", "L1", truth, n_right=2)   # 2/10: Wilson upper ~0.51 < 0.7
    _take_test(fx, wf, "ann-good", "L1", truth, n_right=10)
    changes = wf.evaluate("news", POLICY)
    assert [c["annotator_id"] for c in changes if c["kind"] == "suspended"] == ["ann-bad"]
    assert wf.get("ann-bad")["status"] == "suspended" and wf.get("ann-good")["status"] == "active"
    assert "entirely below 70%" in wf.events("ann-bad").iloc[-1]["reason"]
    fx.ledger.create_tasks([dict(task_id="t_x", dataset="news", batch_id=batch, item_id=items[50], kind="review",
                                 reasons=["x"], required_tier="L1")])
    with pytest.raises(TaskError, match="suspended"):
        submit(fx, "t_x", "tech", "ann-bad")
    assert wf.events("ann-bad").iloc[-1]["kind"] == "refused_answer"


def test_promotion_is_proposed_not_applied(fx, team, truth):
    wf, _, _ = team
    for tier in ("L1", "L2", "L3"):  # 30 right answers on gold: Wilson lower ~0.89..0.9+
        open_qualification(fx, "news", "ann-good", tier, 10, seed=RANK[tier])
    for t in fx.ledger.tasks("news", batch_id="qualification", status="open").itertuples():
        submit(fx, t.task_id, truth[t.item_id], "ann-good")
    n = len(wf.gold_answers("news"))
    policy = Policy(POLICY.pass_threshold, promote_above=0.85, min_gold_answers=10)
    changes = wf.evaluate("news", policy)
    assert n >= 20 and [c["kind"] for c in changes] == ["promotion_proposed"]
    assert wf.get("ann-good")["tier"] == "L1"  # a proposal: a person decides
    assert wf.evaluate("news", policy) == []   # proposed once


def test_review_of_own_label_tier_and_arbitration_rules(fx, team):
    wf, batch, items = team
    it = items[45]
    fx.ledger.create_tasks([
        dict(task_id="t_a", dataset="news", batch_id=batch, item_id=it, kind="review", reasons=[], required_tier="L1"),
        dict(task_id="t_b", dataset="news", batch_id=batch, item_id=it, kind="second", reasons=[], required_tier="L1"),
        dict(task_id="t_c", dataset="news", batch_id=batch, item_id=it, kind="second", reasons=[], required_tier="L3"),
        dict(task_id="t_d", dataset="news", batch_id=batch, item_id=it, kind="arbitrate", reasons=[],
             required_tier="expert")])
    submit(fx, "t_a", "tech", "ann-good")
    with pytest.raises(TaskError, match="nobody reviews their own label"):
        submit(fx, "t_b", "tech", "ann-good")
    with pytest.raises(TaskError, match="needs tier L3"):
        submit(fx, "t_c", "tech", "ann-bad")
    with pytest.raises(TaskError, match="needs tier expert"):
        submit(fx, "t_d", "tech", "ann-bad", rationale="sure")
    with pytest.raises(TaskError, match="needs a rationale"):
        submit(fx, "t_d", "tech", "exp-1")
    with pytest.raises(TaskError, match="not in the annotator registry"):
        submit(fx, "t_d", "tech", "stranger", rationale="x")
    res = submit(fx, "t_d", "business", "exp-1", rationale="the article is about a merger")
    arb = fx.ledger.events("news", item_id=it, kind="arbitration")
    assert res["arbitration"] and json.loads(arb.iloc[0]["payload"])["rationale"] == "the article is about a merger"


people_st = st.lists(st.tuples(st.sampled_from(TIERS), st.integers(1, 4)), min_size=1, max_size=6)
tasks_st = st.lists(st.tuples(st.integers(0, 5), st.sampled_from(TIERS), st.sampled_from(["review", "second", "annotate"])),
                    min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(people_st, tasks_st, st.dictionaries(st.integers(0, 5), st.sets(st.integers(0, 5), max_size=3), max_size=6),
       st.integers(0, 1000))
def test_dispatch_never_breaks_tier_blindness_or_limits(people, tasks, answered, seed):
    ppl = pd.DataFrame({"annotator_id": [f"p{i}" for i in range(len(people))], "tier": [t for t, _ in people],
                        "status": "active", "max_open_tasks": [m for _, m in people], "domains": "[]"})
    tk = pd.DataFrame({"task_id": [f"t{i}" for i in range(len(tasks))], "item_id": [f"i{it}" for it, _, _ in tasks],
                       "required_tier": [t for _, t, _ in tasks], "kind": [k for _, _, k in tasks]})
    seen = {f"i{k}": {f"p{p}" for p in v} for k, v in answered.items()}
    out = dispatch(tk, ppl, seen, seed=seed)
    tiers = ppl.set_index("annotator_id")["tier"]
    limits = ppl.set_index("annotator_id")["max_open_tasks"]
    t = tk.set_index("task_id")
    for tid, who in out.items():
        assert RANK[tiers[who]] >= RANK[t.at[tid, "required_tier"]]          # qualified
        assert who not in seen.get(t.at[tid, "item_id"], set())               # blind, never their own label
    pairs = [(t.at[tid, "item_id"], who) for tid, who in out.items()]
    assert len(pairs) == len(set(pairs))                                     # one person per item copy
    assert (out.value_counts() <= limits.reindex(out.value_counts().index)).all()  # per-person limit


def test_guideline_gap_lists_similar_disputes_and_a_bump_requeues_them(fx, team, root):
    import yaml

    from factory.guidelines import open_question, questions
    from factory.pipeline import record_spec

    wf, batch, items = team
    disputed = items[40:46]
    fx.ledger.create_tasks([dict(task_id=f"t_s{i}", dataset="news", batch_id=batch, item_id=it, kind="second",
                                 reasons=["second_opinion"], required_tier="L2") for i, it in enumerate(disputed)])
    with pytest.raises(TaskError, match="only an expert"):
        open_question(fx, "news", disputed[0], "ann-good", "satire")
    q = open_question(fx, "news", disputed[0], "exp-1", "the guideline says nothing about satire")
    assert set(q["similar_items"]) <= set(disputed[1:]) and q["guideline_version"] == "1.0"
    assert fx.ledger.events("news", item_id=disputed[0], kind="guideline_gap").iloc[0]["actor"] == "exp-1"
    record_spec(fx, "news")  # same guideline: nothing happens
    assert fx.ledger.tasks("news", batch_id=batch).query("kind == 'requeue'").empty
    spec = yaml.safe_load((root / "datasets" / "news.yaml").read_text())
    spec["guideline"]["version"] = "1.1"
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(spec))
    record_spec(fx, "news")
    requeued = fx.ledger.tasks("news", batch_id=batch).query("kind == 'requeue'")
    assert set(requeued["item_id"]) == {disputed[0], *q["similar_items"]}
    assert all("1.0 -> 1.1" in r for r in requeued["reasons"])
    assert questions(fx, "news").iloc[0]["status"] == "requeued"
    record_spec(fx, "news")  # once per bump
    assert len(fx.ledger.tasks("news", batch_id=batch).query("kind == 'requeue'")) == len(requeued)


def test_required_tier_from_risk_value_and_difficulty():
    from factory.routing_policy import required_tier
    from factory.spec import parse_spec
    from tests.conftest import news_spec

    spec = parse_spec(news_spec(task={"type": "classification", "input": "text", "metadata": ["amount"]},
                                workforce={"class_tiers": {"politics": "L3"}, "disagreement_tier": "L2",
                                           "value_rules": [{"field": "amount", "above": 10000, "tier": "expert"}]}))
    assert required_tier(spec, "tech", []) == "L1"
    assert required_tier(spec, "tech", ["disagreement"]) == "L2"
    assert required_tier(spec, "politics", ["disagreement"]) == "L3"
    assert required_tier(spec, "tech", [], {"amount": "25000"}) == "expert"
    assert required_tier(spec, "tech", [], {"amount": "n/a"}) == "L1"
    grade = parse_spec(news_spec(compliance={"class": "core"}))
    assert required_tier(grade, "tech", []) == "L2"  # sensitive data: at least the sensitive tier

"""The answer gate: every door (CLI answer, CLI import, Label Studio import, web answer, web arbitration)
applies every rule (suspended, unregistered above L1, under-tier, no rationale, lease held by another,
replayed submission id), blind review stays blind, task ids are unguessable, honeypots do not announce
themselves, and pull dispatch uses the same policy as push dispatch."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from factory.cli import main
from factory.storage.ledger import now, task_assignments
from factory.users import UserStore
from factory.web import create_app
from factory.workforce import Workforce
from tests.test_web_api import CLASSES, make_factory

DOORS = ("cli_answer", "cli_import", "ls_import", "web_answer", "web_arbitrate")
RULES = ("suspended", "unregistered_above_L1", "under_tier", "no_rationale", "lease_held_by_another",
         "replayed_submission_id")
FAR = "9999-12-31T00:00:00+00:00"


@pytest.fixture
def env(tmp_path, monkeypatch):
    fx, tasks, tokens = make_factory(tmp_path, monkeypatch)
    wf = Workforce(fx.ledger)
    store = UserStore.for_ledger(fx.ledger)
    wf.add("exp-1", "expert")
    client = TestClient(create_app(fx.paths.root))
    return SimpleNamespace(fx=fx, tasks=tasks, tokens=tokens, wf=wf, store=store, client=client, tmp=tmp_path,
                           batch=tasks[0]["batch_id"], items=[t["item_id"] for t in tasks])


def lease(fx, task_id: str, who: str) -> None:
    with fx.ledger.engine.begin() as c:
        c.execute(task_assignments.delete().where(task_assignments.c.task_id == task_id))
        c.execute(task_assignments.insert().values(task_id=task_id, assignee=who, assigned_at=now(), lease_until=FAR,
                                                   n_assignments=1))


def person(env, name: str, *, role: str = "annotator", tier: str | None = None, suspended: bool = False) -> str:
    """A web user (with a token) who may also be in the annotator registry."""
    if name not in env.tokens:
        env.tokens[name] = env.store.add(name, role)
    if tier:
        env.wf.add(name, tier)
        if suspended:
            env.wf.suspend(name, "gold accuracy below the floor")
    return name


def new_task(env, tid: str, item: int, kind: str = "review", tier: str | None = None) -> str:
    env.fx.ledger.create_tasks([dict(task_id=tid, dataset="news", batch_id=env.batch, item_id=env.items[item],
                                     kind=kind, reasons=["x"], required_tier=tier, created_at="2025-01-01T00:00:00")])
    return tid


def dispute(env, item: int) -> str:
    """An item two people answered differently, with an open expert task: arbitration ground."""
    a, b = new_task(env, f"ta{item}", item), new_task(env, f"tb{item}", item, kind="audit")
    env.fx.ledger.answer_task(a, "business", "ann-1", CLASSES)
    env.fx.ledger.answer_task(b, "tech", "ann-2", CLASSES)
    return new_task(env, f"tarb{item}", item, kind="arbitrate", tier="expert")


# ----------------------------------------------------------------------------- the doors
def door(env, name: str, task_id: str | None, who: str, label: str = "sports", *, rationale: str | None = None,
         submission_id: str | None = None, item: int | None = None) -> tuple[bool, str]:
    """Submit one answer through a door; returns (accepted, everything the submitter was told)."""
    fx = env.fx
    if name == "cli_answer":
        args = ["tasks", "answer", task_id, label, "--annotator", who, "--root", str(fx.paths.root)]
        res = CliRunner().invoke(main, args + (["--rationale", rationale] if rationale else []))
        return res.exit_code == 0, res.output
    if name == "cli_import":
        path = env.tmp / f"answers-{who}.csv"
        path.write_text("task_id,annotator,label,rationale,submission_id\n"
                        f"{task_id},{who},{label},{rationale or ''},{submission_id or ''}\n")
        res = CliRunner().invoke(main, ["tasks", "import", str(path), "--root", str(fx.paths.root)])
        return res.exit_code == 0, res.output
    if name == "ls_import":
        ann = {"id": int((submission_id or "ls:1:1").split(":")[-1]), "completed_by": {"email": f"{who}@x.org"},
               "was_cancelled": False,
               "result": [{"type": "choices", "value": {"choices": [label]}}]
               + ([{"type": "textarea", "from_name": "rationale", "value": {"text": [rationale]}}] if rationale else [])}
        ls_task = int((submission_id or "ls:1:1").split(":")[1])
        path = env.tmp / f"ls-{who}.json"
        path.write_text(json.dumps([{"id": ls_task, "data": {"text": "x", "factory_task_id": task_id},
                                     "annotations": [ann]}]))
        amap = env.tmp / "map.json"
        amap.write_text(json.dumps({f"{p}@x.org": p for p in env.tokens}))
        res = CliRunner().invoke(main, ["import", "label-studio", str(path), "--annotator-map", str(amap),
                                        "--root", str(fx.paths.root)])
        return res.exit_code == 0, res.output
    if name == "web_answer":
        r = env.client.post(f"/api/tasks/{task_id}/answer", json={"label": label, "submission_id": submission_id or "s"},
                            headers={"Authorization": f"Bearer {env.tokens[who]}"})
        return r.status_code in (200, 201), r.text
    if name == "web_arbitrate":
        item_id = env.items[item] if item is not None else fx.ledger.task(task_id)["item_id"]
        r = env.client.post(f"/api/items/{item_id}/arbitrate",
                            json={"dataset": "news", "label": label, "rationale": rationale or " "},
                            headers={"Authorization": f"Bearer {env.tokens[who]}"})
        return r.status_code == 201, r.text
    raise AssertionError(name)


def written_by(env, who: str) -> int:
    ev = env.fx.ledger.events("news", kind=["human", "correction", "arbitration"])
    return int((ev["actor"] == who).sum())


# ----------------------------------------------------------------------------- the matrix
def scenario(env, d: str, rule: str) -> dict:
    """Set up one rule's case for one door: who answers what, and what must stay hidden."""
    arb = d == "web_arbitrate"
    role = "expert" if arb else "annotator"
    if rule == "suspended":
        who = person(env, "sus", role=role, tier="expert" if arb else "L1", suspended=True)
        tid = dispute(env, 0) if arb else new_task(env, "tq", 0)
        return dict(task=tid, who=who, rationale="because")
    if rule == "unregistered_above_L1":
        who = person(env, "stranger", role=role)
        tid = dispute(env, 0) if arb else new_task(env, "tq", 0, tier="L2")
        return dict(task=tid, who=who, rationale="because")
    if rule == "under_tier":
        who = person(env, "low", role=role, tier="L3" if arb else "L1")
        tid = dispute(env, 0) if arb else new_task(env, "tq", 0, tier="L3")
        return dict(task=tid, who=who, rationale="because")
    if rule == "no_rationale":
        tid = dispute(env, 0)  # an arbitration task: the decision needs a why
        return dict(task=tid, who="exp-1", rationale=None)
    if rule == "lease_held_by_another":
        who = "exp-1" if arb else person(env, "ann-3", tier="L1")
        tid = dispute(env, 0) if arb else new_task(env, "tq", 0)
        held = new_task(env, "theld", 0, kind="second") if arb else tid
        lease(env.fx, held, "ann-2")
        return dict(task=tid, who=who, rationale="because", hidden=["ann-2"])
    if rule == "replayed_submission_id":
        if arb:  # the arbitration endpoint takes no submission id: its replay-like hole is an undisputed item
            new_task(env, "tq", 0)
            env.fx.ledger.answer_task("tq", "business", "ann-1", CLASSES)
            return dict(task=None, item=0, who="exp-1", rationale="because")
        tid = new_task(env, "tq", 0)
        lease(env.fx, tid, "ann-2")
        first = env.fx.ledger.answer_task(tid, "business", "ann-2", CLASSES, submission_id="ls:7:70",
                                          require_lease=True)
        who = person(env, "ann-3", tier="L1")
        return dict(task=tid, who=who, rationale=None, submission_id="ls:7:70",
                    hidden=["ann-2", "business", first["event_id"]])
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("d", DOORS)
def test_every_door_applies_every_rule(env, d, rule):
    s = scenario(env, d, rule)
    if d == "web_answer" and s["task"] and rule not in ("lease_held_by_another", "replayed_submission_id"):
        lease(env.fx, s["task"], s["who"])  # the web answers only a task one holds: the rule is what refuses
    before = written_by(env, s["who"])
    ok, told = door(env, d, s["task"], s["who"], label="sports", rationale=s["rationale"],
                    submission_id=s.get("submission_id"), item=s.get("item"))
    assert not ok, (d, rule, told)
    assert written_by(env, s["who"]) == before  # nothing recorded
    for secret in s.get("hidden", []):
        assert secret not in told, (d, rule, secret, told)  # blind: another person's name, label, event


@pytest.mark.parametrize("d", DOORS)
def test_every_door_accepts_a_valid_answer(env, d):
    """The refusals above are the rules, not a door that refuses everything."""
    if d == "web_arbitrate":
        tid = dispute(env, 0)
        ok, told = door(env, d, tid, "exp-1", label="business", rationale="bank profits")
    else:
        who = person(env, "ann-3", tier="L1")
        tid = new_task(env, "tq", 0)
        if d == "web_answer":
            lease(env.fx, tid, who)
        ok, told = door(env, d, tid, who, label="business", submission_id="ls:3:30")
    assert ok, (d, told)
    assert written_by(env, "exp-1" if d == "web_arbitrate" else "ann-3") >= 1


def test_import_is_all_or_nothing_with_one_report(env):
    """263 arbitrations from unregistered non-experts without a rationale: every row refused, in one report."""
    person(env, "ann-3", tier="L1")
    new_task(env, "tq", 0)
    arbs = [dispute(env, i) for i in (1, 2, 3)]
    path = env.tmp / "mixed.csv"
    path.write_text("task_id,annotator,label,rationale\n" + "tq,ann-3,business,\n"
                    + "".join(f"{t},ann-9,tech,\n" for t in arbs))
    res = CliRunner().invoke(main, ["tasks", "import", str(path), "--root", str(env.fx.paths.root)])
    assert res.exit_code == 2
    assert "nothing imported, 3 refused row(s) of 4" in res.output
    for row in (3, 4, 5):
        assert f"mixed.csv row {row}: " in res.output and "an arbitration needs a registered expert" in res.output
    assert written_by(env, "ann-3") == 0 and written_by(env, "ann-9") == 0  # the good row waited too
    path.write_text("task_id,annotator,label,rationale\ntq,ann-3,business,\n"
                    + "".join(f"{t},exp-1,tech,the article is about chips\n" for t in arbs[:1]))
    res = CliRunner().invoke(main, ["tasks", "import", str(path), "--root", str(env.fx.paths.root)])
    assert res.exit_code == 0, res.output
    assert len(env.fx.ledger.events("news", kind="arbitration")) == 1


# ----------------------------------------------------------------------------- blindness
def test_a_task_you_do_not_hold_says_nothing_about_its_answer(env):
    c, fx = env.client, env.fx
    tid = new_task(env, "tq", 0)
    lease(fx, tid, "ann-2")
    fx.ledger.answer_task(tid, "business", "ann-2", CLASSES, submission_id="sub-x", require_lease=True)
    r = c.post(f"/api/tasks/{tid}/answer", json={"label": "tech", "submission_id": "sub-x"},
               headers={"Authorization": f"Bearer {env.tokens['ann-1']}"})
    assert r.status_code == 409
    first = fx.ledger.events("news", kind="human").query("actor == 'ann-2'").iloc[0]["event_id"]
    for secret in ("ann-2", "business", first):
        assert secret not in r.text
    # the same replay of someone else's submission id at the ledger: no event id back, nothing written
    from factory.errors import TaskError

    with pytest.raises(TaskError) as e:
        fx.ledger.answer_task(tid, "business", "ann-1", CLASSES, submission_id="sub-x")
    assert first not in str(e.value) and "ann-2" not in str(e.value)


def test_task_ids_are_keyed_by_a_ledger_secret(env, tmp_path, monkeypatch):
    import hashlib

    from factory.pipeline import Factory
    from factory.task_rows import task_row

    row = task_row("news", env.batch, env.items[0], "review", ["x"])
    env.fx.ledger.create_tasks([row])
    tid = env.fx.ledger.public_task_id(row["task_id"])
    assert env.fx.ledger.task(tid) is not None
    plain = "t_" + hashlib.sha256(f"news|{env.batch}|{env.items[0]}|review".encode()).hexdigest()[:16]
    assert tid != plain and env.fx.ledger.task(plain) is None  # not the old guessable hash
    assert Factory.at(env.fx.paths.root).ledger.public_task_id(row["task_id"]) == tid  # same ledger: stable
    other, _, _ = make_factory(tmp_path / "other", monkeypatch)
    assert other.ledger.public_task_id(row["task_id"]) != tid  # another ledger, another secret


def test_a_honeypot_looks_like_any_audit_task(env):
    fx, c = env.fx, env.client
    fx.ledger.create_tasks([dict(task_id="tgold", dataset="news", batch_id=env.batch, item_id=env.items[0],
                                 kind="gold", reasons=["honeypot"], created_at="2025-01-01T00:00:00")])
    r = c.get("/api/tasks/next", headers={"Authorization": f"Bearer {env.tokens['ann-1']}"})
    assert r.json()["task_id"] == "tgold"
    assert r.json()["kind"] == "audit" and r.json()["reasons"] == ["audit"]
    got = c.get("/api/tasks/tgold", headers={"Authorization": f"Bearer {env.tokens['ann-1']}"}).text
    from factory.labelstudio import export_tasks

    exported = json.dumps(export_tasks(fx, env.batch))
    for text in (r.text, got, exported):
        assert "gold" not in text.replace("tgold", "") and "honeypot" not in text
    page = TestClient(create_app(fx.paths.root))
    csrf = page.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    page.post("/login", data={"name": "ann-1", "token": env.tokens["ann-1"], "csrf_token": csrf})
    html = page.get("/queue").text
    assert "gold" not in html and "honeypot" not in html


# ----------------------------------------------------------------------------- one dispatch policy
def test_pull_dispatch_uses_the_push_policy(env, monkeypatch):
    import factory.workforce as W

    fx, c = env.fx, env.client
    person(env, "ann-3", tier="L2")
    new_task(env, "t_l2", 1, tier="L2")
    hdr = {"Authorization": f"Bearer {env.tokens['ann-3']}"}
    assert c.get("/api/tasks/next", headers=hdr).json()["task_id"] == "t_l2"  # the task that needs their tier first
    # per-person limit: at max_open_tasks a person only renews what they hold
    with fx.ledger.engine.begin() as conn:
        conn.execute(sa.update(W.annotators).where(W.annotators.c.annotator_id == "ann-3").values(max_open_tasks=1))
    fx.ledger.skip_task("t_l2", "ann-3", "unclear")
    lease(fx, "t5", "ann-3")
    assert c.get("/api/tasks/next", headers=hdr).json()["task_id"] == "t5"
    # one rule for both: break `can_take` and neither push nor pull gives anyone anything
    monkeypatch.setattr(W, "can_take", lambda *a, **k: False)
    assert c.get("/api/tasks/next", headers={"Authorization": f"Bearer {env.tokens['ann-1']}"}).status_code == 204
    tasks = fx.ledger.tasks("news", status="open")
    assert W.dispatch(tasks, W.Workforce(fx.ledger).list(), {}).empty

"""The REST API of the workbench through FastAPI's TestClient: roles, leases, idempotency, every error code."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
import yaml
from fastapi.testclient import TestClient

from factory.ingest import ingest
from factory.pipeline import Factory
from factory.spec import parse_spec
from factory.users import UserStore
from factory.web import create_app

CLASSES = ["business", "sports", "tech"]
TEXTS = ["Shares rose after the bank reported profits.", "The striker scored twice in the cup final.",
         "A new chip makes phones faster.", "Markets fell as oil prices climbed.",
         "The coach praised the young goalkeeper.", "The startup released an open-source database."]
ROLES = {"ann-1": "annotator", "ann-2": "annotator", "exp-1": "expert", "aud-1": "auditor", "cli-1": "client",
         "op-1": "operator"}


def spec_dict(**review) -> dict:
    return {"name": "news", "description": "test", "license": "CC-BY-4.0",
            "classes": [{"name": c, "definition": f"articles about {c}"} for c in CLASSES],
            "guideline": {"version": "1.0", "text": "Pick the main topic."}, "seed": {"size": 2},
            "review": {"budget": 0.5, **review}}


def make_factory(tmp_path, monkeypatch, **review) -> tuple[Factory, list[dict], dict]:
    """A factory root with 6 items, one review task per item, and one user per role."""
    root = tmp_path / "factory"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(spec_dict(**review)))
    monkeypatch.setenv("FACTORY_HOME", str(root))
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx = Factory.at(root)
    csv = tmp_path / "b.csv"
    csv.write_text("text\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    rep = ingest(csv, fx.spec("news"), fx.ledger)
    items = fx.ledger.items("news", batch_id=rep.batch_id)
    tasks = [dict(task_id=f"t{i}", dataset="news", batch_id=rep.batch_id, item_id=r.item_id, kind="review",
                  reasons=["low_confidence"], suggestion=CLASSES[i % 3], created_at=f"2026-01-01T00:00:0{i}")
             for i, r in enumerate(items.itertuples())]
    fx.ledger.create_tasks(tasks)
    store = UserStore.for_ledger(fx.ledger)
    tokens = {n: store.add(n, r) for n, r in ROLES.items()}
    return fx, tasks, tokens


@pytest.fixture
def web(tmp_path, monkeypatch):
    fx, tasks, tokens = make_factory(tmp_path, monkeypatch)
    app = create_app(fx.paths.root, lease_seconds=600, undo_grace_seconds=60)
    client = TestClient(app)
    return SimpleNamespace(client=client, fx=fx, tasks=tasks, tokens=tokens, app=app)


def h(web, who: str) -> dict:
    return {"Authorization": f"Bearer {web.tokens[who]}"}


def test_openapi_lists_the_endpoints(web):
    doc = web.client.get("/openapi.json").json()
    for path in ("/api/tasks/next", "/api/tasks/{task_id}/answer", "/api/items/{item_id}/trace", "/api/batches",
                 "/api/releases", "/api/releases/{dataset}/{version}/files/{name}"):
        assert path in doc["paths"], path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_no_or_bad_token_is_401(web):
    assert web.client.get("/api/tasks/next").status_code == 401
    r = web.client.get("/api/batches", headers={"Authorization": "Bearer fct_nonsense"})
    assert r.status_code == 401 and "factory users add" in r.json()["detail"]
    assert web.client.get("/api/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_wrong_role_is_403(web):
    r = web.client.post("/api/tasks/t0/answer", json={"label": "business", "submission_id": "s"}, headers=h(web, "aud-1"))
    assert r.status_code == 403 and "auditor" in r.json()["detail"]
    assert web.client.post("/api/tasks/t0/answer", json={"label": "business", "submission_id": "s"},
                           headers=h(web, "cli-1")).status_code == 403
    assert web.client.get("/api/items/x/trace", headers=h(web, "cli-1")).status_code == 403
    assert web.client.get("/api/batches", headers=h(web, "ann-1")).status_code == 403
    assert web.client.get("/api/arbitration", headers=h(web, "ann-1")).status_code == 403
    assert web.client.get("/api/tasks/next", headers=h(web, "cli-1")).status_code == 403


def test_answer_is_idempotent_and_a_different_second_answer_is_409(web):
    c = web.client
    t = c.get("/api/tasks/next", headers=h(web, "ann-1")).json()
    assert t["task_id"] == "t0" and t["text"] == TEXTS[0] and t["suggestion"] == "business"
    assert [k["name"] for k in t["classes"]] == CLASSES and t["guideline"]["text"]
    body = {"label": "business", "submission_id": "sub-1"}
    r1 = c.post("/api/tasks/t0/answer", json=body, headers=h(web, "ann-1"))
    assert r1.status_code == 201 and r1.json()["duplicate"] is False
    r2 = c.post("/api/tasks/t0/answer", json=body, headers=h(web, "ann-1"))
    assert r2.status_code == 200 and r2.json()["duplicate"] is True and r2.json()["event_id"] == r1.json()["event_id"]
    r3 = c.post("/api/tasks/t0/answer", json={"label": "tech", "submission_id": "sub-2"}, headers=h(web, "ann-1"))
    assert r3.status_code == 409 and "already answered 'business' by ann-1" in r3.json()["detail"]
    r4 = c.post("/api/tasks/t0/answer", json={"label": "tech", "submission_id": "sub-1"}, headers=h(web, "ann-1"))
    assert r4.status_code == 409 and "a retry must carry the same answer" in r4.json()["detail"]
    ev = web.fx.ledger.events("news", kind="human")
    assert len(ev) == 1 and ev.iloc[0]["actor"] == "ann-1"  # an ordinary human event, once
    assert web.fx.ledger.tasks("news").set_index("task_id").loc["t0", "status"] == "answered"


def test_unknown_ids_are_404_and_bad_labels_422(web):
    c = web.client
    r = c.post("/api/tasks/nope/answer", json={"label": "tech", "submission_id": "x"}, headers=h(web, "ann-1"))
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert c.get("/api/items/nope/trace", headers=h(web, "aud-1")).status_code == 404
    assert c.get("/api/releases/news/9.9.9/files/labels.parquet", headers=h(web, "cli-1")).status_code == 404
    c.get("/api/tasks/next", headers=h(web, "ann-1"))
    r = c.post("/api/tasks/t0/answer", json={"label": "cooking", "submission_id": "x"}, headers=h(web, "ann-1"))
    assert r.status_code == 422 and "not in the schema" in r.json()["detail"]
    assert c.post("/api/tasks/t0/answer", json={"label": "tech"}, headers=h(web, "ann-1")).status_code == 422


def test_annotators_see_and_answer_only_their_tasks(web):
    c = web.client
    a = c.get("/api/tasks/next", headers=h(web, "ann-1")).json()["task_id"]
    b = c.get("/api/tasks/next", headers=h(web, "ann-2")).json()["task_id"]
    assert a != b
    assert c.get("/api/tasks/next", headers=h(web, "ann-1")).json()["task_id"] == a  # the lease is renewed, same task
    assert c.get(f"/api/tasks/{b}", headers=h(web, "ann-1")).status_code == 404
    assert c.get(f"/api/tasks/{a}", headers=h(web, "ann-1")).status_code == 200
    r = c.post(f"/api/tasks/{b}/answer", json={"label": "tech", "submission_id": "x"}, headers=h(web, "ann-1"))
    assert r.status_code == 409 and "not assigned to ann-1" in r.json()["detail"] and "ann-2" not in r.json()["detail"]
    r = c.post("/api/tasks/t5/answer", json={"label": "tech", "submission_id": "y"}, headers=h(web, "ann-1"))
    assert r.status_code == 409 and "not assigned to ann-1" in r.json()["detail"]


def test_expired_and_reassigned_leases_are_409(tmp_path, monkeypatch):
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
    # the lease is stored when given: short leases expire on purpose, the reassigned one is long so a slow machine
    # does not expire it by accident between ann-2's `next` and answer
    c = TestClient(create_app(fx.paths.root, lease_seconds=0.3))
    long = TestClient(create_app(fx.paths.root, lease_seconds=600))
    ann1, ann2 = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("ann-1", "ann-2"))
    first = c.get("/api/tasks/next", headers=ann1).json()["task_id"]
    time.sleep(0.4)
    r = c.post(f"/api/tasks/{first}/answer", json={"label": "tech", "submission_id": "a"}, headers=ann1)
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    assert c.get("/api/tasks/next", headers=ann1).json()["task_id"] == first  # expired, not taken: offered again
    time.sleep(0.4)
    c = long
    assert c.get("/api/tasks/next", headers=ann2).json()["task_id"] == first  # reassigned to ann-2
    r = c.post(f"/api/tasks/{first}/answer", json={"label": "tech", "submission_id": "b"}, headers=ann1)
    assert r.status_code == 409 and "not assigned to ann-1" in r.json()["detail"]
    r = c.post(f"/api/tasks/{first}/answer", json={"label": "sports", "submission_id": "c"}, headers=ann2)
    assert r.status_code == 201
    assert list(fx.ledger.events("news", kind="human")["actor"]) == ["ann-2"]


def test_undo_within_grace_reopens_the_task_and_keeps_the_record(tmp_path, monkeypatch):
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
    # a window no slow machine closes by accident; the closed window is the same root served with a zero grace
    c = TestClient(create_app(fx.paths.root, undo_grace_seconds=60))
    ann = {"Authorization": f"Bearer {tokens['ann-1']}"}
    tid = c.get("/api/tasks/next", headers=ann).json()["task_id"]
    c.post(f"/api/tasks/{tid}/answer", json={"label": "tech", "submission_id": "a"}, headers=ann)
    r = c.post(f"/api/tasks/{tid}/undo", headers=ann)
    assert r.status_code == 200 and r.json()["label"] == "tech"
    assert fx.ledger.tasks("news").set_index("task_id").loc[tid, "status"] == "open"
    assert fx.ledger.human_decisions("news").empty
    assert c.get("/api/tasks/next", headers=ann).json()["task_id"] == tid  # it comes back to the same person
    r = c.post(f"/api/tasks/{tid}/answer", json={"label": "business", "submission_id": "b"}, headers=ann)
    assert r.status_code == 201
    assert list(fx.ledger.human_decisions("news")["label"]) == ["business"]
    assert list(fx.ledger.events("news", item_id=fx.ledger.task(tid)["item_id"])["kind"]) == [
        "human", "retraction", "human"]
    closed = TestClient(create_app(fx.paths.root, undo_grace_seconds=0))
    r = closed.post(f"/api/tasks/{tid}/undo", headers=ann)
    assert r.status_code == 409 and "undo window" in r.json()["detail"]
    other = {"Authorization": f"Bearer {tokens['ann-2']}"}
    assert c.post(f"/api/tasks/{tid}/undo", headers=other).status_code == 409  # not theirs, window open
    assert fx.ledger.verify_chain("news")["ok"]


def test_skip_needs_a_reason_and_the_task_goes_to_someone_else(web):
    c = web.client
    tid = c.get("/api/tasks/next", headers=h(web, "ann-1")).json()["task_id"]
    assert c.post(f"/api/tasks/{tid}/skip", json={"reason": ""}, headers=h(web, "ann-1")).status_code == 422
    assert c.post(f"/api/tasks/{tid}/skip", json={"reason": "unclear"}, headers=h(web, "ann-1")).status_code == 200
    assert c.get("/api/tasks/next", headers=h(web, "ann-1")).json()["task_id"] != tid
    assert c.get("/api/tasks/next", headers=h(web, "ann-2")).json()["task_id"] == tid
    disputed = c.get("/api/arbitration", headers=h(web, "exp-1")).json()
    assert any("skipped by ann-1: unclear" in w for d in disputed for w in d["why"])


def test_arbitration_needs_a_rationale_and_makes_the_expert_label_final(web):
    from factory.workforce import Workforce

    fx, c = web.fx, web.client
    Workforce(fx.ledger).add("exp-1", "expert")  # an arbitration needs a registered expert (the gate)
    t0 = fx.ledger.task("t0")
    fx.ledger.create_tasks([dict(task_id="t0b", dataset="news", batch_id=t0["batch_id"], item_id=t0["item_id"],
                                 kind="audit", reasons=["audit"], suggestion="business")])
    classes = CLASSES
    fx.ledger.answer_task("t0", "business", "ann-1", classes)
    fx.ledger.answer_task("t0b", "tech", "ann-2", classes)
    disputed = c.get("/api/arbitration", headers=h(web, "exp-1")).json()
    assert [d["item_id"] for d in disputed] == [t0["item_id"]]
    assert "people disagree" in disputed[0]["why"][0]
    detail = c.get(f"/api/arbitration/news/{t0['item_id']}", headers=h(web, "exp-1")).json()
    assert {a["actor"] for a in detail["answers"]} == {"ann-1", "ann-2"}
    url = f"/api/items/{t0['item_id']}/arbitrate"
    r = c.post(url, json={"dataset": "news", "label": "business", "rationale": "  "}, headers=h(web, "exp-1"))
    assert r.status_code == 422 and "rationale" in r.json()["detail"]
    assert c.post(url, json={"dataset": "news", "label": "business"}, headers=h(web, "exp-1")).status_code == 422
    assert c.post(url, json={"dataset": "news", "label": "business", "rationale": "bank profits"},
                  headers=h(web, "ann-1")).status_code == 403
    r = c.post(f"/api/items/{t0['item_id']}/guideline-gap", json={"dataset": "news", "note": "markets vs business?"},
               headers=h(web, "exp-1"))
    assert r.status_code == 201
    r = c.post(url, json={"dataset": "news", "label": "business", "rationale": "bank profits are business"},
               headers=h(web, "exp-1"))
    assert r.status_code == 201 and r.json()["tasks"] == ["t0b"]
    dec = fx.ledger.human_decisions("news").set_index("task_id")["label"].to_dict()
    assert dec == {"t0": "business", "t0b": "business"}
    kinds = list(fx.ledger.events("news", item_id=t0["item_id"])["kind"])
    assert kinds == ["human", "human", "guideline_gap", "arbitration", "correction"]
    assert c.get("/api/arbitration", headers=h(web, "exp-1")).json() == []
    assert c.post("/api/items/nope/arbitrate", json={"dataset": "news", "label": "tech", "rationale": "x"},
                  headers=h(web, "exp-1")).status_code == 404
    trace = c.get(f"/api/items/{t0['item_id']}/trace", headers=h(web, "aud-1")).json()
    arb = [e for e in trace["events"] if e["kind"] == "arbitration"][0]
    assert arb["actor"] == "exp-1" and arb["payload"]["rationale"] == "bank profits are business"
    assert fx.ledger.verify_chain("news")["ok"]


def test_batches_operator_and_trace_for_readers(web):
    c = web.client
    b = c.get("/api/batches", headers=h(web, "op-1")).json()
    assert b[0]["items"] == 6 and b[0]["open_tasks"] == 6
    s = c.get("/api/operator/summary", headers=h(web, "op-1")).json()
    assert s["open_tasks"] == 6 and s["queues"] == [{"dataset": "news", "tier": "L1", "open": 6,
                                                      "kinds": {"review": 6}}]
    item = web.tasks[0]["item_id"]
    tr = c.get(f"/api/items/{item}/trace", headers=h(web, "aud-1")).json()
    assert tr["text"] == TEXTS[0] and tr["tasks"][0]["task_id"] == "t0"


def test_release_files_download_and_cannot_escape(web, tmp_path):
    fx, c = web.fx, web.client
    folder = fx.paths.releases / "news" / "1.0.0"
    folder.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame({"item_id": ["a", "b"], "text": ["two words", "三个字"], "label": ["tech", "sports"],
                  "split": ["train", "test"]}).to_parquet(folder / "labels.parquet", index=False)
    data = (folder / "labels.parquet").read_bytes()
    (folder / "manifest.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    os.symlink(secret, folder / "link.txt")
    fx.ledger.record_release(dict(dataset="news", version="1.0.0", path=str(folder), manifest_sha256="0" * 64,
                                  n_items=6, batches="[]", created_at="2026-01-01T00:00:00"))
    rel = c.get("/api/releases", headers=h(web, "cli-1")).json()
    assert rel[0]["version"] == "1.0.0" and "labels.parquet" in rel[0]["files"]
    r = c.get("/api/releases/news/1.0.0/files/labels.parquet", headers=h(web, "cli-1"))
    assert r.status_code == 200 and r.content == data
    for bad in ("..%2F..%2Fdatasets%2Fnews.yaml", "%2E%2E", "link.txt", "..%5Csecret.txt", "nothing.txt"):
        r = c.get(f"/api/releases/news/1.0.0/files/{bad}", headers=h(web, "cli-1"))
        assert r.status_code == 404, bad
    assert c.get("/api/releases/news/1.0.0/files/../../datasets/news.yaml",
                 headers=h(web, "cli-1")).status_code == 404
    assert c.get("/api/releases/news/1.0.0/files/labels.parquet", headers=h(web, "ann-1")).status_code == 403


def test_pages_use_sessions_with_csrf_and_rate_limited_logins(web):
    c = web.client
    assert c.get("/queue", follow_redirects=False).status_code == 303
    form = c.get("/login")
    csrf = form.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"name": "ann-1", "token": web.tokens["ann-1"], "csrf_token": "wrong"},
               follow_redirects=False)
    assert r.status_code == 403
    r = c.post("/login", data={"name": "ann-1", "token": web.tokens["ann-1"], "csrf_token": csrf},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/queue"
    page = c.get("/queue")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    session_csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    assert c.get("/api/tasks/next").status_code == 403  # a cookie without the CSRF header cannot write
    t = c.get("/api/tasks/next", headers={"X-CSRF-Token": session_csrf}).json()
    r = c.post(f"/api/tasks/{t['task_id']}/answer", json={"label": "tech", "submission_id": "z"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = c.post(f"/api/tasks/{t['task_id']}/answer", json={"label": "tech", "submission_id": "z"},
               headers={"X-CSRF-Token": session_csrf})
    assert r.status_code == 201
    assert c.get("/operator").status_code == 403  # an annotator's session cannot open the operator page
    # failed logins are rate-limited per name, even when the right token comes afterwards
    other = TestClient(web.app)
    csrf2 = other.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    for _ in range(5):
        r = other.post("/login", data={"name": "exp-1", "token": "guess", "csrf_token": csrf2}, follow_redirects=False)
        assert r.status_code == 401
    r = other.post("/login", data={"name": "exp-1", "token": web.tokens["exp-1"], "csrf_token": csrf2},
                   follow_redirects=False)
    assert r.status_code == 429 and "Too many" in r.text


def test_pages_render_for_each_role(web):
    for who, path in (("exp-1", "/arbitrate"), ("aud-1", "/audit"), ("op-1", "/operator"), ("cli-1", "/releases")):
        c = TestClient(web.app)
        csrf = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        r = c.post("/login", data={"name": who, "token": web.tokens[who], "csrf_token": csrf})
        assert r.status_code == 200 and r.url.path == path, (who, r.url)
    r = c.get("/audit")
    assert r.status_code == 403  # clients do not see item histories


def test_spec_can_hide_the_model_suggestion(tmp_path, monkeypatch):
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch, show_model_suggestion=False)
    c = TestClient(create_app(fx.paths.root))
    t = c.get("/api/tasks/next", headers={"Authorization": f"Bearer {tokens['ann-1']}"}).json()
    assert t["suggestion"] is None and t["suggestion_shown"] is False
    plain = parse_spec(spec_dict())
    assert plain.review.show_model_suggestion is True
    assert parse_spec(spec_dict(show_model_suggestion=True)).version == plain.version  # default left out of the hash
    assert parse_spec(spec_dict(show_model_suggestion=False)).version != plain.version


def test_highlight_spans_mark_whole_words():
    from factory.web.data import highlight_spans

    text = "Shares of the bank rose; banking shares fell."
    spans = highlight_spans(text, {"m1": ["shares", "bank"], "m2": ["bank"]})
    got = [(text[s["start"]:s["end"]], s["labelers"]) for s in spans]
    assert got == [("Shares", ["m1"]), ("bank", ["m1", "m2"]), ("shares", ["m1"])]


def test_users_cli_prints_the_token_once_and_stores_only_its_hash(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from factory.cli import main

    fx, _tasks, _tokens = make_factory(tmp_path, monkeypatch)
    run = CliRunner().invoke
    res = run(main, ["users", "add", "ann-new", "--role", "annotator"])
    assert res.exit_code == 0, res.output
    token = res.output.strip().splitlines()[-1]
    assert token.startswith("fct_")
    listing = run(main, ["users", "list", "--json"]).output
    assert "ann-new" in listing and token not in listing
    stored = fx.ledger.table("users")
    assert token not in stored.to_json() and len(stored.loc[stored["name"] == "ann-new", "token_sha256"].iloc[0]) == 64
    assert run(main, ["users", "add", "ann-new", "--role", "annotator"]).exit_code == 2
    assert run(main, ["users", "add", "x", "--role", "boss"]).exit_code == 2
    c = TestClient(create_app(fx.paths.root))
    assert c.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()["role"] == "annotator"
    new = run(main, ["users", "token", "ann-new"]).output.strip().splitlines()[-1]
    time.sleep(0.01)
    c2 = TestClient(create_app(fx.paths.root))  # a fresh app: no cached lookup of the old token
    assert c2.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert c2.get("/api/me", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert "Usage" in run(main, ["serve", "--help"]).output


def test_workforce_rules_apply_to_web_answers(web):
    """A registered annotator who was suspended is refused (403) and the refusal is logged."""
    from factory.workforce import Workforce

    wf = Workforce(web.fx.ledger)
    wf.add("ann-1", "L1")
    c = web.client
    t = c.get("/api/tasks/next", headers=h(web, "ann-1")).json()
    wf.suspend("ann-1", "gold accuracy below the floor")
    r = c.post(f"/api/tasks/{t['task_id']}/answer", json={"label": "tech", "submission_id": "s-1"},
               headers=h(web, "ann-1"))
    assert r.status_code == 403 and "suspended" in r.json()["detail"]
    assert wf.events("ann-1").iloc[-1]["kind"] == "refused_answer"
    assert web.fx.ledger.tasks("news", status="answered").empty


def test_client_downloads_are_metered_once_and_feeds_list_versions(web):
    fx, c = web.fx, web.client
    folder = fx.paths.releases / "news" / "1.0.0"
    folder.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame({"item_id": ["a", "b"], "text": ["two words", "三个字"], "label": ["tech", "sports"],
                  "split": ["train", "test"]}).to_parquet(folder / "labels.parquet", index=False)
    (folder / "manifest.json").write_text('{"dataset": "news", "version": "1.0.0", "items": 2}')
    (folder / "manifest-sha256.txt").write_text("")
    fx.ledger.record_release(dict(dataset="news", version="1.0.0", path=str(folder), manifest_sha256="0" * 64,
                                  n_items=2, batches="[]", created_at="2026-01-01T00:00:00"))
    for _ in range(2):  # a retried download with the same key is metered once
        r = c.get("/api/releases/news/1.0.0/files/labels.parquet",
                  headers=h(web, "cli-1") | {"Idempotency-Key": "k-1"})
        assert r.status_code == 200
    c.get("/api/releases/news/1.0.0/files/labels.parquet", headers=h(web, "aud-1"))  # auditors are not metered
    use = c.get("/api/deliveries", headers=h(web, "op-1")).json()
    assert len(use) == 1 and use[0]["client"] == "cli-1" and use[0]["items"] == 2
    assert use[0]["tokens"] == 2 + 3 + 2  # whitespace words, one token per CJK character, labels
    assert c.get("/api/deliveries", headers=h(web, "cli-1")).status_code == 403
    feed = c.get("/api/feeds/news.json", headers=h(web, "cli-1")).json()
    assert len(feed["items"]) == 1 and "1.0.0" in feed["items"][0]["title"]
    atom = c.get("/api/feeds/news.atom", headers=h(web, "cli-1"))
    assert atom.status_code == 200 and atom.headers["content-type"].startswith("application/atom+xml")


def test_next_offers_only_tasks_the_tier_allows_and_never_an_item_already_answered(web):
    from factory.workforce import Workforce

    fx, c = web.fx, web.client
    Workforce(fx.ledger).add("ann-1", "L1")
    t0 = web.tasks[0]
    fx.ledger.create_tasks([
        dict(task_id="t_l3", dataset="news", batch_id=t0["batch_id"], item_id=web.tasks[1]["item_id"], kind="second",
             reasons=["x"], required_tier="L3", created_at="2027-01-01T00:00:00"),
        dict(task_id="t_own", dataset="news", batch_id=t0["batch_id"], item_id=t0["item_id"], kind="second",
             reasons=["x"], required_tier="L1", created_at="2027-01-01T00:00:01")])
    seen = []
    while (r := c.get("/api/tasks/next", headers=h(web, "ann-1"))).status_code == 200:
        tid = r.json()["task_id"]
        seen.append(tid)
        c.post(f"/api/tasks/{tid}/answer", json={"label": "tech", "submission_id": f"s-{tid}"}, headers=h(web, "ann-1"))
    assert "t_l3" not in seen                       # tier L3 is above ann-1's L1
    assert "t_own" not in seen and t0["task_id"] in seen  # ann-1 labelled that item: never reviews it
    offered = []  # someone not registered is offered L1 tasks only (registered-only above L1)
    while (r := c.get("/api/tasks/next", headers=h(web, "ann-2"))).status_code == 200:
        offered.append(r.json()["task_id"])
        c.post(f"/api/tasks/{offered[-1]}/answer", json={"label": "tech", "submission_id": f"s2-{offered[-1]}"},
               headers=h(web, "ann-2"))
    assert offered == ["t_own"]

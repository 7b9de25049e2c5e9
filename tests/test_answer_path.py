"""The workbench's write path: how many statements a next + answer costs (pinned), people's answers on their own
hash chains (edits, deletions and reorderings still caught; anchors cover every chain), the migration from one
chain per dataset, and many people submitting at once on PostgreSQL."""
from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from factory.anchoring import verify_ledger, write_checkpoint
from factory.storage.db import upgrade
from factory.gate import Answer, submit_answer
from factory.ingest import ingest
from factory.storage.ledger import GENESIS, Ledger, chain_heads, event_hash, label_events, person_chain
from factory.pipeline import Factory
from factory.users import UserStore
from factory.web import create_app
from factory.workforce import next_task
from tests.test_web_api import CLASSES, make_factory, spec_dict

# what one GET /api/tasks/next and one POST /api/tasks/{id}/answer may cost once the server is warm: the
# answer reads the registry, the task with its lease and the item's answers, ends the lease, locks the
# person's chain head, inserts the event (the dedup check is the insert) and moves the head, in one transaction;
# on PostgreSQL the insert and the head's move are one statement (a data-modifying WITH)
ANSWER_STATEMENTS = {"sqlite": 7, "postgresql": 6}
NEXT_STATEMENTS = 6
# connections taken from the pool (each costs a ping, a BEGIN and a ROLLBACK/COMMIT round trip on PostgreSQL): the
# answer is checked and written on one; the next reads the registry, leases and reads the item's text on one too
# (it took three: 15 round trips instead of 9)
ANSWER_CHECKOUTS = 1
NEXT_CHECKOUTS = 1


def _count_statements(client, token: str, rounds: int = 3) -> list[tuple[int, ...]]:
    """(statements, commits, pool checkouts) of next, then of answer, for `rounds` warm next + answer pairs."""
    seen: list[str] = []
    commits = [0]
    checkouts = [0]
    on = [False]

    def checkout(dbapi_conn, record, proxy):
        if on[0]:
            checkouts[0] += 1

    def statement(conn, cursor, statement, parameters, context, executemany):
        if on[0] and not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE: psycopg2 sends BEGIN itself
            seen.append(statement)

    def commit(conn):
        if on[0]:
            commits[0] += 1

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    sa.event.listen(sa.engine.Engine, "commit", commit)
    sa.event.listen(sa.pool.Pool, "checkout", checkout)
    hdr = {"Authorization": f"Bearer {token}"}
    out = []
    try:
        # the first round is a warm-up: caches (specs, tables) fill and the person's chain head is made, once
        for _ in range(rounds + 1):
            seen.clear()
            commits[0] = checkouts[0] = 0
            on[0] = True
            r = client.get("/api/tasks/next", headers=hdr)
            n_next, c_next, k_next = len(seen), commits[0], checkouts[0]
            assert r.status_code == 200, r.text
            tid = r.json()["task_id"]
            r = client.post(f"/api/tasks/{tid}/answer", json={"label": CLASSES[0], "submission_id": uuid.uuid4().hex},
                            headers=hdr)
            on[0] = False
            assert r.status_code == 201, r.text
            out.append((n_next, c_next, k_next, len(seen) - n_next, commits[0] - c_next, checkouts[0] - k_next))
    finally:
        on[0] = False
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)
        sa.event.remove(sa.engine.Engine, "commit", commit)
        sa.event.remove(sa.pool.Pool, "checkout", checkout)
    return out[1:]


def _pg_factory(tmp_path, monkeypatch, pg_url, n_items: int = 6):
    upgrade(pg_url)
    root = tmp_path / "factory"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(spec_dict()))
    monkeypatch.setenv("FACTORY_HOME", str(root))
    monkeypatch.setenv("FACTORY_DATABASE_URL", pg_url)
    fx = Factory.at(root)
    csv = tmp_path / "b.csv"
    csv.write_text("text\n" + "\n".join(f'"item {i}: the market and the match and the chip"' for i in range(n_items)))
    rep = ingest(csv, fx.spec("news"), fx.ledger)
    items = fx.ledger.items("news", batch_id=rep.batch_id)
    tasks = [dict(task_id=f"t{i:04d}", dataset="news", batch_id=rep.batch_id, item_id=r.item_id, kind="review",
                  reasons=["low_confidence"], created_at=f"2026-01-01T00:00:00.{i:06d}")
             for i, r in enumerate(items.itertuples())]
    fx.ledger.create_tasks(tasks)
    return fx, tasks


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_next_and_an_answer_cost_a_pinned_number_of_statements(backend, tmp_path, monkeypatch, request):
    if backend == "sqlite":
        fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
        token = tokens["ann-1"]
    else:
        fx, _tasks = _pg_factory(tmp_path, monkeypatch, request.getfixturevalue("pg_url"))
        token = UserStore.for_ledger(fx.ledger).add("ann-1", "annotator")
    client = TestClient(create_app(fx.paths.root))
    for n_next, c_next, k_next, n_answer, c_answer, k_answer in _count_statements(client, token):
        assert n_answer <= ANSWER_STATEMENTS[backend], \
            f"an answer costs {n_answer} statements, was {ANSWER_STATEMENTS[backend]}"
        assert n_next <= NEXT_STATEMENTS, f"a next costs {n_next} statements, was {NEXT_STATEMENTS}"
        assert (c_next, c_answer) == (1, 1), "one transaction per request"
        assert k_answer <= ANSWER_CHECKOUTS, f"an answer takes {k_answer} connections, was {ANSWER_CHECKOUTS}"
        assert k_next <= NEXT_CHECKOUTS, f"a next takes {k_next} connections, was {NEXT_CHECKOUTS}"
    assert fx.ledger.verify_chain("news")["ok"]


# ----------------------------------------------------------------------------- people's chains
def _answers(tmp_path, monkeypatch):
    """Four answers by two people through the gate, after three model events in the root chain."""
    fx, tasks, _tokens = make_factory(tmp_path, monkeypatch)
    fx.ledger.append_events("news", [dict(batch_id=tasks[0]["batch_id"], item_id=t["item_id"], kind="model",
                                          actor="m@1", label=CLASSES[0], confidence=0.6) for t in tasks[:3]])
    for t, who in zip(tasks[:4], ["ann-1", "ann-2", "ann-1", "ann-2"]):
        submit_answer(fx, Answer(label=CLASSES[1], annotator=who, task_id=t["task_id"]), source="cli")
    return fx


def _chain_rows(fx, chain: str) -> list[dict]:
    with fx.ledger.reader.connect() as c:
        return [dict(r) for r in c.execute(sa.select(label_events).where(label_events.c.chain == chain)
                                           .order_by(label_events.c.seq)).mappings()]


def test_each_person_answers_on_their_own_chain_and_the_root_rolls_them_up(tmp_path, monkeypatch):
    fx = _answers(tmp_path, monkeypatch)
    cut = fx.ledger.chain_anchor("news")
    assert {k: v["events"] for k, v in cut["chains"].items()} == {"": 3, person_chain("ann-1"): 2,
                                                                  person_chain("ann-2"): 2}
    assert all(r["kind"] == "human" and r["actor"] == "ann-1" for r in _chain_rows(fx, person_chain("ann-1")))
    walk = fx.ledger.verify_chain("news")
    assert walk == {"ok": True, "events": 7, "head": cut["head"]}
    assert cut["head"] not in {v["head"] for v in cut["chains"].values()}  # the root covers every chain
    rec = write_checkpoint(fx, "news")
    assert rec["chains"] == {k: [v["events"], v["head"]] for k, v in cut["chains"].items()}
    assert verify_ledger(fx, "news")["ok"]


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_last", "reorder"])
def test_a_person_chain_shows_edits_deletions_and_reordering(tamper, tmp_path, monkeypatch):
    fx = _answers(tmp_path, monkeypatch)
    first, second = _chain_rows(fx, person_chain("ann-2"))
    with fx.ledger.engine.begin() as c:
        if tamper == "edit":
            c.execute(label_events.update().where(label_events.c.seq == first["seq"]).values(label=CLASSES[2]))
        elif tamper in ("delete_middle", "delete_last"):
            c.execute(label_events.delete().where(label_events.c.seq == (first if tamper == "delete_middle"
                                                                          else second)["seq"]))
        else:  # swap the two events' places in the chain
            for seq, to in ((first["seq"], -1), (second["seq"], first["seq"]), (-1, second["seq"])):
                c.execute(label_events.update().where(label_events.c.seq == seq).values(seq=to))
    res = fx.ledger.verify_chain("news")
    assert not res["ok"]
    expected = {"edit": "content does not match", "delete_middle": "link broken", "reorder": "link broken",
                "delete_last": "chain head of chain 'person:ann-2' does not match"}[tamper]
    assert expected in res["problem"], res


def test_a_consistently_rewritten_person_chain_is_caught_by_its_published_position(tmp_path, monkeypatch):
    fx = _answers(tmp_path, monkeypatch)
    rec = write_checkpoint(fx, "news")
    rows = _chain_rows(fx, person_chain("ann-1"))
    prev = GENESIS
    with fx.ledger.engine.begin() as c:  # the insider relabels and rehashes the chain and fixes its head
        for r in rows:
            r["label"], r["prev_hash"] = CLASSES[2], prev
            r["hash"] = prev = event_hash(prev, r)
            c.execute(label_events.update().where(label_events.c.seq == r["seq"]).values(
                label=r["label"], prev_hash=r["prev_hash"], hash=r["hash"]))
        c.execute(chain_heads.update().where(chain_heads.c.chain == person_chain("ann-1")).values(hash=prev))
    assert fx.ledger.verify_chain("news")["ok"]  # the walk alone sees nothing
    res = verify_ledger(fx, "news")
    assert any(p.startswith("event 2 of chain 'person:ann-1'") and "rewritten" in p for p in res["problems"]), res
    # an anchor whose chain list was edited no longer has its head as their root
    rec2 = dict(rec, chains=dict(rec["chains"], **{person_chain("ann-1"): [2, prev]}))
    (fx.paths.root / "checkpoints" / "news.jsonl").write_text(__import__("json").dumps(rec2) + "\n")
    assert any("not the root of the chains" in p for p in verify_ledger(fx, "news")["problems"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_single_chain_ledger_upgrades_and_its_anchors_still_hold(backend, tmp_path, request):
    """A ledger migrated before person chains (revision 0005_trustdoor) keeps its chain as the root chain."""
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'old.sqlite'}")
    upgrade(url, "0005_trustdoor")
    eng = sa.create_engine(url)
    prev, old = GENESIS, []
    for i in range(3):  # what the code before this revision wrote: one chain per dataset
        row = dict(event_id=f"e{i}", dedup_key=None, dataset="d", batch_id="b", item_id=f"i{i}", task_id=None,
                   kind="model", actor="m", label="a", confidence=None, payload="{}", supersedes=None,
                   spec_version=None, guideline_version=None, run_id=None, created_at=f"2026-01-01T00:00:0{i}",
                   prev_hash=prev)
        row["hash"] = prev = event_hash(prev, row)
        old.append(row)
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO label_events (event_id, dedup_key, dataset, batch_id, item_id, task_id, kind, "
                          "actor, label, confidence, payload, supersedes, spec_version, guideline_version, run_id, "
                          "created_at, prev_hash, hash) VALUES (:event_id, :dedup_key, :dataset, :batch_id, :item_id, "
                          ":task_id, :kind, :actor, :label, :confidence, :payload, :supersedes, :spec_version, "
                          ":guideline_version, :run_id, :created_at, :prev_hash, :hash)"), old)
        c.execute(sa.text("INSERT INTO chain_heads (dataset, seq, hash) VALUES ('d', 3, :h)"), {"h": prev})
    eng.dispose()
    assert upgrade(url) == {"before": "0005_trustdoor", "after": "0007_chains"}
    L = Ledger(url)
    assert L.verify_chain("d", anchors={3: prev}) == {"ok": True, "events": 3, "head": prev}
    assert L.chain_anchor("d")["chains"] == {"": {"events": 3, "head": prev, "seq": 3}}
    L.create_tasks([dict(task_id="t1", dataset="d", batch_id="b", item_id="i0", kind="review", reasons=["x"])])
    L.answer_task("t1", "a", "ann-1", ["a", "b"])
    assert L.verify_chain("d", anchors={3: prev})["ok"]  # the old anchor's position is still the root chain's 3rd
    L.engine.dispose()


# ----------------------------------------------------------------------------- PostgreSQL under concurrent people
def test_many_people_submitting_at_once_on_postgresql(pg_url, tmp_path, monkeypatch):
    """Eight people take and answer tasks through the workbench's own doors at once: every task answered once,
    by the person whose submission was accepted, nothing lost, every chain verifies."""
    people, n_tasks = 8, 80
    fx, tasks = _pg_factory(tmp_path, monkeypatch, pg_url, n_items=n_tasks)
    accepted: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(people)

    def person(name: str) -> None:
        try:
            start.wait()
            while True:
                t = next_task(fx, name, dataset="news")
                if t is None:
                    return
                sub = uuid.uuid4().hex
                res = submit_answer(fx, Answer(label=CLASSES[0], annotator=name, task_id=t["task_id"],
                                               submission_id=sub), source="web", require_lease=True)
                again = submit_answer(fx, Answer(label=CLASSES[0], annotator=name, task_id=t["task_id"],
                                                 submission_id=sub), source="web", require_lease=True)
                assert (again["event_id"], again["duplicate"]) == (res["event_id"], True)  # a retry is a no-op
                with lock:
                    assert t["task_id"] not in accepted
                    accepted[t["task_id"]] = (name, res["event_id"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=person, args=(f"ann-{k}",)) for k in range(people)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    human = fx.ledger.events("news", kind="human")
    assert len(human) == n_tasks == len(accepted) and human["task_id"].is_unique
    assert dict(zip(human["task_id"], zip(human["actor"], human["event_id"]))) == accepted
    assert (fx.ledger.tasks("news")["status"] == "answered").all()
    cut = fx.ledger.chain_anchor("news")
    assert sum(v["events"] for k, v in cut["chains"].items() if k) == n_tasks
    assert len([k for k in cut["chains"] if k]) > 1  # the people wrote on their own chains
    walk = fx.ledger.verify_chain("news")
    assert walk["ok"] and walk["head"] == cut["head"], walk


def test_a_bulk_task_creation_refreshes_the_planner_statistics_on_postgresql(pg_url):
    """Without statistics the queue's plan sorted every open task instead of walking the queue index (1.2 s a call)."""
    upgrade(pg_url)
    L = Ledger(pg_url)
    L.create_tasks([dict(task_id=f"t{i}", dataset="d", batch_id="b", item_id=f"i{i}", kind="review", reasons=["x"])
                    for i in range(Ledger.ANALYZE_AFTER)])
    with L.engine.connect() as c:
        assert c.exec_driver_sql("SELECT reltuples FROM pg_class WHERE relname = 'tasks'").scalar() == Ledger.ANALYZE_AFTER
    L.engine.dispose()


def test_a_token_lookup_that_reads_the_database_runs_in_a_worker_thread_not_on_the_event_loop(tmp_path, monkeypatch):
    """The auth dependency is async (no thread hop per request); a cache miss reads the database, which on the event
    loop would stall every request in flight for its round trips (every 5 s per person under load)."""
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
    app = create_app(fx.paths.root)
    client = TestClient(app)
    store = app.state.auth.store
    threads: list[str] = []
    real = store.by_token

    def by_token(token):
        threads.append(threading.current_thread().name)
        return real(token)

    monkeypatch.setattr(store, "by_token", by_token)
    hdr = {"Authorization": f"Bearer {tokens['ann-1']}"}
    for _ in range(3):  # the first reads, the others are served from the cache without a read
        assert client.get("/api/tasks/next", headers=hdr).status_code == 200
    assert len(threads) == 1, threads
    assert threads[0].startswith("AnyIO worker"), f"the token was looked up on {threads[0]}, the event loop's thread"
    assert client.get("/api/tasks/next", headers={"Authorization": "Bearer nope"}).status_code == 401

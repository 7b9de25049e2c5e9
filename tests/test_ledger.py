import pytest
import sqlalchemy as sa

from factory.errors import TaskError
from factory.storage.ledger import Ledger

CLASSES = ["a", "b"]


@pytest.fixture
def ledger(tmp_path):
    L = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    L.create_tasks([dict(task_id="t1", dataset="d", batch_id="b", item_id="i1", kind="review", reasons=["x"]),
                    dict(task_id="t2", dataset="d", batch_id="b", item_id="i2", kind="review", reasons=["y"])])
    return L


def test_wal_mode(ledger):
    with ledger.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_events_are_deduplicated_by_key(ledger):
    ev = [dict(batch_id="b", item_id="i1", kind="model", actor="m@1", label="a", dedup_key="model:i1")]
    assert ledger.append_events("d", ev) == 1
    assert ledger.append_events("d", ev) == 0
    assert len(ledger.events("d")) == 1


def test_answer_rules(ledger):
    ledger.answer_task("t1", "a", "ann-1", CLASSES)
    with pytest.raises(TaskError, match="label 'c' is not in the schema"):
        ledger.answer_task("t2", "c", "ann-1", CLASSES)
    with pytest.raises(TaskError, match="no such task"):
        ledger.answer_task("nope", "a", "ann-1", CLASSES)
    with pytest.raises(TaskError, match="already answered by another person") as blind:
        ledger.answer_task("t1", "b", "ann-2", CLASSES)
    assert "ann-1" not in str(blind.value) and "'a'" not in str(blind.value)  # blind: no name, no label
    with pytest.raises(TaskError, match="already answered 'a' by ann-1.*--correct"):  # one's own answer is shown
        ledger.answer_task("t1", "b", "ann-1", CLASSES)
    assert ledger.answer_task("t1", "a", "ann-1", CLASSES)["duplicate"] is True
    with pytest.raises(TaskError, match="nothing to correct"):
        ledger.answer_task("t2", "a", "ann-1", CLASSES, correct=True)


def test_correction_supersedes_and_keeps_the_first_answer(ledger):
    first = ledger.answer_task("t1", "a", "ann-1", CLASSES)["event_id"]
    ledger.answer_task("t1", "b", "ann-1", CLASSES, correct=True)
    ev = ledger.events("d", item_id="i1")
    assert list(ev["kind"]) == ["human", "correction"]
    assert ev.iloc[1]["supersedes"] == first and ev.iloc[0]["label"] == "a"
    dec = ledger.human_decisions("d")
    assert dec.set_index("task_id").loc["t1", "label"] == "b"
    t = ledger.tasks("d").set_index("task_id")
    assert t.loc["t1", "status"] == "answered" and t.loc["t2", "status"] == "open"


def test_chain_detects_an_edited_row(ledger):
    for i in range(5):
        ledger.append_events("d", [dict(batch_id="b", item_id=f"i{i}", kind="model", actor="m", label="a")])
    assert ledger.verify_chain("d") == {"ok": True, "events": 5, "head": ledger.verify_chain("d")["head"]}
    with ledger.engine.begin() as c:
        c.exec_driver_sql("UPDATE label_events SET label='b' WHERE seq=3")
    res = ledger.verify_chain("d")
    assert not res["ok"] and res["seq"] == 3 and "edited" in res["problem"]


def test_chain_detects_a_deleted_row(ledger):
    for i in range(5):
        ledger.append_events("d", [dict(batch_id="b", item_id=f"i{i}", kind="model", actor="m", label="a")])
    with ledger.engine.begin() as c:
        c.exec_driver_sql("DELETE FROM label_events WHERE seq=2")
    res = ledger.verify_chain("d")
    assert not res["ok"] and res["seq"] == 3 and "deleted" in res["problem"]
    with ledger.engine.begin() as c:
        c.exec_driver_sql("DELETE FROM label_events WHERE seq>=3")
    res = ledger.verify_chain("d")
    assert not res["ok"] and "at the end were deleted" in res["problem"]


def test_a_failed_transaction_writes_nothing(ledger):
    before = len(ledger.batches())
    row = dict(batch_id="b1", dataset="d", source_path="x", source_sha256="s", n_rows=1, n_items=1,
               n_duplicates=0, n_quarantined=0, spec_version="v", created_at="t")
    bad_item = dict(dataset="d", item_id="i", batch_id="b1", text=None, meta="{}", source_file="x", source_row=1)
    with pytest.raises(sa.exc.IntegrityError):
        ledger.add_batch(row, [bad_item], [], [])
    assert len(ledger.batches()) == before

"""The bad-input corpus (tests/data/bad/, expected outcomes in expected.json): a clear error or a quarantine
reason for each file, and never a half-written batch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.errors import IngestError
from factory.ingest import inbox_path, ingest

BAD = Path(__file__).parent / "data" / "bad"
EXPECTED = {k: v for k, v in json.loads((BAD / "expected.json").read_text()).items() if not k.startswith("_")}
LEDGER_TABLES = ("batches", "items", "duplicates", "quarantine")


def _counts(fx) -> dict[str, int]:
    return {t: len(fx.ledger.table(t)) for t in LEDGER_TABLES}


def _generate(name: str, folder: Path) -> Path:
    big = "x" * 50_000_000
    if name == "huge_field.csv":  # one 50 MB field, quoted with a newline so a field-size limit would split it
        text = 'text,source_file\nA normal article,a.txt\n"' + big[:10] + "\n" + big + '",b.txt\nAnother one,c.txt\n'
    else:
        lines = [{"text": "A normal article"}, {"text": big}, {"text": "Another one"}]
        text = "\n".join(json.dumps(x) for x in lines) + "\n"
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _copy(name: str, folder: Path) -> Path:
    path = folder / name
    if (BAD / name).is_dir():
        shutil.copytree(BAD / name, path)
    else:
        shutil.copyfile(BAD / name, path)
    return path


def _check_accepted(fx, rep, exp) -> None:
    assert rep.items == exp["items"]
    assert len(fx.ledger.items("news", batch_id=rep.batch_id)) == exp["items"]
    q = fx.ledger.table("quarantine", batch_id=rep.batch_id).sort_values("source_row")
    assert len(q) == len(exp["quarantine"])
    for (_, row), want in zip(q.iterrows(), exp["quarantine"]):
        assert (row["source_row"], row["field"]) == (want["row"], want["field"])
        if "file" in want:  # a folder's quarantine names the file
            assert row["source_file"] == want["file"]
        assert want["reason"] in row["reason"]
        assert len(row["raw"]) <= 2000  # the quarantine keeps a bounded excerpt, not 50 MB
    assert rep.duplicates_within == exp.get("duplicates_within", 0)
    assert len(fx.ledger.batches("news")) == 1


@pytest.mark.parametrize("name", [k for k, v in EXPECTED.items() if v["outcome"] in ("refused", "accepted")])
def test_bad_file(name, fx, tmp_path):
    exp = EXPECTED[name]
    if name.startswith("generated:"):
        path = _generate(name.split(":", 1)[1], tmp_path)
    else:
        path = _copy(name, tmp_path)
    before = _counts(fx)
    if exp["outcome"] == "refused":
        with pytest.raises(IngestError) as err:
            ingest(path, fx.spec("news"), fx.ledger)
        msg = str(err.value)
        assert exp["error"] in msg and str(path) in msg and "nothing was ingested" in msg
        assert "Traceback" not in msg
        assert _counts(fx) == before  # nothing half-accepted
    else:
        _check_accepted(fx, ingest(path, fx.spec("news"), fx.ledger), exp)


def test_a_failure_mid_write_leaves_nothing(fx, tmp_path, monkeypatch):
    """All or nothing even when the database fails after the batch row was written."""
    import sqlalchemy as sa

    from factory.storage import ledger as L

    path = tmp_path / "ragged.csv"
    shutil.copyfile(BAD / "ragged.csv", path)
    real = fx.ledger.add_batch

    def failing(batch_row, items, dups, quarantine, **_):
        with fx.ledger.engine.begin() as c:
            c.execute(L.batches.insert().values(**batch_row))
            c.execute(L.items.insert(), list(items))
            raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(fx.ledger, "add_batch", failing)
    with pytest.raises(sa.exc.OperationalError):
        ingest(path, fx.spec("news"), fx.ledger)
    assert _counts(fx) == {t: 0 for t in LEDGER_TABLES}
    monkeypatch.setattr(fx.ledger, "add_batch", real)
    assert ingest(path, fx.spec("news"), fx.ledger).items == 3  # and the same file goes in afterwards


def test_inbox_names_and_symlinks_that_leave_the_inbox(tmp_path):
    inbox = tmp_path / "inbox" / "news"
    inbox.mkdir(parents=True)
    outside = tmp_path / "secret.csv"
    outside.write_text("text\nsecret\n")
    (inbox / "symlink_out.csv").symlink_to(outside)
    (inbox / "folder").mkdir()
    (inbox / "folder" / "a.txt").symlink_to(outside)
    (inbox / "fine.csv").write_text("text\nok\n")
    for name in ("../escape.csv", "../../etc/passwd", "/etc/passwd", "..", "a/../../escape.csv"):
        with pytest.raises(IngestError, match=EXPECTED["generated:../escape.csv"]["error"]):
            inbox_path(inbox, name)
    with pytest.raises(IngestError, match=EXPECTED["generated:symlink_out.csv"]["error"]):
        inbox_path(inbox, "symlink_out.csv")
    with pytest.raises(IngestError, match="symlink pointing outside the inbox"):
        inbox_path(inbox, "folder")
    assert inbox_path(inbox, "fine.csv") == inbox / "fine.csv"


def test_answers_with_labels_outside_the_schema_import_nothing(fx, root):
    from factory.cli import main

    exp = EXPECTED["answers_bad_label.csv"]
    fx.ledger.create_tasks([dict(task_id=t, dataset="news", batch_id="b", item_id=f"i{t}", kind="review",
                                 reasons=["x"]) for t in ("t1", "t2")])
    res = CliRunner().invoke(main, ["tasks", "import", str(BAD / "answers_bad_label.csv"), "--root", str(root)])
    assert res.exit_code != 0
    assert exp["error"] in res.output and "nothing imported" in res.output
    assert fx.ledger.events("news").empty  # the good row t1 was not imported either


@pytest.mark.parametrize("name", [k for k, v in EXPECTED.items() if v["outcome"] == "gold_refused"])
def test_gold_files_giving_one_item_two_labels_are_refused(name, fx, root, tmp_path):
    from factory.cli import main

    exp = EXPECTED[name]
    ingest(_copy(exp["items_from"], tmp_path), fx.spec("news"), fx.ledger)
    res = CliRunner().invoke(main, ["gold", "add", str(BAD / name), "--dataset", "news", "--root", str(root)])
    assert res.exit_code == 2, res.output  # refused, not crashed
    assert exp["error"] in res.output and "nothing added" in res.output and str(BAD / name) in res.output
    assert "gold_items" not in _tables(fx) or fx.ledger.table("gold_items").empty


def _tables(fx) -> set[str]:
    import sqlalchemy as sa

    return set(sa.inspect(fx.ledger.engine).get_table_names())


def test_the_recorded_hash_is_of_the_bytes_that_were_ingested(fx, tmp_path, monkeypatch):
    """A file that changes while it is ingested: the batch's sha256 describes the bytes its items came from."""
    import hashlib

    path = tmp_path / "growing.csv"
    first = b"text\nfirst article\nsecond article\n"
    path.write_bytes(first)
    real_open, real_read = open, Path.read_bytes

    def appending_read(self):  # every read of the file is followed by a writer appending a row
        data = real_read(self)
        if self == path:
            with real_open(path, "ab") as f:
                f.write(b"a row appended meanwhile\n")
        return data

    monkeypatch.setattr(Path, "read_bytes", appending_read)
    import builtins

    def appending_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if Path(file) == path and "r" in mode and "b" in mode:
            data = f.read()
            f.close()
            with real_open(path, "ab") as g:
                g.write(b"a row appended meanwhile\n")
            import io
            return io.BytesIO(data)
        return f

    monkeypatch.setattr(builtins, "open", appending_open)
    rep = ingest(path, fx.spec("news"), fx.ledger)
    monkeypatch.undo()
    assert rep.items == 2
    assert fx.ledger.batch(rep.batch_id)["source_sha256"] == hashlib.sha256(first).hexdigest()


def test_the_specs_gold_file_giving_one_item_two_labels_is_refused(fx, root):
    import yaml

    from factory.errors import ReleaseError
    from factory.release import load_gold
    from tests.conftest import news_spec

    shutil.copyfile(BAD / "gold_conflict.csv", root / "gold.csv")
    spec = news_spec(quality={"max_quarantine_rate": 0.5, "gold": "gold.csv"})
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ReleaseError, match=EXPECTED["gold_conflict.csv"]["error"]):
        load_gold(fx, fx.spec("news"))

import json

import pandas as pd
import pytest

from factory.errors import IngestError
from factory.ingest import ingest, item_id_for
from tests.conftest import write_csv


def _counts(fx):
    return len(fx.ledger.batches()), len(fx.ledger.items("news")), len(fx.ledger.table("quarantine"))


def test_csv_batch_records_sha_duplicates_and_quarantine(fx, tmp_path):
    spec = fx.spec("news")
    p = tmp_path / "a.csv"
    p.write_text('text,source_file\n"first article",a\n"second article",b\n"first article",c\n'
                 '"ragged",x,y\n"   ",d\n')
    rep = ingest(p, spec, fx.ledger)
    assert rep.items == 2 and rep.duplicates_within == 1
    reasons = {(q["source_row"], q["reason"]) for q in rep.quarantined}
    assert (5, "has 3 fields, the header has 2") in reasons
    assert (6, "empty after trimming whitespace") in reasons
    b = fx.ledger.batch(rep.batch_id)
    import hashlib
    assert b["source_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    items = fx.ledger.items("news", batch_id=rep.batch_id)
    assert set(items["item_id"]) == {item_id_for("first article"), item_id_for("second article")}
    q = fx.ledger.table("quarantine", batch_id=rep.batch_id)
    assert set(q["source_file"]) == {"a.csv"} and set(q["field"]) == {"(row)", "text"}


def test_duplicates_across_batches_are_recorded_not_readded(fx, tmp_path):
    spec = fx.spec("news")
    ingest(write_csv(tmp_path / "1.csv", ["alpha", "beta"]), spec, fx.ledger)
    rep = ingest(write_csv(tmp_path / "2.csv", ["beta", "gamma"]), spec, fx.ledger)
    assert rep.items == 1 and rep.duplicates_across == 1
    d = fx.ledger.table("duplicates", batch_id=rep.batch_id)
    assert d.iloc[0]["scope"] == "across" and d.iloc[0]["item_id"] == item_id_for("beta")


def test_same_file_twice_is_refused(fx, tmp_path):
    spec = fx.spec("news")
    p = write_csv(tmp_path / "1.csv", ["alpha", "beta"])
    ingest(p, spec, fx.ledger)
    with pytest.raises(IngestError, match="already ingested as batch"):
        ingest(p, spec, fx.ledger)


def test_jsonl_parquet_and_text_folder(fx, tmp_path):
    spec = fx.spec("news")
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"text": "one"}) + "\n{broken\n" + json.dumps({"text": "two"}) + "\n")
    rep = ingest(j, spec, fx.ledger)
    assert rep.items == 2 and rep.quarantined[0]["source_row"] == 2
    assert "broken JSON" in rep.quarantined[0]["reason"]
    pq = tmp_path / "a.parquet"
    pd.DataFrame({"text": ["three", "four"]}).to_parquet(pq)
    assert ingest(pq, spec, fx.ledger).items == 2
    d = tmp_path / "docs"
    d.mkdir()
    (d / "x.txt").write_text("five")
    (d / "y.txt").write_text("six")
    rep = ingest(d, spec, fx.ledger)
    assert rep.items == 2
    meta = fx.ledger.items("news", batch_id=rep.batch_id)["meta"].map(json.loads)
    assert sorted(m["source_file"] for m in meta) == ["x.txt", "y.txt"]


def test_bom_is_accepted(fx, tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefftext\nhello\n".encode("utf-8"))
    assert ingest(p, fx.spec("news"), fx.ledger).items == 1


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"text\n", "only a header"),
    (b"text,colour\nhello,red\n", "unknown column(s) ['colour']"),
    (b"body\nhello\n", "missing column 'text'"),
    ("text\ncaf\xe9\n".encode("latin-1"), "not UTF-8"),
])
def test_header_level_problems_write_nothing(fx, tmp_path, content, message):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    before = _counts(fx)
    with pytest.raises(IngestError) as e:
        ingest(p, fx.spec("news"), fx.ledger)
    assert message in str(e.value) and str(p) in str(e.value) and "nothing was ingested" in str(e.value)
    assert _counts(fx) == before


def test_too_many_malformed_rows_refuses_the_whole_file(fx, tmp_path):
    p = tmp_path / "mostly-bad.csv"
    p.write_text("text\n" + "ok\n" + "ragged,row\n" * 5)
    before = _counts(fx)
    with pytest.raises(IngestError, match="max_quarantine_rate"):
        ingest(p, fx.spec("news"), fx.ledger)
    assert _counts(fx) == before


def test_item_id_is_a_stable_content_hash():
    assert item_id_for("Hello  world\r\n") == item_id_for("Hello  world\n")
    assert item_id_for("a") != item_id_for("b")
    assert item_id_for("x").startswith("it_") and len(item_id_for("x")) == 23


def test_duplicate_key_catches_zero_width_variants_across_batches_and_keeps_the_original_text(fx, tmp_path):
    from factory.ingest import text_key

    assert text_key("Hel\u200blo \n world") == text_key("\uff28ello world") == "Hello world"
    spec = fx.spec("news")
    ingest(write_csv(tmp_path / "1.csv", ["Hello  world", "other"]), spec, fx.ledger)
    rep = ingest(write_csv(tmp_path / "2.csv", ["Hel\u200blo world", "new one"]), spec, fx.ledger)
    assert rep.items == 1 and rep.duplicates_across == 1
    d = fx.ledger.table("duplicates", batch_id=rep.batch_id)
    assert d.iloc[0]["item_id"] == item_id_for("Hello  world")  # points at the item already there
    assert set(fx.ledger.items("news")["text"]) == {"Hello  world", "other", "new one"}  # text kept as given


def test_ingest_cli_refuses_bad_bytes_without_a_traceback(fx, root, tmp_path):
    from click.testing import CliRunner

    from factory.cli import main

    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "\\ud800"}\n')
    res = CliRunner().invoke(main, ["ingest", str(p), "--dataset", "news", "--root", str(root)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "line 1" in res.output and "lone surrogate" in res.output and str(p) in res.output


def _id_spec(fx, root):
    import yaml

    from tests.conftest import news_spec

    task = {"type": "classification", "input": "text", "metadata": ["source_file"], "id_column": "review_id"}
    (root / "datasets" / "ids.yaml").write_text(yaml.safe_dump(news_spec("ids", task=task)))
    return fx.spec("ids")


def test_external_ids_are_kept_and_resolve_to_their_items(fx, root, tmp_path):
    spec = _id_spec(fx, root)
    p = write_csv(tmp_path / "a.csv", ["alpha", "beta", "al\u200bpha"], {"review_id": ["rt-1", 2, "rt-3"]})
    rep = ingest(p, spec, fx.ledger)
    assert rep.items == 2 and rep.duplicates_within == 1
    items = fx.ledger.items("ids").set_index("external_id")
    assert items.loc["rt-1", "item_id"] == item_id_for("alpha") and items.loc["2", "item_id"] == item_id_for("beta")
    assert fx.ledger.resolve_item("ids", "rt-1") == [("ids", item_id_for("alpha"))]
    # the duplicate row's own id still names the item it repeats
    assert fx.ledger.resolve_item("ids", "rt-3") == [("ids", item_id_for("alpha"))]
    assert fx.ledger.resolve_item("ids", item_id_for("beta")) == [("ids", item_id_for("beta"))]
    assert fx.ledger.resolve_item("ids", "rt-404") == []
    # the same id later for other text is refused, naming the row and the item it already names
    q = write_csv(tmp_path / "b.csv", ["gamma", "delta"], {"review_id": ["rt-9", "rt-1"]})
    before = _counts(fx)
    with pytest.raises(IngestError, match=r"row 3: review_id 'rt-1' already names item it_"):
        ingest(q, spec, fx.ledger)
    # also when the row reusing the id is itself a duplicate of another row of the file
    q = write_csv(tmp_path / "c.csv", ["delta", "del\u200bta"], {"review_id": ["rt-10", "rt-1"]})
    with pytest.raises(IngestError, match=r"row 3: review_id 'rt-1' already names item it_"):
        ingest(q, spec, fx.ledger)
    assert _counts(fx) == before


@pytest.mark.parametrize("ids, message", [
    (["rt-1", "", "rt-3"], "row 3: review_id is empty"),
    (["rt-1", "rt-2", "rt-1"], "rows 2 and 4 share review_id 'rt-1'"),
])
def test_empty_or_repeated_external_ids_refuse_the_file_naming_rows(fx, root, tmp_path, ids, message):
    spec = _id_spec(fx, root)
    p = write_csv(tmp_path / "a.csv", ["alpha", "beta", "gamma"], {"review_id": ids})
    before = _counts(fx)
    with pytest.raises(IngestError) as e:
        ingest(p, spec, fx.ledger)
    assert message in str(e.value) and str(p) in str(e.value) and "nothing was ingested" in str(e.value)
    assert _counts(fx) == before


def test_a_declared_id_column_must_be_present(fx, root, tmp_path):
    spec = _id_spec(fx, root)
    with pytest.raises(IngestError, match="missing column 'review_id'"):
        ingest(write_csv(tmp_path / "a.csv", ["alpha", "beta"]), spec, fx.ledger)


def test_multiline_quoted_text_is_not_mistaken_for_an_unterminated_quote(fx, tmp_path):
    p = tmp_path / "paragraphs.csv"
    body = "First paragraph, with a comma.\nSecond one has none\nThird, with two, commas\n\"Quoted\"\" words\" end"
    p.write_text('text,source_file\n"' + body.replace('"', '""') + '",a\nshort one,b\n')
    rep = ingest(p, fx.spec("news"), fx.ledger)
    assert rep.items == 2 and not rep.quarantined
    assert body in set(fx.ledger.items("news")["text"])

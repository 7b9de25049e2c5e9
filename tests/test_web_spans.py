"""The workbench's token widget for span tasks, in a real browser (Playwright + Debian's Chromium): the fused
spans arrive pre-annotated on the recorded tokens; arrows + shift select, a digit types the selection, Delete
removes the span under the cursor, a mouse drag selects too, Enter submits the spans."""
from __future__ import annotations

import json

import pandas as pd
import yaml

from tests.test_web_browser import annotator_queue


def _factory(root):
    from factory.ingest import ingest
    from factory.pipeline import Factory
    from factory.spec import template

    (root / "datasets").mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(template("ents", "spans"))  # span types: PER, ORG, LOC
    spec["review"]["show_model_suggestion"] = False  # spans show the pre-annotation anyway
    (root / "datasets" / "ents.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    pd.DataFrame({"text": ["John Smith flew to New York .", "Acme hired Mary ."]}).to_csv(root / "b.csv", index=False)
    batch = ingest(root / "b.csv", fx.spec("ents"), fx.ledger).batch_id
    items = fx.ledger.items("ents", batch_id=batch).sort_values("source_row")
    suggestions = ['[[0,1,"PER"],[4,5,"ORG"]]', None]  # the models: "John" only, and "New" as an ORG
    tasks = [dict(task_id=f"t{i}", dataset="ents", batch_id=batch, item_id=r.item_id, kind="review",
                  reasons=["boundary"], suggestion=suggestions[i], created_at=f"2026-01-01T00:00:0{i}")
             for i, r in enumerate(items.itertuples())]
    fx.ledger.create_tasks(tasks)
    return fx, tasks


def test_tokens_widget_corrects_the_pre_annotation_with_keys_and_mouse(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx, tasks = _factory(tmp_path / "factory")
    with annotator_queue(fx) as (page, shown):
        shown("t0")
        # the pre-annotation is shown on the tokens
        assert page.get_attribute(".tok[data-i='0']", "data-type") == "PER"
        assert page.get_attribute(".tok[data-i='4']", "data-type") == "ORG"
        assert page.get_attribute(".tok[data-i='1']", "data-type") is None
        page.keyboard.press("Shift+ArrowRight")  # select John Smith
        page.keyboard.press("1")  # ... as a PER (replaces the one-token span)
        assert page.get_attribute(".tok[data-i='1']", "data-type") == "PER"
        for _ in range(3):
            page.keyboard.press("ArrowRight")  # cursor on "New"
        page.keyboard.press("Delete")  # the wrong ORG goes
        assert page.get_attribute(".tok[data-i='4']", "data-type") is None
        page.keyboard.press("Shift+ArrowRight")
        page.keyboard.press("3")  # New York as a LOC
        page.keyboard.press("Enter")
        shown("t1")
        # the mouse: drag over "Acme", type it ORG; click "Mary", type PER
        page.hover(".tok[data-i='0']")
        page.mouse.down()
        page.mouse.up()
        page.keyboard.press("2")
        page.click(".tok[data-i='2']")
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        page.wait_for_selector("#empty:not([hidden])", timeout=10_000)
    ev = fx.ledger.events("ents", kind="human").set_index("task_id")
    assert json.loads(ev.loc["t0", "label"]) == [[0, 2, "PER"], [4, 6, "LOC"]]
    assert json.loads(ev.loc["t1", "label"]) == [[0, 1, "ORG"], [2, 3, "PER"]]

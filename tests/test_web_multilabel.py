"""The workbench's checkbox widget for multi-label tasks, in a real browser (Playwright + Debian's Chromium):
digits tick and untick classes, Enter submits the ticked set, nothing ticked submits "none of these"."""
from __future__ import annotations

import pandas as pd
import yaml

from tests.test_web_browser import annotator_queue


def _factory(root):
    from factory.ingest import ingest
    from factory.pipeline import Factory
    from factory.spec import template

    (root / "datasets").mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(template("tags", "multi-label"))  # classes: sport, politics, economy
    (root / "datasets" / "tags.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    pd.DataFrame({"text": ["The striker scored as markets fell.", "A quiet day.",
                           "Parliament voted on the budget."]}).to_csv(root / "b.csv", index=False)
    batch = ingest(root / "b.csv", fx.spec("tags"), fx.ledger).batch_id
    items = fx.ledger.items("tags", batch_id=batch).sort_values("source_row")
    tasks = [dict(task_id=f"t{i}", dataset="tags", batch_id=batch, item_id=r.item_id, kind="review",
                  reasons=["low_confidence"], suggestion="politics" if i == 2 else None,
                  created_at=f"2026-01-01T00:00:0{i}") for i, r in enumerate(items.itertuples())]
    fx.ledger.create_tasks(tasks)
    return fx, tasks


def test_checkboxes_toggle_with_digits_and_enter_submits_the_set(tmp_path, monkeypatch):
    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx, tasks = _factory(tmp_path / "factory")
    with annotator_queue(fx) as (page, shown):
        shown("t0")
        assert page.get_attribute("#classes button[data-label=sport]", "role") == "checkbox"
        for key in ("1", "2", "3", "2"):  # tick sport, politics, economy; untick politics
            page.keyboard.press(key)
        assert page.get_attribute("#classes button[data-label=politics]", "aria-checked") == "false"
        assert page.get_attribute("#classes button[data-label=economy]", "aria-checked") == "true"
        page.keyboard.press("Enter")
        shown("t1")
        page.keyboard.press("Enter")  # nothing ticked: "none of these"
        shown("t2")
        # the models' suggested set arrives ticked; untick it and tick economy
        assert page.get_attribute("#classes button[data-label=politics]", "aria-checked") == "true"
        page.keyboard.press("2")
        page.keyboard.press("3")
        page.keyboard.press("Enter")
        page.wait_for_selector("#empty:not([hidden])", timeout=10_000)
    ev = fx.ledger.events("tags", kind="human").set_index("task_id")
    assert ev.loc["t0", "label"] == "sport|economy"
    assert ev.loc["t1", "label"] == ""
    assert ev.loc["t2", "label"] == "economy"

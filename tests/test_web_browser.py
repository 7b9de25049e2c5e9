"""End to end in a real browser: Playwright drives Debian's Chromium against `factory serve`'s app.

An annotator signs in, labels three items with the keyboard, undoes the last; an expert arbitrates
the item two people disagree on; the ledger must hold exactly those events.  The run saves a
screenshot of the queue page in its tmp folder, or to docs/workbench-queue.png (the README's picture) with
FACTORY_UPDATE_SCREENSHOTS=1: a test run leaves the repository as it was.  Skips when Chromium or Playwright is
missing locally, fails instead when CI=true.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _require_browser() -> None:
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the 'playwright' package (pip install -e '.[test]')")
    if not os.path.exists(CHROMIUM):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        msg = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — CI must have them (see .ci/run)")
        pytest.skip(msg)


def build_factory(root: Path, per_class: int = 8):
    """A factory with BBC News items pre-labelled by the real labelers (trained on 60% of them) and the
    rest routed to people as review tasks, written the way the pipeline writes them (no Dagster)."""
    from factory.datasets import load_bbc_news
    from factory.ingest import ingest, item_id_for
    from factory.labelers import make_labelers, training_hash
    from factory.pipeline import Factory

    (root / "datasets").mkdir(parents=True, exist_ok=True)
    df = load_bbc_news(limit_per_class=per_class, seed=3)
    classes = sorted(df["label"].unique())
    spec = {"name": "news", "description": "BBC News topics", "license": "CC-BY-4.0",
            "classes": [{"name": c, "definition": f"The article is mainly about {c}."} for c in classes],
            "guideline": {"version": "1.0", "text": "Label the article's main topic. When two fit, pick the one "
                                                    "the headline is about."},
            "seed": {"size": 20}, "review": {"budget": 0.6}}
    (root / "datasets" / "news.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    csv = root / "batch.csv"
    df[["text"]].to_csv(csv, index=False)
    batch = ingest(csv, fx.spec("news"), fx.ledger).batch_id
    items = fx.ledger.items("news", batch_id=batch)
    truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
    items["label"] = items["item_id"].map(truth)
    n_train = int(len(items) * 0.6)
    train, rest = items.iloc[:n_train], items.iloc[n_train:].reset_index(drop=True)
    th = training_hash(train[["item_id", "text"]], train["label"].tolist())
    folder = fx.paths.models / "news" / th
    labelers = [lb.fit(train[["item_id", "text"]], train["label"].tolist(), classes) for lb in make_labelers()]
    for lb in labelers:
        lb.save(folder / lb.info.name)
    (folder / "labelers.json").write_text(json.dumps([lb.info.name for lb in labelers]))
    probs, events = [], []
    for lb in labelers:
        p = lb.predict_proba(rest[["item_id", "text"]])
        probs.append(p)
        actor = f"{lb.info.name}@{lb.info.version}+{th[:12]}"
        for i, r in enumerate(rest.itertuples()):
            events.append(dict(batch_id=batch, item_id=r.item_id, kind="model", actor=actor,
                               label=classes[p[i].argmax()], confidence=float(p[i].max()),
                               payload={"probs": dict(zip(classes, p[i].round(4).tolist()))}))
    fused = sum(probs) / len(probs)
    tasks = []
    for i, r in enumerate(rest.itertuples()):
        label = classes[fused[i].argmax()]
        events.append(dict(batch_id=batch, item_id=r.item_id, kind="fusion", actor="fusion:auto", label=label,
                           confidence=float(fused[i].max()), payload={}))
        tasks.append(dict(task_id=f"t{i:02d}", dataset="news", batch_id=batch, item_id=r.item_id, kind="review",
                          reasons=["low_confidence"], suggestion=label, created_at=f"2026-01-01T00:00:{i:02d}"))
    fx.ledger.append_events("news", events)
    fx.ledger.create_tasks(tasks)
    return fx, {"batch": batch, "classes": classes, "tasks": tasks, "truth": truth}


def _serve(app):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, thread, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def annotator_queue(fx, name: str = "ann-1"):
    """A signed-in annotator's queue page in headless Chromium against `create_app(fx)`: yields
    ``(page, shown)``, where ``shown(task_id)`` waits until the workbench shows that task.  The server and the
    browser stop on the way out."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    from factory.users import UserStore
    from factory.web import create_app

    token = UserStore.for_ledger(fx.ledger).add(name, "annotator")
    server, thread, base = _serve(create_app(fx.paths.root, undo_grace_seconds=120))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
            try:
                page = browser.new_context(viewport={"width": 1200, "height": 800}, bypass_csp=True).new_page()
                page.goto(base + "/login")
                page.fill("#name", name)
                page.fill("#token", token)
                page.press("#token", "Enter")
                page.wait_for_url("**/queue")

                def shown(task_id: str) -> None:
                    page.wait_for_function("id => document.getElementById('task-id').textContent.startsWith(id)",
                                           arg=task_id, timeout=10_000)

                yield page, shown
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_annotator_and_expert_in_a_real_browser(tmp_path, monkeypatch):
    shot = (DOCS if os.environ.get("FACTORY_UPDATE_SCREENSHOTS") == "1" else tmp_path) / "workbench-queue.png"
    _require_browser()
    from playwright.sync_api import sync_playwright

    from factory.users import UserStore
    from factory.web import create_app

    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    fx, info = build_factory(tmp_path / "factory")
    classes, tasks = info["classes"], info["tasks"]
    store = UserStore.for_ledger(fx.ledger)
    tok = {n: store.add(n, r) for n, r in (("ann-1", "annotator"), ("ann-2", "annotator"), ("exp-1", "expert"))}
    from factory.workforce import Workforce

    Workforce(fx.ledger).add("exp-1", "expert")  # an arbitration needs a registered expert (factory.gate)
    # a second person already audited the first item with another answer than the one ann-1 will give
    first = tasks[0]
    fx.ledger.create_tasks([dict(task_id="t-audit", dataset="news", batch_id=first["batch_id"],
                                 item_id=first["item_id"], kind="audit", reasons=["audit"],
                                 suggestion=first["suggestion"], created_at="2026-01-02T00:00:00")])
    fx.ledger.answer_task("t-audit", classes[-1], "ann-2", classes, source="test")
    presses = ["1", "2", "3"]  # ann-1 answers classes[0], classes[1], classes[2]
    server, thread, base = _serve(create_app(fx.paths.root, undo_grace_seconds=120))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
            try:
                # bypass_csp: Playwright evaluates its wait predicates as strings, which the app's CSP forbids
                page = browser.new_context(viewport={"width": 1360, "height": 860}, bypass_csp=True).new_page()
                page.goto(base + "/login")
                page.fill("#name", "ann-1")
                page.fill("#token", tok["ann-1"])
                page.press("#token", "Enter")
                page.wait_for_url("**/queue")

                def shown(task_id: str) -> None:
                    page.wait_for_function("id => document.getElementById('task-id').textContent.startsWith(id)",
                                           arg=task_id, timeout=10_000)

                for t, key in zip(tasks[:3], presses):
                    shown(t["task_id"])
                    page.keyboard.press(key)
                    page.keyboard.press("Enter")
                shown(tasks[3]["task_id"])
                page.keyboard.press("u")  # undo the third answer: its task comes back
                shown(tasks[2]["task_id"])
                page.wait_for_selector("#item-text mark", timeout=10_000)  # the models' evidence is highlighted
                page.keyboard.press("g")
                page.wait_for_selector("#guideline:not([hidden])")
                assert "headline" in page.inner_text("#guideline-text")
                page.keyboard.press("Escape")
                page.wait_for_function("document.getElementById('done-today').textContent === '2'")
                page.wait_for_selector("#toast", state="hidden", timeout=10_000)
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot))

                expert = browser.new_context(viewport={"width": 1360, "height": 860}, bypass_csp=True).new_page()
                expert.goto(base + "/login")
                expert.fill("#name", "exp-1")
                expert.fill("#token", tok["exp-1"])
                expert.press("#token", "Enter")
                expert.wait_for_url("**/arbitrate")
                expert.wait_for_function("id => document.getElementById('d-item').textContent === id",
                                         arg=first["item_id"], timeout=10_000)
                assert "people disagree" in expert.inner_text("#d-why")
                decided = classes.index(info["truth"][first["item_id"]])
                expert.keyboard.press(str(decided + 1))
                expert.keyboard.press("Control+Enter")  # no rationale yet: refused in the page
                expert.wait_for_selector("#toast.error")
                expert.fill("#rationale", "The article is about the topic in its headline.")
                expert.press("#rationale", "Control+Enter")
                expert.wait_for_function("document.getElementById('dispute-count').textContent === '0'",
                                         timeout=10_000)
                expert.screenshot(path=str(tmp_path / "arbitration.png"))
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    ev = fx.ledger.events("news")
    mine = ev[ev["actor"] == "ann-1"]
    assert list(mine["kind"]) == ["human", "human", "human", "retraction"]
    assert list(mine["task_id"]) == [t["task_id"] for t in tasks[:3]] + [tasks[2]["task_id"]]
    assert list(mine["label"].iloc[:3]) == classes[:3]
    assert all('"source":"web"' in p for p in mine["payload"].iloc[:3])
    status = fx.ledger.tasks("news").set_index("task_id")["status"]
    assert status[tasks[0]["task_id"]] == status[tasks[1]["task_id"]] == "answered"
    assert status[tasks[2]["task_id"]] == "open"  # undone
    arb = ev[ev["kind"] == "arbitration"]
    assert len(arb) == 1 and arb.iloc[0]["actor"] == "exp-1" and arb.iloc[0]["label"] == classes[decided]
    assert "headline" in arb.iloc[0]["payload"]
    dec = fx.ledger.human_decisions("news").set_index("task_id")["label"]
    assert dec[first["task_id"]] == dec["t-audit"] == classes[decided]
    assert fx.ledger.verify_chain("news")["ok"]
    assert shot.stat().st_size > 10_000


def test_the_quality_report_reads_well_in_a_browser(tmp_path, monkeypatch):
    """A client opens quality/report.html from the Releases page: styled, plots a screen wide, no 'None'."""
    _require_browser()
    import re

    from playwright.sync_api import sync_playwright

    from factory.datasets import load_bbc_news
    from factory.ingest import item_id_for
    from factory.pipeline import Factory
    from factory.release import release
    from factory.users import UserStore
    from factory.web import create_app
    from test_gates import make_batch, make_root, plan

    monkeypatch.delenv("FACTORY_DATABASE_URL", raising=False)
    df = load_bbc_news(limit_per_class=12, seed=3).reset_index(drop=True)
    truth = {item_id_for(t): lab for t, lab in zip(df["text"], df["label"])}
    fx = Factory.at(make_root(tmp_path, min_accuracy=0.6))
    make_batch(fx, df["text"][:30], truth, tmp_path / "b1.csv", plan(12, 1, 12, 4, 2))  # one audited label wrong
    version = release(fx, "news")["version"]
    token = UserStore.for_ledger(fx.ledger).add("cli-1", "client")
    server, thread, base = _serve(create_app(fx.paths.root))
    shot = tmp_path / "quality-report.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
            try:
                # no bypass_csp: the report must render under the CSP the server sends with it
                page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
                page.goto(base + "/login")
                page.fill("#name", "cli-1")
                page.fill("#token", token)
                page.press("#token", "Enter")
                page.wait_for_url("**/releases")
                row = page.inner_text("tbody tr")  # the ITEMS column holds the count, not a method's repr
                assert "built-in method" not in row and "\t30\t" in row, row
                with page.expect_navigation():
                    page.click("a[href$='/quality/report.html']")
                assert page.url == f"{base}/api/releases/news/{version}/files/quality/report.html"
                page.wait_for_load_state("load")
                text = page.inner_text("body")
                assert "Quality report" in text and "Audit sample" in text
                assert not re.search(r"\bNone\b", text), [ln for ln in text.splitlines() if "None" in ln]
                assert "nan" not in text.split()
                # the inline stylesheet applied (a CSP refusing it would leave the browser's defaults)
                assert page.evaluate("getComputedStyle(document.querySelector('h1')).borderBottomStyle") == "solid"
                assert page.evaluate("getComputedStyle(document.body).maxWidth") != "none"
                widths = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
                assert len(widths) >= 4 and all(natural >= 500 and shown >= 500 for natural, shown in widths), widths
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert shot.stat().st_size > 50_000
    if os.environ.get("FACTORY_KEEP_SCREENSHOTS"):  # for a person to look at: FACTORY_KEEP_SCREENSHOTS=/some/dir
        Path(os.environ["FACTORY_KEEP_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shot.replace(Path(os.environ["FACTORY_KEEP_SCREENSHOTS"]) / shot.name)

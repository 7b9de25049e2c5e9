"""Hostile input against the API: identifiers checked before the file system, roles first, bounded bodies and
errors, no server path or stack in any response, Secure cookies from `factory serve`, and a fuzz of every
operation in the API's own OpenAPI document (schemathesis)."""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
import schemathesis
import yaml
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from factory.web import app as web_app
from factory.web import models as M
from factory.web import create_app
from factory.web.context import public_message
from test_web_api import ROLES, make_factory, spec_dict

LEAKS = ("Traceback", 'File "', "site-packages", ".yaml:", "ledger.sqlite")


def leaks(text: str, root) -> list[str]:
    """What in a response body gives away the server: its paths, a stack, a file name it parsed."""
    return [s for s in (str(root), str(root.resolve()), str(root.parent), *LEAKS) if s in text]


@pytest.fixture
def hard(tmp_path, monkeypatch):
    fx, tasks, tokens = make_factory(tmp_path, monkeypatch)
    app = create_app(fx.paths.root, max_body_bytes=64 * 1024)
    return fx, tasks, tokens, app, TestClient(app, raise_server_exceptions=False)


def auth(tokens, who):
    return {"Authorization": f"Bearer {tokens[who]}"}


def test_raw_refuses_paths_before_reading_any_file(hard, tmp_path, monkeypatch):
    fx, _tasks, tokens, _app, c = hard
    (tmp_path / "evil.yaml").write_text("name: [unterminated\n")  # a YAML file outside datasets/
    read = []
    real = type(fx).spec
    monkeypatch.setattr(type(fx), "spec", lambda self, d: read.append(d) or real(self, d))
    item = fx.ledger.items("news").iloc[0]["item_id"]
    for who in ROLES:
        for bad in ("../evil", "../../evil", "../../..", "/etc/passwd", "News", "news.yaml", "a" * 80):
            r = c.get(f"/api/items/{item}/raw", params={"dataset": bad}, headers=auth(tokens, who))
            assert r.status_code == 422, (who, bad, r.status_code)
            assert not leaks(r.text, fx.paths.root) and "evil" not in r.text and "unterminated" not in r.text
    assert read == []  # no spec was loaded for any of those names
    r = c.get(f"/api/items/{item}/raw", params={"dataset": "nosuch"}, headers=auth(tokens, "op-1"))
    assert r.status_code == 404 and not leaks(r.text, fx.paths.root)
    # a role the spec does not allow is refused before the item is looked up: same answer, item or not
    import factory.compliance

    looked_up = []
    real_raw = factory.compliance.raw_payload
    monkeypatch.setattr(factory.compliance, "raw_payload", lambda *a: looked_up.append(a) or real_raw(*a))
    a = c.get(f"/api/items/{item}/raw", params={"dataset": "news"}, headers=auth(tokens, "cli-1"))
    b = c.get("/api/items/no-such-item/raw", params={"dataset": "news"}, headers=auth(tokens, "cli-1"))
    assert a.status_code == b.status_code == 403 and a.json() == b.json() and looked_up == []
    ok = c.get(f"/api/items/{item}/raw", params={"dataset": "news"}, headers=auth(tokens, "op-1"))
    assert ok.status_code == 200 and ok.json()["item_id"] == item
    missing = c.get("/api/items/no-such-item/raw", params={"dataset": "news"}, headers=auth(tokens, "op-1"))
    assert missing.status_code == 404


def test_a_broken_spec_on_the_server_is_503_without_its_path_or_parse_error(hard):
    fx, _tasks, tokens, _app, c = hard
    (fx.paths.datasets / "broken.yaml").write_text("name: [unterminated\n")
    r = c.get("/api/items/x/raw", params={"dataset": "broken"}, headers=auth(tokens, "op-1"))
    assert r.status_code == 503 and "operator" in r.json()["detail"]
    assert not leaks(r.text, fx.paths.root) and "unterminated" not in r.text


def test_identifiers_are_checked_on_every_endpoint_that_takes_one(hard):
    fx, _tasks, tokens, _app, c = hard
    for path in ("/api/arbitration?dataset=..%2F..", "/api/arbitration/..%2F../x", "/api/feeds/..%2Fx.json",
                 "/api/feeds/UP.atom", "/api/items/x/trace?dataset=..%2F..", "/api/releases/..%2F../1/files/a"):
        who = "exp-1" if "arbitration" in path else "op-1"
        r = c.get(path, headers=auth(tokens, who))
        assert r.status_code in (404, 422), (path, r.status_code)
        assert not leaks(r.text, fx.paths.root), path
    for body in ({"dataset": "../../x", "label": "tech", "rationale": "r"},):
        r = c.post("/api/items/x/arbitrate", json=body, headers=auth(tokens, "exp-1"))
        assert r.status_code == 422 and not leaks(r.text, fx.paths.root)


def test_roles_come_before_identifier_checks(hard):
    _fx, _tasks, tokens, _app, c = hard
    assert c.get("/api/items/x/raw", params={"dataset": "../.."}).status_code == 401
    assert c.get("/api/arbitration/Bad%20Name/x", headers=auth(tokens, "ann-1")).status_code == 403
    assert c.get("/api/arbitration/Bad%20Name/x", headers=auth(tokens, "exp-1")).status_code == 422


def test_bodies_over_the_limit_are_413_by_length_or_as_they_stream(hard):
    fx, _tasks, tokens, _app, c = hard
    c.get("/api/tasks/next", headers=auth(tokens, "ann-1"))
    big = {"label": "x" * (200 * 1024), "submission_id": "s"}
    r = c.post("/api/tasks/t0/answer", json=big, headers=auth(tokens, "ann-1"))
    assert r.status_code == 413 and len(r.content) < 200 and r.headers["x-content-type-options"] == "nosniff"

    def chunks():  # no Content-Length: the limit must count what arrives
        for _ in range(100):
            yield b"x" * 4096

    r = c.post("/api/tasks/t0/answer", content=chunks(), headers=auth(tokens, "ann-1") | {
        "content-type": "application/json"})
    assert r.status_code == 413
    assert fx.ledger.events("news", kind="human").empty


def test_a_422_names_the_problem_without_echoing_the_input(tmp_path, monkeypatch):
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
    c = TestClient(create_app(fx.paths.root, max_body_bytes=16 << 20))
    c.get("/api/tasks/next", headers=auth(tokens, "ann-1"))
    huge = "y" * (10 << 20)
    r = c.post("/api/tasks/t0/answer", json={"label": huge, "submission_id": "s"}, headers=auth(tokens, "ann-1"))
    assert r.status_code == 422 and len(r.content) < 2000 and "yyyy" not in r.text
    assert r.json()["detail"][0]["loc"] == ["body", "label"]
    r = c.post("/api/tasks/t0/skip", content=b"[" + b"1," * 5000 + b"1]", headers=auth(tokens, "ann-1") | {
        "content-type": "application/json"})
    assert r.status_code == 422 and len(r.content) < 4000


def test_an_unexpected_error_is_a_generic_500_with_a_request_id_logged_server_side(hard, monkeypatch, caplog):
    fx, _tasks, tokens, app, c = hard

    def boom(_fx):
        raise RuntimeError(f"cannot open {fx.paths.root}/data/ledger.sqlite")

    monkeypatch.setattr(web_app.D, "batches_summary", boom)
    with caplog.at_level("ERROR", logger="factory.web"):
        r = c.get("/api/batches", headers=auth(tokens, "op-1"))
    assert r.status_code == 500 and not leaks(r.text, fx.paths.root) and "RuntimeError" not in r.text
    rid = r.json()["request_id"]
    assert r.headers["x-request-id"] == rid and rid in r.json()["detail"]
    assert any(rid in rec.getMessage() and rec.exc_info for rec in caplog.records)  # the stack is in the log


def test_factory_errors_in_responses_carry_no_server_path(hard, monkeypatch):
    fx, _tasks, tokens, _app, c = hard
    from factory.errors import FactoryError
    from factory.storage.ledger import TaskConflict

    for exc, code in ((FactoryError, 400), (TaskConflict, 409)):
        def fail(_fx, exc=exc):
            raise exc(f"{fx.paths.root}/tables/x.parquet: cannot read")

        monkeypatch.setattr(web_app.D, "batches_summary", fail)
        r = c.get("/api/batches", headers=auth(tokens, "op-1"))
        assert r.status_code == code and "cannot read" in r.text and not leaks(r.text, fx.paths.root)


def test_factory_errors_reaching_a_response_lose_their_paths():
    root = "/srv/factory"
    msg = public_message(f"{root}/datasets/news.yaml: not valid YAML; also /home/me/x/y.csv and /api/tasks/next",
                         root)
    assert "/srv" not in msg and "/home/me" not in msg and "/api/tasks/next" in msg
    assert len(public_message("z" * 10_000)) < 600
    assert public_message("a/b", "/", "") == "a/b"  # a server started in / must not blank every slash


def test_secure_cookies_from_factory_serve(tmp_path, monkeypatch):
    fx, _tasks, tokens = make_factory(tmp_path, monkeypatch)
    from factory import cli_web

    seen = {}

    def fake_run(*_a, **_k):  # what `factory serve` hands to uvicorn workers: the environment
        seen["app"] = web_app.app_from_env()

    monkeypatch.setattr("uvicorn.run", fake_run)
    res = CliRunner().invoke(cli_web.serve, ["--root", str(fx.paths.root), "--secure-cookies", "--max-body-kb", "2"])
    assert res.exit_code == 0, res.output
    c = TestClient(seen["app"], base_url="https://testserver")
    form = c.get("/login")
    assert "secure" in form.headers["set-cookie"].lower()
    csrf = form.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"name": "op-1", "token": tokens["op-1"], "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
    assert c.post("/api/items/x/arbitrate", content=b"x" * 4096, headers=auth(tokens, "exp-1")).status_code == 413
    # without the flag the cookie is not Secure (plain http on localhost keeps working)
    monkeypatch.setattr("uvicorn.run", fake_run)
    CliRunner().invoke(cli_web.serve, ["--root", str(fx.paths.root)])
    assert "secure" not in TestClient(seen["app"]).get("/login").headers["set-cookie"].lower()


def test_fuzz_every_operation_of_the_openapi_document(tmp_path, monkeypatch):
    """Valid and invalid requests generated from /openapi.json, as every role: no 5xx, no path or stack leaked."""
    fx, tasks, tokens = make_factory(tmp_path, monkeypatch)
    (fx.paths.datasets / "broken.yaml").write_text("name: [unterminated\n")  # the server holds a broken spec too
    app = create_app(fx.paths.root, max_body_bytes=64 * 1024)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    item = fx.ledger.items("news").iloc[0]["item_id"]
    known = {"task_id": tasks[0]["task_id"], "item_id": item, "dataset": "news", "version": "1.0.0",
             "name": "labels.parquet"}
    who = st.sampled_from(sorted(tokens) + [None])
    started, calls, operations = time.monotonic(), [0], 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        names = {p.name for p in op.path_parameters}
        strategies = [op.as_strategy(schemathesis.GenerationMode.POSITIVE),
                      op.as_strategy(schemathesis.GenerationMode.NEGATIVE)]
        if names:  # also real ids, so that calls get past the 404s into the handlers
            strategies.append(op.as_strategy(path_parameters={k: known[k] for k in names}))

        @given(case=st.one_of(strategies), user=who)
        @settings(max_examples=25, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def call(case, user):
            calls[0] += 1
            r = case.call(headers=auth(tokens, user) if user else {})
            assert r.status_code < 500, (op.label, r.status_code, r.text[:300])
            assert not leaks(r.text, fx.paths.root), (op.label, r.text[:300])
            assert len(r.content) < 64 * 1024 or r.headers.get("content-type", "").startswith(
                "application/octet-stream"), op.label

        call()
    assert operations >= 20 and calls[0] >= 20 * 25
    assert time.monotonic() - started < 60


# ----------------------------------------------------------------------------- pages and release files (issue 16)
def session(app, tokens, who) -> TestClient:
    c = TestClient(app)
    csrf = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    c.post("/login", data={"name": who, "token": tokens[who], "csrf_token": csrf})
    return c


def fake_release(fx, version="1.0.0"):
    import pandas as pd

    folder = fx.paths.releases / "news" / version
    (folder / "data").mkdir(parents=True)
    (folder / "quality").mkdir()
    t = pd.DataFrame({"item_id": ["a", "b"], "text": ["two words", "more words here"], "label": ["tech", "sports"],
                      "split": ["train", "train"]})
    t.to_parquet(folder / "labels.parquet", index=False)
    t.to_parquet(folder / "data" / "train.parquet", index=False)
    (folder / "quality" / "report.html").write_text("<html>report</html>")
    (folder / "manifest.json").write_text('{"dataset": "news", "version": "1.0.0", "items": 2}')
    (folder / "manifest-sha256.txt").write_text("")
    fx.ledger.record_release(dict(dataset="news", version=version, path=str(folder), manifest_sha256="0" * 64,
                                  n_items=2, batches="[]", created_at="2026-01-01T00:00:00"))
    return folder


def test_operations_and_releases_pages_show_item_counts(hard):
    fx, _tasks, tokens, app, _c = hard
    fake_release(fx)
    page = session(app, tokens, "op-1").get("/operator").text
    assert "built-in method" not in page and "<td>6</td>" in page  # the batch's 6 items
    page = session(app, tokens, "cli-1").get("/releases").text
    assert "built-in method" not in page and "<td>2</td>" in page
    assert "data/train.parquet" in page and "quality/report.html" in page


def test_queues_are_per_tier_and_add_up_to_the_open_tasks(hard):
    fx, tasks, tokens, app, c = hard
    b = tasks[0]["batch_id"]
    fx.ledger.create_tasks([dict(task_id="t-arb", dataset="news", batch_id=b, item_id=tasks[0]["item_id"],
                                 kind="arbitrate", reasons=["disputed"])])
    fx.ledger.create_tasks([dict(task_id="t-l2", dataset="news", batch_id=b, item_id=tasks[1]["item_id"],
                                 kind="audit", reasons=["audit"], required_tier="L2")])
    s = c.get("/api/operator/summary", headers=auth(tokens, "op-1")).json()
    rows = {q["tier"]: q for q in s["queues"]}
    assert set(rows) == {"L1", "L2", "expert"} and rows["expert"]["kinds"] == {"arbitrate": 1}
    assert rows["L2"]["kinds"] == {"audit": 1} and rows["L1"]["kinds"] == {"review": 6}
    assert sum(q["open"] for q in s["queues"]) == s["open_tasks"] == 8
    page = session(app, tokens, "op-1").get("/operator").text
    assert "<td>expert</td><td>1</td>" in page and "<strong>8</strong>" in page


def test_release_files_in_subfolders_are_served_and_metered_but_cannot_escape(hard, tmp_path):
    import os

    fx, _tasks, tokens, _app, c = hard
    folder = fake_release(fx)
    r = c.get("/api/releases/news/1.0.0/files/quality/report.html", headers=auth(tokens, "aud-1"))
    assert r.status_code == 200 and r.text == "<html>report</html>"
    r = c.get("/api/releases/news/1.0.0/files/data/train.parquet", headers=auth(tokens, "cli-1"))
    assert r.status_code == 200 and r.content == (folder / "data" / "train.parquet").read_bytes()
    use = c.get("/api/deliveries", headers=auth(tokens, "op-1")).json()
    assert len(use) == 1 and use[0]["items"] == 2  # the per-split copy carries labels: metered like labels.parquet
    (tmp_path / "secret.txt").write_text("do not serve")
    os.symlink(tmp_path / "secret.txt", folder / "data" / "link.txt")
    os.symlink(tmp_path, folder / "quality" / "up")
    for bad in ("data/..%2F..%2F..%2Fdatasets%2Fnews.yaml", "data/link.txt", "quality/up/secret.txt", "data/",
                "data//train.parquet", "data/%2E%2E/labels.parquet", "data/missing.parquet", "data%5Ctrain.parquet",
                "a/b/c/d/e"):
        r = c.get(f"/api/releases/news/1.0.0/files/{bad}", headers=auth(tokens, "cli-1"))
        assert r.status_code == 404, (bad, r.status_code)
        assert not leaks(r.text, fx.paths.root)


def test_the_openapi_document_types_the_json_responses(hard):
    fx, _tasks, tokens, app, c = hard
    doc = c.get("/openapi.json").json()
    typed = {("/api/me", "get"): "MeOut", ("/api/progress", "get"): "ProgressOut",
             ("/api/items/{item_id}/highlights", "get"): "HighlightsOut",
             ("/api/items/{item_id}/trace", "get"): "TraceOut", ("/api/items/{item_id}/raw", "get"): "RawItemOut",
             ("/api/batches", "get"): "BatchOut", ("/api/operator/summary", "get"): "OperatorSummaryOut",
             ("/api/releases", "get"): "ReleaseOut", ("/api/feeds/{dataset}.json", "get"): "FeedOut",
             ("/api/deliveries", "get"): "UsageOut"}
    for (path, method), model in typed.items():
        schema = doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert model in json.dumps(schema), (path, schema)
        assert model in doc["components"]["schemas"]
    assert "tier" in doc["components"]["schemas"]["TierQueue"]["properties"]
    # and the data passes its own models (a mismatch would be a 500 here)
    fake_release(fx)
    item = fx.ledger.items("news").iloc[0]["item_id"]
    for who, path in (("ann-1", "/api/progress"), ("op-1", "/api/batches"), ("op-1", "/api/operator/summary"),
                      ("cli-1", "/api/releases"), ("aud-1", f"/api/items/{item}/trace"), ("op-1", "/api/deliveries"),
                      ("op-1", f"/api/items/{item}/raw?dataset=news"), ("aud-1", f"/api/items/{item}/highlights"),
                      ("cli-1", "/api/me")):
        r = c.get(path, headers=auth(tokens, who))
        assert r.status_code == 200, (path, r.status_code, r.text[:200])


def untyped_json_responses(doc: dict) -> list[str]:
    """Every 2xx JSON response of an OpenAPI document whose schema gives a generated client no type: an empty
    schema, a bare object without properties, or an array of those."""
    def typed(schema: dict) -> bool:
        if "$ref" in schema:
            return True
        for key in ("anyOf", "oneOf", "allOf"):
            if key in schema:
                parts = [s for s in schema[key] if s.get("type") != "null"]
                return bool(parts) and all(typed(s) for s in parts)
        kind = schema.get("type")
        if kind == "array":
            return typed(schema.get("items") or {})
        if kind == "object":
            extra = schema.get("additionalProperties")
            return bool(schema.get("properties")) or (isinstance(extra, dict) and typed(extra))
        return kind in ("string", "integer", "number", "boolean")

    bad = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for status, response in op.get("responses", {}).items():
                if not str(status).startswith("2"):
                    continue
                for media_type, media in (response.get("content") or {}).items():
                    if "json" in media_type and not typed(media.get("schema") or {}):
                        bad.append(f"{method.upper()} {path} {status} {media_type}: {media.get('schema')}")
    return bad


def test_the_walk_finds_untyped_json_responses():
    """The walk below can fail: an endpoint returning a bare dict, a list of dicts or `Any` is reported."""
    app = FastAPI()

    @app.get("/bare")
    def bare() -> dict:
        return {}

    @app.get("/listed")
    def listed() -> list[dict]:
        return []

    @app.get("/anything")
    def anything() -> Any:
        return 1

    @app.get("/typed")
    def typed() -> M.MeOut:
        return {"name": "a", "role": "annotator", "auth": "token"}

    @app.get("/typed-list")
    def typed_list() -> list[M.BatchOut]:
        return []

    bad = untyped_json_responses(app.openapi())
    assert [b.split(" ")[1] for b in bad] == ["/bare", "/listed", "/anything"]


def test_every_json_response_of_the_api_has_a_typed_schema(hard):
    _fx, _tasks, _tokens, app, _c = hard
    doc = app.openapi()
    assert untyped_json_responses(doc) == []
    # the downloads are documented as what they are, not as JSON
    files = doc["paths"]["/api/releases/{dataset}/{version}/files/{name}"]["get"]["responses"]["200"]["content"]
    assert "application/octet-stream" in files and not any("json" in t for t in files)
    atom = doc["paths"]["/api/feeds/{dataset}.atom"]["get"]["responses"]["200"]["content"]
    assert list(atom) == ["application/atom+xml"]


def test_release_files_refuse_dot_dot_absolute_paths_and_symlinks_out(hard, tmp_path):
    import os

    from factory.web import data as D

    fx, _tasks, tokens, _app, c = hard
    folder = fake_release(fx)
    (tmp_path / "outside.txt").write_text("do not serve")
    os.symlink(tmp_path / "outside.txt", folder / "quality" / "out.html")
    os.symlink(tmp_path, folder / "up")
    assert D.release_file(fx, "news", "1.0.0", "quality/report.html") == (folder / "quality" / "report.html").resolve()
    for bad in ("..", "../news/1.0.0/labels.parquet", "data/../labels.parquet", "data/../../../datasets/news.yaml",
                "/etc/passwd", str(folder / "labels.parquet"), str(tmp_path / "outside.txt"), "//etc/passwd",
                "quality/out.html", "up/outside.txt", "up", "data", "./labels.parquet", "data/./train.parquet",
                "data\\train.parquet", "labels.parquet\x00.txt"):
        assert D.release_file(fx, "news", "1.0.0", bad) is None, bad
    # and over HTTP, however the path is spelled (an absolute path, an encoded one, a double slash)
    for bad in ("/etc/passwd", "%2Fetc%2Fpasswd", "%2E%2E/%2E%2E/datasets/news.yaml", "..%2F..%2Fdatasets%2Fnews.yaml",
                "quality/out.html", "up/outside.txt", f"{folder}/labels.parquet".lstrip("/")):
        r = c.get(f"/api/releases/news/1.0.0/files/{bad}", headers=auth(tokens, "aud-1"))
        assert r.status_code in (404, 422), (bad, r.status_code)
        assert "do not serve" not in r.text and not leaks(r.text, fx.paths.root)


def test_factory_serve_gives_workers_time_to_start_on_a_busy_host(tmp_path, monkeypatch):
    """uvicorn kills a worker that has not answered its supervisor's ping 5 s after being spawned; importing the app
    on a loaded host takes longer, and `--workers 2` restarted its workers forever. `factory serve` allows 60 s."""
    fx, _tasks, _tokens = make_factory(tmp_path, monkeypatch)
    from factory import cli_web

    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda *_a, **k: seen.update(k))
    res = CliRunner().invoke(cli_web.serve, ["--root", str(fx.paths.root), "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert seen["workers"] == 2 and seen["timeout_worker_healthcheck"] == cli_web.WORKER_HEALTHCHECK_SECONDS >= 30
    CliRunner().invoke(cli_web.serve, ["--root", str(fx.paths.root), "--workers", "2", "--worker-start-seconds", "9"])
    assert seen["timeout_worker_healthcheck"] == 9

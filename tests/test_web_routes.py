"""The web app's surface is pinned: every route (path, methods, handler name, in the schema or not) and the
OpenAPI contract (per operation its parameters, request and response schemas and status codes; per schema its
fields and required fields; not the titles and renderings a FastAPI release may change).

tests/data/web_api.json was written from the app as it was before `create_app` was split into per-resource
routers, so this test is what says the split changed nothing a client can see.  An intended API change
updates the pin: `python tests/test_web_routes.py` rewrites it; review the diff like code.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

from factory.web import create_app

try:  # FastAPI >= 0.16x keeps included routers lazily: this walks into them
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copies included routes into app.routes
    def iter_route_contexts(routes):
        return list(routes)

PIN = Path(__file__).parent / "data" / "web_api.json"


def surface(app) -> dict:
    # iter_route_contexts: the routes of included routers too, as the app serves them
    routes = [{"path": r.path, "methods": sorted(r.methods or []), "name": r.name,
               "in_schema": bool(getattr(r, "include_in_schema", False)), "kind": type(getattr(r, "original_route", r)).__name__}
              for r in iter_route_contexts(app.routes)]
    return {"routes": sorted(routes, key=lambda x: (x["path"], x["methods"])), "openapi": app.openapi()}


def _normalised(doc: dict) -> dict:
    return json.loads(json.dumps(doc, sort_keys=True))


def _refs(node) -> list[str]:
    """Every schema a part of the document points at (`$ref`), wherever FastAPI nests it."""
    if isinstance(node, dict):
        return sorted({*([node["$ref"]] if "$ref" in node else []), *(r for v in node.values() for r in _refs(v))})
    if isinstance(node, list):
        return sorted({r for v in node for r in _refs(v)})
    return []


def contract(doc: dict) -> dict:
    """What a client relies on, without what a FastAPI/Pydantic release may render differently (titles,
    `anyOf` vs `nullable`, descriptions): per operation its parameters, request and response schemas by name
    and its status codes; per schema its fields and which are required."""
    ops = {f"{m.upper()} {path}": {
        "parameters": sorted((p["in"], p["name"], bool(p.get("required"))) for p in op.get("parameters", [])),
        "body": _refs(op.get("requestBody", {})),
        "responses": {code: _refs(r) for code, r in op.get("responses", {}).items()}}
        for path, methods in doc["paths"].items() for m, op in methods.items()}
    schemas = {name: {"fields": sorted(sc.get("properties", {})), "required": sorted(sc.get("required", []))}
               for name, sc in doc.get("components", {}).get("schemas", {}).items()}
    return json.loads(json.dumps({"operations": ops, "schemas": schemas}))


def test_the_routes_and_the_openapi_contract_are_the_pinned_ones(root):
    expected = json.loads(PIN.read_text())
    got = _normalised(surface(create_app(root)))
    pairs = lambda d: sorted((r["path"], m) for r in d["routes"] for m in r["methods"] or ["(mount)"])
    assert pairs(got) == pairs(expected), "routes (path, method) differ from the pin"
    assert got["routes"] == expected["routes"]
    want, have = contract(expected["openapi"]), contract(got["openapi"])
    for op, shape in want["operations"].items():
        assert have["operations"].get(op) == shape, f"{op} differs from the pin"
    assert have == want


def test_the_contract_sees_a_changed_response_model(root):
    """The comparison is not blind: a response pointing at another schema, or a field dropped, differs."""
    doc = _normalised(surface(create_app(root)))["openapi"]
    base = contract(doc)
    op = doc["paths"]["/api/tasks/{task_id}/answer"]["post"]
    op["responses"]["201"]["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/Other"}
    assert contract(doc) != base
    doc = _normalised(surface(create_app(root)))["openapi"]
    doc["components"]["schemas"]["AnswerOut"]["properties"].popitem()
    assert contract(doc) != base


def test_the_pin_covers_the_api_and_the_pages():
    pin = json.loads(PIN.read_text())
    paths = {r["path"] for r in pin["routes"]}
    assert {"/api/tasks/{task_id}/answer", "/api/releases", "/api/arbitration", "/login", "/queue"} <= paths
    assert len(pin["openapi"]["paths"]) >= 20 and "AnswerOut" in pin["openapi"]["components"]["schemas"]


if __name__ == "__main__":  # rewrite the pin from the current app (after an intended API change)
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import news_spec

    home = Path(tempfile.mkdtemp()) / "factory"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "news.yaml").write_text(yaml.safe_dump(news_spec()))
    PIN.write_text(json.dumps(_normalised(surface(create_app(home))), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PIN}")

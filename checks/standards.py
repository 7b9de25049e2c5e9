"""Quality standards as files: Great Expectations 1.x suites declared in checks/standards/*.json.

No Dagster here: `validate()` runs one suite of a standard against a DataFrame and returns, per
expectation, whether it held and which rows (by item_id) broke it.  checks/asset_checks.py wraps it.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

STANDARDS_DIR = Path(__file__).parent / "standards"
DEFAULT_STANDARD = "factory-default-1.1.0"
_lock = threading.Lock()


@dataclass
class ExpectationOutcome:
    """One expectation's result."""

    name: str
    type: str
    success: bool
    blocking: bool
    description: str
    unexpected_count: int = 0
    unexpected_items: list[str] = field(default_factory=list)
    observed: Any = None

    def message(self) -> str:
        if self.success:
            return f"{self.name}: passed ({self.description})"
        rows = f" on item(s) {self.unexpected_items[:10]}" if self.unexpected_items else ""
        more = f" and {self.unexpected_count - 10} more" if self.unexpected_count > 10 else ""
        obs = f" (observed {self.observed})" if self.observed is not None and not self.unexpected_items else ""
        return f"{self.name}: FAILED, {self.unexpected_count} unexpected{rows}{more}{obs} ({self.description})"


@dataclass
class SuiteOutcome:
    """A suite's result: the standard it belongs to and each expectation's outcome."""

    standard: str
    suite: str
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def blocking_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if o.blocking and not o.success]

    def to_dict(self) -> dict:
        return {"standard": self.standard, "suite": self.suite, "success": self.success,
                "expectations": [o.__dict__ | {"observed": _jsonable(o.observed)} for o in self.outcomes]}


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)


@lru_cache(maxsize=None)
def load_standard(standard: str = DEFAULT_STANDARD) -> dict:
    """Read a standard file by its id-version name (e.g. factory-default-1.0.0)."""
    path = STANDARDS_DIR / f"{standard}.json"
    if not path.exists():
        known = sorted(p.stem for p in STANDARDS_DIR.glob("*.json"))
        raise FileNotFoundError(f"quality standard '{standard}' not found in {STANDARDS_DIR}; known: {known}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if f"{doc['id']}-{doc['version']}" != standard:
        raise ValueError(f"{path}: id/version inside ({doc['id']}-{doc['version']}) do not match the file name")
    return doc


def expectations(suite: str, standard: str = DEFAULT_STANDARD) -> list[dict]:
    """The declared expectations of one suite of a standard."""
    return load_standard(standard)["suites"][suite]


def _resolve(kwargs: dict, params: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, str) and v.startswith("$"):
            if v[1:] not in params:
                raise KeyError(f"expectation parameter {v} needs a value (given: {sorted(params)})")
            v = params[v[1:]]
        out[k] = v
    return out


@lru_cache(maxsize=1)
def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # imported lazily: it takes seconds

    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # progress bars are cosmetic; an API change must not stop a check
        pass
    return gx, ctx


def _camel(type_name: str) -> str:
    return "".join(p.capitalize() for p in type_name.split("_"))


def typed_expectations(decl: list[dict], task_type, classes: list[str]) -> list[dict]:
    """The suite with each expectation that checks labels against ``$classes`` replaced by what the task type
    says a valid label is (``task_type.expectations(classes)``, its null check left to the standard's).

    For one class per item that is the same ``label_in_schema`` set check; for a set of tags it is a
    regex over the ``|``-joined canonical form."""
    out = []
    for d in decl:
        if "$classes" in d.get("kwargs", {}).values():
            column = d["kwargs"].get("column", "label")
            typed = [e for e in task_type.expectations(classes, column=column)
                     if e["type"] != "expect_column_values_to_not_be_null"]
            # the first keeps the standard's name: asset checks and certificates are declared under it
            if [e["type"] for e in typed] == [d["type"]]:  # the type checks it the standard's way: keep it as written
                out.append(d)
                continue
            out += [dict(e, name=d["name"] if j == 0 else e["name"], blocking=d.get("blocking", e.get("blocking", True)))
                    for j, e in enumerate(typed)]
        else:
            out.append(d)
    return out


def validate(df: pd.DataFrame, suite: str, params: dict | None = None,
             standard: str = DEFAULT_STANDARD, id_column: str = "item_id",
             declared: list[dict] | None = None, task_type=None) -> SuiteOutcome:
    """Run one suite of a standard on a DataFrame with Great Expectations; report failing rows by id.

    `declared` runs these expectations (``{"name", "type", "kwargs", ...}``, e.g. a task type's
    ``expectations(classes)``) instead of the standard's suite.  `task_type` (with ``params["classes"]``)
    checks labels the way that type stores them (`typed_expectations`)."""
    decl = declared if declared is not None else expectations(suite, standard)
    params = params or {}
    if task_type is not None and "classes" in params:
        decl = typed_expectations(decl, task_type, list(params["classes"]))
    with _lock:  # the ephemeral context is shared; GX objects are not thread-safe
        gx, ctx = _context()
        n = len(ctx.suites.all())
        name = f"{standard}:{suite}:{n}"
        ds = ctx.data_sources.add_pandas(f"ds-{n}")
        bd = ds.add_dataframe_asset(f"asset-{n}").add_batch_definition_whole_dataframe("whole")
        gsuite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for d in decl:
            cls = getattr(gx.expectations, _camel(d["type"]))
            gsuite.add_expectation(cls(**_resolve(d["kwargs"], params), meta={"name": d["name"]}))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"vd-{n}", data=bd, suite=gsuite))
        fmt = {"result_format": "COMPLETE"}
        if id_column in df.columns:
            fmt["unexpected_index_column_names"] = [id_column]
        res = vd.run(batch_parameters={"dataframe": df}, result_format=fmt)
    by_name = {(r.expectation_config.meta or {}).get("name"): r for r in res.results}
    outcomes = []
    for d in decl:
        r = by_name[d["name"]]
        result = r.result or {}
        idx = result.get("unexpected_index_list") or []
        ids = [str(x.get(id_column)) for x in idx if isinstance(x, dict) and id_column in x]
        outcomes.append(ExpectationOutcome(
            name=d["name"], type=d["type"], success=bool(r.success), blocking=bool(d.get("blocking", False)),
            description=d.get("description", ""), unexpected_count=int(result.get("unexpected_count") or 0),
            unexpected_items=sorted(set(ids)), observed=result.get("observed_value")))
    return SuiteOutcome(standard, suite, outcomes)

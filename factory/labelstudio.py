"""Label Studio interoperability: routed tasks out (with the models' predictions), human answers in.

Export writes Label Studio's JSON task format: one task per routed factory task, `data.text` the
item, `data.factory_task_id` the task id, and one prediction per labeler (plus the fusion) with
`model_version` and `score`.  Import reads a Label Studio JSON export and turns its annotations into
ordinary human label events through the answer gate (`factory.gate`): every annotation is checked
first (known task, label in the schema, annotator mapped, then the gate's leases and workforce rules)
and if anything is wrong nothing is imported.  A textarea result (e.g. `rationale`) becomes the
answer's rationale, which an arbitration task requires.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from factory.errors import FactoryError
from factory.gate import Answer, submit_answers
from factory.storage.ledger import Ledger
from factory.tasks import AnswerError
from factory.workforce import shown_kind_and_reasons

FROM_NAME, TO_NAME = "label", "text"


class LabelStudioError(FactoryError):
    """A Label Studio file cannot be exported or imported; nothing was written."""


def label_config(spec) -> str:
    """The Label Studio labeling config (XML) matching the exported tasks: the task type's control tag."""
    control = spec.task_type.labelstudio_config(spec.class_names, FROM_NAME, TO_NAME)
    objects = spec.task_type.labelstudio_objects  # e.g. pairs: two texts side by side
    shown = objects() if objects is not None else f'  <Text name="{TO_NAME}" value="$text"/>\n'
    return f'<View>\n{shown}{control}</View>\n'


def _item_kw(spec, item) -> dict:
    """The item (text, meta) for a type that maps offsets through it (spans: characters <-> tokens), else nothing."""
    if not spec.task_type.needs_item or item is None:
        return {}
    return {"item": {"text": item["text"], "meta": item["meta"]}}


def _one_item(ledger: Ledger, spec, t: dict):
    if not spec.task_type.needs_item:
        return None
    df = ledger.items(t["dataset"], item_ids=[t["item_id"]])
    return None if df.empty else df.iloc[0]


def export_tasks(fx, batch_id: str, *, include_answered: bool = False) -> list[dict]:
    """The batch's routed tasks (open ones unless `include_answered`) as Label Studio tasks with predictions."""
    batch = fx.ledger.batch(batch_id)
    if batch is None:
        raise LabelStudioError(f"batch '{batch_id}': no such batch; see `factory batches list`")
    dataset = batch["dataset"]
    spec = fx.spec(dataset)
    tasks = fx.ledger.tasks(dataset, batch_id=batch_id, status=None if include_answered else "open")
    if tasks.empty:
        return []
    items = fx.ledger.items(dataset, item_ids=tasks["item_id"].tolist()).set_index("item_id")
    ev = fx.ledger.events(dataset, batch_id=batch_id, kind=["model", "fusion"])
    ev = ev[ev["item_id"].isin(set(tasks["item_id"]))]
    by_item = {i: g for i, g in ev.groupby("item_id")}
    item_columns = spec.task_type.item_columns  # e.g. pairs: data.left and data.right
    out = []
    for t in tasks.itertuples(index=False):
        kind, reasons = shown_kind_and_reasons(t.kind, json.loads(t.reasons) if isinstance(t.reasons, str)
                                               else list(t.reasons))  # a honeypot looks like an audit
        preds = []
        g = by_item.get(t.item_id)
        if g is not None:
            latest_fusion = g[g["kind"] == "fusion"].tail(1)
            for r in list(g[g["kind"] == "model"].itertuples()) + list(latest_fusion.itertuples()):
                preds.append({"model_version": r.actor, "score": None if r.confidence is None else float(r.confidence),
                              "result": spec.task_type.to_labelstudio(str(r.label), FROM_NAME, TO_NAME,
                                                                      **_item_kw(spec, items.loc[t.item_id]))})
        out.append({
            "data": {"text": items.loc[t.item_id, "text"], "factory_task_id": t.task_id, "item_id": t.item_id,
                     # the user's own id (spec task.id_column), so Label Studio shows the id they know
                     "external_id": items.loc[t.item_id, "external_id"] or None,
                     "dataset": dataset, "batch_id": batch_id, "task_kind": kind, "reasons": reasons,
                     **(item_columns(items.loc[t.item_id, "text"]) if item_columns is not None else {})},
            "predictions": preds,
        })
    return out


@dataclass
class ImportReport:
    """What an import found: counts, and every problem with the task and annotation at fault."""

    path: str
    tasks: int = 0
    annotations: int = 0
    cancelled: int = 0
    duplicates: int = 0
    recorded: int = 0
    problems: list[str] = field(default_factory=list)
    plan: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        head = (f"{self.path}: {self.tasks} task(s), {self.annotations} annotation(s), {self.cancelled} cancelled "
                f"(ignored), {self.duplicates} already recorded, {self.recorded} recorded")
        if self.problems:
            head += f"\nnothing imported, {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems[:100])
        return head


def _annotator(completed_by, mapping: dict[str, str] | None) -> tuple[str | None, str]:
    """(factory annotator id or None if unmapped, how Label Studio named them)."""
    if isinstance(completed_by, dict):
        keys = [str(completed_by.get("email") or ""), str(completed_by.get("id") or "")]
    else:
        keys = [str(completed_by if completed_by is not None else "")]
    keys = [k for k in keys if k]
    shown = keys[0] if keys else "(unknown)"
    if mapping is not None:
        for k in keys:
            if k in mapping:
                return mapping[k], shown
        return None, shown
    return (f"ls:{shown}" if keys else None), shown


def read_annotator_map(path: str | Path) -> dict[str, str]:
    """A Label Studio user (id or email) -> factory annotator map, from JSON {..} or CSV 'ls_user,annotator'."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise LabelStudioError(f"{p}: the annotator map must be a JSON object {{\"ls user\": \"annotator\"}}")
        return {str(k): str(v) for k, v in data.items()}
    out = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (n == 1 and line.lower().startswith("ls_user")):
            continue
        parts = [x.strip() for x in line.split(",")]
        if len(parts) != 2 or not all(parts):
            raise LabelStudioError(f"{p}: line {n}: expected 'ls_user,annotator', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def plan_import(fx, path: str | Path, annotator_map: dict[str, str] | None = None) -> ImportReport:
    """Check a Label Studio JSON export against the ledger; the report's plan is what an import would write."""
    path = Path(path)
    rep = ImportReport(str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LabelStudioError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, list):
        raise LabelStudioError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(data).__name__}")
    ledger: Ledger = fx.ledger
    specs: dict = {}
    seen: set[str] = set()
    for n, task in enumerate(data):
        rep.tasks += 1
        where = f"task #{n} (Label Studio id {task.get('id', '?') if isinstance(task, dict) else '?'})"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            rep.problems.append(f"{where}: not a task object with 'data'")
            continue
        tid = task["data"].get("factory_task_id")
        if not tid:
            rep.problems.append(f"{where}: no data.factory_task_id; import only tasks exported by "
                                f"`factory export label-studio`")
            continue
        t = ledger.task(str(tid))
        if t is None:
            rep.problems.append(f"{where}: unknown factory task '{tid}'")
            continue
        if tid in seen:
            rep.problems.append(f"{where}: factory task '{tid}' appears twice in the file")
            continue
        seen.add(tid)
        spec = specs.get(t["dataset"]) or specs.setdefault(t["dataset"], fx.spec(t["dataset"]))
        anns = task.get("annotations") or task.get("completions") or []
        live = [a for a in anns if not a.get("was_cancelled")]
        rep.cancelled += len(anns) - len(live)
        rep.annotations += len(anns)
        answers = []
        for a in live:
            aw = f"{where}, annotation {a.get('id', '?')}"
            try:  # the task type reads its own control's results (one choice, a set of choices, ...)
                label = spec.task_type.from_labelstudio(a.get("result", []), spec.class_names, aw,
                                                        **_item_kw(spec, _one_item(ledger, spec, t)))
            except AnswerError as e:
                rep.problems.append(f"{e} (dataset '{t['dataset']}')")
                continue
            who, shown = _annotator(a.get("completed_by"), annotator_map)
            if who is None:
                rep.problems.append(f"{aw}: Label Studio user '{shown}' is not in the annotator map")
                continue
            notes = [x for r in a.get("result", []) if r.get("type") == "textarea"
                     for x in r.get("value", {}).get("text", [])]
            answers.append({"task_id": tid, "label": label, "annotator": who, "where": aw,
                            "rationale": " ".join(map(str, notes)).strip() or None,
                            "submission_id": f"ls:{task.get('id', n)}:{a.get('id', len(answers))}",
                            "spec_version": spec.version, "guideline_version": spec.guideline.version,
                            "source": "label-studio",
                            "payload": {"label_studio": {"task": task.get("id"), "annotation": a.get("id"),
                                                         "user": shown}}})
        if not answers:
            continue
        if len({a["label"] for a in answers}) > 1:
            rep.problems.append(f"{where}: {len(answers)} annotations disagree "
                                f"({', '.join(a['annotator'] + '=' + a['label'] for a in answers)}); the factory "
                                f"takes one answer per task: resolve it in Label Studio or arbitrate it here")
            continue
        rep.plan.append(answers[0])
    return rep


def import_export(fx, path: str | Path, annotator_map: dict[str, str] | None = None,
                  dry_run: bool = False) -> ImportReport:
    """Import a Label Studio JSON export as human label events through the gate: all of it, or nothing."""
    rep = plan_import(fx, path, annotator_map)
    if rep.problems or not rep.plan:
        return rep
    answers = [Answer(label=a["label"], annotator=a["annotator"], task_id=a["task_id"], rationale=a.get("rationale"),
                      submission_id=a["submission_id"], payload=a["payload"], where=a["where"]) for a in rep.plan]
    gate = submit_answers(fx, answers, source="label-studio", dry_run=dry_run)
    rep.problems += [f"{r.where}: {r.cause}" for r in gate.refused]
    if not rep.problems:
        rep.recorded = 0 if dry_run else gate.recorded
        rep.duplicates += gate.duplicates
    return rep

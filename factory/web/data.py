"""Read models for the workbench: what a page or an API answer shows, computed from the ledger.

Nothing here writes; writes go through `Ledger` methods (answer_task, retract_answer, skip_task,
arbitrate, flag_guideline_gap) so the web makes ordinary ledger events.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from factory.storage.ledger import items as items_table
from factory.storage.ledger import label_events, task_assignments, tasks as tasks_table
from factory.disputes import disputed_items  # noqa: F401  (moved to the core: the answer gate needs it)
from factory.errors import SpecError
from factory.spec import NAME_RE, DatasetSpec
from factory.workforce import shown_kind_and_reasons

log = logging.getLogger("factory.web")


class SpecCache:
    """Dataset specs by file modification time (a page must not re-parse YAML on every request)."""

    def __init__(self, fx):
        self.fx = fx
        self._specs: dict[str, tuple[float, DatasetSpec]] = {}
        self._lock = threading.Lock()

    def get(self, dataset: str) -> DatasetSpec:
        if not NAME_RE.match(dataset):  # never build a path from a name that is not a dataset name
            raise SpecError("not a dataset name")
        path = self.fx.paths.spec_path(dataset)
        mtime = path.stat().st_mtime if path.exists() else -1.0
        with self._lock:
            hit = self._specs.get(dataset)
            if hit and hit[0] == mtime:
                return hit[1]
        spec = self.fx.spec(dataset)
        with self._lock:
            self._specs[dataset] = (mtime, spec)
        return spec


def _json(text) -> object:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def item_row(fx, dataset: str, item_id: str) -> dict | None:
    with fx.ledger.reader.connect() as c:
        row = c.execute(sa.select(items_table).where(items_table.c.dataset == dataset,
                                                     items_table.c.item_id == item_id)).mappings().first()
    return dict(row) if row else None


def datasets_of_item(fx, item_id: str) -> list[str]:
    with fx.ledger.reader.connect() as c:
        return [r[0] for r in c.execute(sa.select(items_table.c.dataset).where(items_table.c.item_id == item_id))]


def _shows(spec) -> bool:
    return bool(spec.review.show_model_suggestion or spec.task_type.shows_prelabel)


def task_payload(fx, specs: SpecCache, task: dict, *, with_text: bool = True) -> dict:
    """A task as the API and the queue page show it (the model suggestion only if the spec allows)."""
    spec = specs.get(task["dataset"])
    kind, reasons = shown_kind_and_reasons(task["kind"], _json(task["reasons"]))  # a honeypot looks like an audit
    out = {
        "task_id": task["task_id"], "dataset": task["dataset"], "batch_id": task["batch_id"],
        "item_id": task["item_id"], "kind": kind, "reasons": reasons,
        "lease_until": task.get("lease_until"),
        # a type whose people correct a pre-annotation (spans) always shows it
        "suggestion": task.get("suggestion") if _shows(spec) else None,
        "suggestion_shown": _shows(spec),
        "classes": [{"name": c.name, "definition": c.definition} for c in spec.classes],
        "guideline": {"version": spec.guideline.version, "text": spec.guideline.text},
        # the task type's answer form: "choices" (one class) or "checkboxes" (a set, '|'-joined, "" = none)
        "widget": spec.task_type.widget, "shortcuts": spec.task_type.shortcuts,
    }
    if with_text:
        # the item read with the lease (`next_task(..., with_item=True)`), else read now
        row = task["item"] if "item" in task else item_row(fx, task["dataset"], task["item_id"])
        out["text"] = row["text"] if row else ""
        out["meta"] = _json(row["meta"]) if row else {}
    return out


def progress(fx, annotator: str) -> dict:
    """The annotator's answers today (UTC), the open tasks left, and their last undoable answer."""
    day = datetime.now(timezone.utc).date().isoformat()
    e = label_events
    with fx.ledger.reader.connect() as c:
        rows = c.execute(sa.select(e.c.kind, sa.func.count()).where(
            e.c.actor == annotator, e.c.kind.in_(["human", "retraction", "skip"]), e.c.created_at >= day)
            .group_by(e.c.kind)).all()
        last = c.execute(sa.select(e.c.event_id, e.c.task_id, e.c.label, e.c.created_at, e.c.dataset).where(
            e.c.actor == annotator, e.c.kind == "human").order_by(e.c.seq.desc()).limit(1)).mappings().first()
        open_n = c.execute(sa.select(sa.func.count()).select_from(tasks_table).where(
            fx.ledger._open_condition())).scalar_one()
        undone = False
        if last:
            undone = c.execute(sa.select(e.c.seq).where(e.c.kind == "retraction",
                                                        e.c.supersedes == last["event_id"])).first() is not None
    counts = dict(rows)
    return {"answered_today": int(counts.get("human", 0)) - int(counts.get("retraction", 0)),
            "skipped_today": int(counts.get("skip", 0)), "open_tasks": int(open_n),
            "last_answer": (dict(last) if last and not undone else None)}


# ----------------------------------------------------------------------------- highlights
_LABELER_CACHE: dict[tuple[str, str], list] = {}
_LABELER_LOCK = threading.Lock()


def _labelers_for(fx, dataset: str, training_prefix: str) -> list:
    from factory.labelers import Labeler

    key = (dataset, training_prefix)
    with _LABELER_LOCK:
        if key in _LABELER_CACHE:
            return _LABELER_CACHE[key]
    found: list = []
    base = fx.paths.models / dataset
    if base.is_dir():
        for folder in sorted(base.iterdir()):
            if folder.name.startswith(training_prefix) and (folder / "labelers.json").exists():
                names = json.loads((folder / "labelers.json").read_text())
                found = [Labeler.load(folder / n) for n in names]
                break
    with _LABELER_LOCK:
        _LABELER_CACHE[key] = found
    return found


HIGHLIGHT_TOP = 5  # at most this many tokens per labeler are highlighted
HIGHLIGHT_MIN_SHARE = 0.5  # ... and only those pushing at least half as hard as the labeler's strongest token
HIGHLIGHT_CANDIDATES = 40  # contributions asked of each labeler before stop words are dropped


def is_content_token(token: str) -> bool:
    """A token worth showing: every word in it has two or more characters and none is an English stop word
    (scikit-learn's list), so 'the', 'of the' or 'in' are never highlighted, whatever their weight.

    scikit-learn's list also holds a few content words ('interest', 'system', 'bill'); the `stop-words` package
    was tried and is worse for this (it lists 'computer', 'research', 'billion', 'tv', 'microsoft')."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = re.findall(r"\w+", str(token).lower())
    return bool(words) and all(len(w) >= 2 and w not in ENGLISH_STOP_WORDS for w in words)


def salient_tokens(weighted: list[tuple[str, float]], top: int = HIGHLIGHT_TOP,
                   min_share: float = HIGHLIGHT_MIN_SHARE) -> list[str]:
    """The tokens that move one labeler's decision: positive contributions towards its predicted class, stop words
    dropped, at least `min_share` of the largest remaining contribution, at most `top`, strongest first."""
    ranked = sorted(((str(t), float(w)) for t, w in weighted if w > 0 and is_content_token(t)), key=lambda tw: -tw[1])
    kept: dict[str, tuple[str, float]] = {}
    for t, w in ranked:  # 'People' and 'people' are one highlight (spans match either case)
        kept.setdefault(t.lower(), (t, w))
    if not kept:
        return []
    floor = min_share * ranked[0][1]
    return [t for t, w in kept.values() if w >= floor][:top]


def highlight_spans(text: str, tokens_by_labeler: dict[str, list[str]], limit: int = 200) -> list[dict]:
    """Character spans of `text` where a model's explanation tokens occur: [{start, end, labelers}], at most `limit`."""
    hits: dict[tuple[int, int], set[str]] = {}
    for labeler, tokens in tokens_by_labeler.items():
        for tok in tokens:
            tok = str(tok).strip()
            if len(tok) < 2:
                continue
            words = tok.split()
            pat = r"\b" + r"\W+".join(re.escape(w) for w in words) + r"\b" if tok.replace(" ", "").isalnum() \
                else re.escape(tok)
            for m in re.finditer(pat, text, flags=re.IGNORECASE):
                if len(hits) >= limit and (m.start(), m.end()) not in hits:
                    break
                hits.setdefault((m.start(), m.end()), set()).add(labeler)
    spans, last_end = [], -1
    for (s, e_), who in sorted(hits.items()):
        if s < last_end:  # overlapping: keep the first
            continue
        spans.append({"start": s, "end": e_, "labelers": sorted(who)})
        last_end = e_
    return spans


def highlights(fx, dataset: str, item_id: str, top: int = HIGHLIGHT_TOP) -> dict:
    """The tokens that moved each labeler's decision on this item (`salient_tokens`), and where they occur."""
    row = item_row(fx, dataset, item_id)
    if row is None:
        return {"available": False, "spans": [], "tokens": {}}
    with fx.ledger.reader.connect() as c:
        actors = [r[0] for r in c.execute(sa.select(label_events.c.actor).where(
            label_events.c.dataset == dataset, label_events.c.item_id == item_id, label_events.c.kind == "model"))]
    prefixes = sorted({a.rsplit("+", 1)[1] for a in actors if "+" in a})
    if not prefixes:
        return {"available": False, "spans": [], "tokens": {}, "why": "no model predictions for this item"}
    labelers = _labelers_for(fx, dataset, prefixes[-1])
    if not labelers:
        return {"available": False, "spans": [], "tokens": {}, "why": "the labelers' files are not on this machine"}
    df = pd.DataFrame({"item_id": [item_id], "text": [row["text"]]})
    tokens = {}
    for lb in labelers:
        try:
            tokens[lb.info.name] = salient_tokens(lb.explain_weights(df, top=HIGHLIGHT_CANDIDATES)[0], top=top)
        except Exception:  # an explanation is a help, never a reason to fail the page
            log.warning("highlights: labeler %s could not explain item %s", lb.info.name, item_id, exc_info=True)
            tokens[lb.info.name] = []
    return {"available": True, "tokens": tokens, "spans": highlight_spans(row["text"], tokens)}


# ----------------------------------------------------------------------------- arbitration
def _model_reliability(fx, dataset: str) -> dict[str, dict]:
    """Each labeler family's agreement with the current human decisions of the dataset (reliability proxy)."""
    dec = fx.ledger.human_decisions(dataset)
    if dec.empty:
        return {}
    truth = dec.groupby("item_id")["label"].agg(lambda s: s.value_counts().index[0])
    models = fx.ledger.events(dataset, kind="model")
    models = models[models["item_id"].isin(truth.index)]
    out = {}
    for actor, grp in models.groupby(models["actor"].str.split("@").str[0]):
        ok = (grp["label"].to_numpy() == truth.reindex(grp["item_id"]).to_numpy())
        out[actor] = {"agreement": round(float(ok.mean()), 3), "n": int(len(grp))}
    return out


def _people_reliability(fx, dataset: str, who: list[str]) -> dict[str, dict]:
    """Each person's agreement with expert arbitrations and with the fused model label, on their answers."""
    ev = fx.ledger.events(dataset, kind=["human", "fusion", "arbitration"])
    fused = ev[ev["kind"] == "fusion"].groupby("item_id")["label"].last()
    arb = ev[ev["kind"] == "arbitration"].groupby("item_id")["label"].last()
    out = {}
    for w in who:
        mine = ev[(ev["kind"] == "human") & (ev["actor"] == w)]
        with_f = mine[mine["item_id"].isin(fused.index)]
        with_a = mine[mine["item_id"].isin(arb.index)]
        out[w] = {"answers": int(len(mine)),
                  "agrees_with_models": (round(float((with_f["label"].to_numpy() == fused.reindex(
                      with_f["item_id"]).to_numpy()).mean()), 3) if len(with_f) else None),
                  "agrees_with_experts": (round(float((with_a["label"].to_numpy() == arb.reindex(
                      with_a["item_id"]).to_numpy()).mean()), 3) if len(with_a) else None),
                  "n_expert_checked": int(len(with_a))}
    return out


def arbitration_detail(fx, specs: SpecCache, dataset: str, item_id: str) -> dict | None:
    """Everything an expert needs to decide: the text, the answers with who and reliability, the models."""
    row = item_row(fx, dataset, item_id)
    if row is None:
        return None
    spec = specs.get(dataset)
    ev = fx.ledger.events(dataset, item_id=item_id)
    gone = set(ev.loc[ev["kind"] == "retraction", "supersedes"].dropna())
    answers = ev[ev["kind"].isin(["human", "correction", "skip"])]
    people = sorted(set(answers["actor"]))
    rel = _people_reliability(fx, dataset, people)
    models = ev[ev["kind"] == "model"]
    mrel = _model_reliability(fx, dataset) if len(models) else {}
    fusion = ev[ev["kind"] == "fusion"].tail(1)
    return {
        "dataset": dataset, "item_id": item_id, "batch_id": row["batch_id"], "text": row["text"],
        "classes": [{"name": c.name, "definition": c.definition} for c in spec.classes],
        "guideline": {"version": spec.guideline.version, "text": spec.guideline.text},
        "answers": [{"event_id": r.event_id, "kind": r.kind, "actor": r.actor, "label": r.label,
                     "task_id": r.task_id, "created_at": r.created_at, "undone": r.event_id in gone,
                     "reason": _json(r.payload).get("reason") if r.kind == "skip" else None,
                     "reliability": rel.get(r.actor)} for r in answers.itertuples()],
        "models": [{"source": r.actor, "label": r.label, "confidence": r.confidence,
                    "probs": _json(r.payload).get("probs"), "reliability": mrel.get(r.actor.split("@")[0])}
                   for r in models.itertuples()],
        "fusion": ({"source": fusion.iloc[0]["actor"], "label": fusion.iloc[0]["label"],
                    "confidence": fusion.iloc[0]["confidence"]} if len(fusion) else None),
        "gaps": [{"actor": r.actor, "note": _json(r.payload).get("note"), "created_at": r.created_at}
                 for r in ev[ev["kind"] == "guideline_gap"].itertuples()],
    }


# ----------------------------------------------------------------------------- trace, batches, releases
def trace(fx, dataset: str, item_id: str) -> dict | None:
    row = item_row(fx, dataset, item_id)
    if row is None:
        return None
    ev = fx.ledger.events(dataset, item_id=item_id)
    tasks = fx.ledger.table("tasks", dataset=dataset, item_id=item_id)
    cols = ["seq", "event_id", "created_at", "kind", "actor", "label", "confidence", "task_id", "supersedes",
            "spec_version", "guideline_version", "run_id", "hash", "prev_hash"]
    events = [{k: (None if pd.isna(v) else v) if not isinstance(v, (list, dict)) else v
               for k, v in r.items()} | {"payload": _json(r["payload"])}
              for r in ev[cols + ["payload"]].to_dict("records")]
    return {"dataset": dataset, "item_id": item_id, "batch_id": row["batch_id"], "text": row["text"],
            "source": {"file": row["source_file"], "row": int(row["source_row"])},
            "tasks": [{"task_id": t["task_id"], "kind": t["kind"], "reasons": _json(t["reasons"]),
                       "created_at": t["created_at"]} for t in tasks.to_dict("records")],
            "events": events}


def batches_summary(fx) -> list[dict]:
    b = fx.ledger.batches()
    if b.empty:
        return []
    t = fx.ledger.tasks()
    counts = (t.groupby(["batch_id", "status"]).size().unstack(fill_value=0) if not t.empty else pd.DataFrame())
    out = []
    for r in b.itertuples():
        c = counts.loc[r.batch_id] if r.batch_id in counts.index else {}
        n_open, n_done = int(c.get("open", 0)), int(c.get("answered", 0))
        finished = fx.paths.table("final_labels", r.dataset, r.batch_id).exists()
        out.append({"batch_id": r.batch_id, "dataset": r.dataset, "items": int(r.n_items),
                    "duplicates": int(r.n_duplicates), "quarantined": int(r.n_quarantined),
                    "tasks": n_open + n_done, "open_tasks": n_open, "answered_tasks": n_done,
                    "final_labels": finished, "created_at": r.created_at,
                    "state": "final labels" if finished else ("waiting for people" if n_open else
                                                              ("reviewed" if n_done else "in progress"))})
    return out


EXPERT_KINDS = ("arbitrate",)  # tasks only experts are offered, whatever their required tier says


def task_tier(kind: str, required_tier) -> str:
    """The least tier offered a task: expert for arbitration, its required tier, else L1 (anyone)."""
    if kind in EXPERT_KINDS:
        return "expert"
    return str(required_tier) if isinstance(required_tier, str) and required_tier else "L1"


def tier_queues(open_tasks: pd.DataFrame) -> list[dict]:
    """Open tasks per dataset and tier, each with its count per kind; the rows add up to the open tasks."""
    if open_tasks.empty:
        return []
    req = open_tasks["required_tier"] if "required_tier" in open_tasks else pd.Series(None, index=open_tasks.index)
    t = open_tasks.assign(tier=[task_tier(k, r) for k, r in zip(open_tasks["kind"], req)])
    out = []
    for (ds, tier), g in t.groupby(["dataset", "tier"], sort=True):
        out.append({"dataset": ds, "tier": tier, "open": int(len(g)),
                    "kinds": {str(k): int(n) for k, n in g["kind"].value_counts().sort_index().items()}})
    return out


def operator_summary(fx) -> dict:
    """Queues per tier (with their task kinds), leases held, throughput of human answers, disputed items."""
    t = fx.ledger.tasks()
    open_t = t[t["status"] == "open"] if not t.empty else t
    now = datetime.now(timezone.utc)
    since = (now - timedelta(hours=24)).isoformat()
    e = label_events
    with fx.ledger.reader.connect() as c:
        recent = c.execute(sa.select(e.c.created_at, e.c.actor).where(
            e.c.kind == "human", e.c.created_at >= since)).all()
        leases = c.execute(sa.select(sa.func.count()).select_from(task_assignments).where(
            task_assignments.c.lease_until >= now.isoformat())).scalar_one()
    times = pd.to_datetime(pd.Series([r[0] for r in recent]), utc=True, format="ISO8601") if recent else pd.Series([])
    last_hour = int((times >= now - timedelta(hours=1)).sum()) if len(times) else 0
    datasets = sorted(set(t["dataset"])) if not t.empty else []
    disputes = {d: len(disputed_items(fx, d)) for d in datasets}
    return {
        "queues": tier_queues(open_t),
        "open_tasks": int(len(open_t)), "leased_now": int(leases),
        "answers_last_hour": last_hour, "answers_last_24h": len(recent),
        "annotators_last_24h": len({r[1] for r in recent}),
        "disputed_items": disputes,
    }


def releases_list(fx) -> list[dict]:
    rel = fx.ledger.releases()
    out = []
    for r in rel.to_dict("records"):
        folder = Path(r["path"])
        files = (sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                 if folder.is_dir() else [])
        out.append({"dataset": r["dataset"], "version": r["version"], "items": int(r["n_items"]),
                    "created_at": r["created_at"], "manifest_sha256": r["manifest_sha256"], "files": files})
    return sorted(out, key=lambda d: (d["dataset"], d["created_at"]))


def release_file(fx, dataset: str, version: str, name: str) -> Path | None:
    """The file `name` (e.g. `labels.parquet`, `data/train.parquet`) of a release, or None: only a plain file
    inside the release folder, reached through listed names one folder at a time."""
    rel = fx.ledger.releases(dataset)
    rel = rel[rel["version"] == version] if not rel.empty else rel
    if rel.empty:
        return None
    folder = Path(rel.iloc[0]["path"]).resolve()
    parts = name.split("/")
    if not folder.is_dir() or len(parts) > 4 or any(
            p in ("", ".", "..") or "\\" in p or "\x00" in p or p.startswith(".") for p in parts):
        return None
    here = folder
    for part in parts:  # listed names only: no traversal, no globbing
        if not here.is_dir() or part not in {p.name for p in here.iterdir()}:
            return None
        here = here / part
    path = here.resolve()
    if not path.is_relative_to(folder) or not path.is_file():  # a symlink pointing out of the folder is refused
        return None
    return path

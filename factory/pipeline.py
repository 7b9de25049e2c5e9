"""The steps of a batch, as plain functions over the ledger and Parquet tables (no Dagster here).

design -> collection -> seed tasks -> labelers -> model predictions -> fusion -> routing/review tasks
-> final labels.  Every step is idempotent: rerunning it after a crash adds nothing twice, because
events carry dedup keys and tables are written whole to a temporary file and renamed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from factory.config import Paths
from factory.engine import aggregate
from factory.engine.routing import route_batch
from factory.engine.seeding import select_seed
from factory.errors import FactoryError, NotReadyError
from factory.ledger import Ledger
from factory.spec import DatasetSpec, load_spec

TASK_TYPE = {"classification": "classification", "pairs": "pair"}


@dataclass
class Factory:
    """A factory root: its folders, its ledger and its dataset specs."""

    paths: Paths = field(default_factory=Paths.from_env)

    @classmethod
    def at(cls, root: str | Path | None = None) -> "Factory":
        return cls(Paths.from_env(root))

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.paths.database_url)

    def spec(self, dataset: str) -> DatasetSpec:
        return load_spec(self.paths.spec_path(dataset))

    def datasets(self) -> list[str]:
        return sorted(p.stem for p in self.paths.datasets.glob("*.yaml"))


# ----------------------------------------------------------------------------- tables
def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write a Parquet table atomically (temp file + rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_table(fx: Factory, name: str, dataset: str, batch_id: str) -> pd.DataFrame:
    path = fx.paths.table(name, dataset, batch_id)
    if not path.exists():
        raise NotReadyError(f"table '{name}' of batch {batch_id} does not exist yet: "
                            f"materialise the '{name}' asset for this batch first")
    return pd.read_parquet(path)


def prob_cols(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def _meta(spec: DatasetSpec, run_id: str | None) -> dict:
    return {"spec_version": spec.version, "guideline_version": spec.guideline.version, "run_id": run_id}


def task_id_for(dataset: str, batch_id: str, item_id: str, kind: str) -> str:
    return "t_" + hashlib.sha256(f"{dataset}|{batch_id}|{item_id}|{kind}".encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- design
def record_spec(fx: Factory, dataset: str) -> DatasetSpec:
    """Validate the dataset's spec file and record its version in the ledger."""
    spec = fx.spec(dataset)
    fx.ledger.record_spec(dataset, spec.version, spec.guideline.version,
                          spec.model_dump(mode="json", by_alias=True))
    return spec


# ----------------------------------------------------------------------------- collection
def raw_items(fx: Factory, dataset: str, batch_id: str) -> pd.DataFrame:
    """The batch's accepted items as a table (item_id, batch_id, text, metadata, source)."""
    df = fx.ledger.items(dataset, batch_id=batch_id)
    if df.empty:
        raise FactoryError(f"batch {batch_id} of '{dataset}' has no items in the ledger; ingest it with "
                           f"`factory ingest FILE --dataset {dataset}`")
    df = df[["item_id", "batch_id", "text", "meta", "source_file", "source_row"]]
    write_table(df, fx.paths.table("raw_items", dataset, batch_id))
    return df


# ----------------------------------------------------------------------------- seed
def _features(texts: list[str]):
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    vec = HashingVectorizer(n_features=2 ** 18, alternate_sign=False, ngram_range=(1, 1), stop_words="english")
    return TfidfTransformer().fit_transform(vec.transform(texts))


def human_labels(fx: Factory, dataset: str) -> pd.DataFrame:
    """Every item's current human decision (majority of the latest answers per task), for training."""
    dec = fx.ledger.human_decisions(dataset)
    if dec.empty:
        return pd.DataFrame(columns=["item_id", "label"])
    agg = aggregate(dec.rename(columns={"actor": "worker_id"})[["item_id", "worker_id", "label"]], method="mv")
    return agg[["label"]].reset_index()


def seed_tasks(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Ask people to label a diverse seed sample while the dataset has fewer human labels than spec.seed.size."""
    spec = fx.spec(dataset)
    have = len(human_labels(fx, dataset))
    open_seed = fx.ledger.tasks(dataset, status="open")
    open_seed = int((open_seed["kind"] == "seed").sum()) if not open_seed.empty else 0
    need = max(0, spec.seed.size - have - open_seed)
    items = read_table(fx, "raw_items", dataset, batch_id)
    existing = fx.ledger.tasks(dataset, batch_id=batch_id)
    existing = existing[existing["kind"] == "seed"] if not existing.empty else existing
    if need == 0 or len(items) == 0:
        return existing[["task_id", "item_id", "kind"]] if not existing.empty else pd.DataFrame(
            columns=["task_id", "item_id", "kind"])
    picks = select_seed(_features(items["text"].tolist()), min(need, len(items)), seed=seed)
    rows = [dict(task_id=task_id_for(dataset, batch_id, items.item_id.iloc[i], "seed"), dataset=dataset,
                 batch_id=batch_id, item_id=items.item_id.iloc[i], kind="seed",
                 reasons=["seed: diverse sample to train the labelers"], suggestion=None, run_id=run_id)
            for i in sorted(int(p) for p in picks)]
    fx.ledger.create_tasks(rows)
    out = fx.ledger.tasks(dataset, batch_id=batch_id)
    return out[out["kind"] == "seed"][["task_id", "item_id", "kind"]]


# ----------------------------------------------------------------------------- labelers
@dataclass
class TrainedLabelers:
    """The labeler set a batch uses: one training hash, one version per labeler."""

    training_hash: str
    labelers: list
    n_train: int
    reused: bool

    @property
    def versions(self) -> list[dict]:
        return [dict(name=lb.info.name, family=lb.info.family, version=lb.info.version,
                     training_hash=lb.info.training_hash, n_train=lb.info.n_train) for lb in self.labelers]


def train_labelers(fx: Factory, dataset: str, batch_id: str | None = None, seed: int = 0) -> TrainedLabelers:
    """Train (or reuse, if the same human labels were seen before) the differentiated labelers."""
    from factory.labelers import Labeler, make_labelers, training_hash

    spec = fx.spec(dataset)
    if batch_id is not None:
        open_tasks = fx.ledger.tasks(dataset, status="open")
        open_seed = open_tasks[open_tasks["kind"] == "seed"] if not open_tasks.empty else open_tasks
        if len(open_seed):
            raise NotReadyError(f"waiting for people: {len(open_seed)} seed task(s) of '{dataset}' are open; "
                                f"answer them (`factory tasks list --dataset {dataset}`) and rerun")
    labels = human_labels(fx, dataset)
    if labels["label"].nunique() < 2:
        raise NotReadyError(f"'{dataset}' has {len(labels)} human label(s) covering "
                            f"{labels['label'].nunique()} class(es); the labelers need at least two classes")
    items = fx.ledger.items(dataset, item_ids=labels["item_id"].tolist())
    train = labels.merge(items[["item_id", "text"]], on="item_id").sort_values("item_id").reset_index(drop=True)
    th = training_hash(train[["item_id", "text"]], train["label"].tolist())
    folder = fx.paths.models / dataset / th
    task_type = TASK_TYPE[spec.task.type]
    if (folder / "labelers.json").exists():
        names = json.loads((folder / "labelers.json").read_text())
        return TrainedLabelers(th, [Labeler.load(folder / n) for n in names], len(train), reused=True)
    labelers = [lb.fit(train[["item_id", "text"]], train["label"].tolist(), spec.class_names)
                for lb in make_labelers(task_type, seed=seed)]
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    for lb in labelers:
        lb.save(tmp / lb.info.name)
    (tmp / "labelers.json").write_text(json.dumps([lb.info.name for lb in labelers]))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process trained the same set meanwhile: use theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return TrainedLabelers(th, labelers, len(train), reused=False)


# ----------------------------------------------------------------------------- predictions and fusion
def model_predictions(fx: Factory, dataset: str, batch_id: str, trained: TrainedLabelers,
                      run_id: str | None = None) -> pd.DataFrame:
    """Each labeler's full probability vector for every item of the batch (long format) + model events."""
    spec = fx.spec(dataset)
    classes = spec.class_names
    items = read_table(fx, "raw_items", dataset, batch_id)
    frames = []
    for lb in trained.labelers:
        p = lb.predict_proba(items[["item_id", "text"]])
        f = pd.DataFrame(p, columns=prob_cols(classes))
        f.insert(0, "item_id", items["item_id"].to_numpy())
        f.insert(1, "labeler", lb.info.name)
        f.insert(2, "labeler_version", f"{lb.info.name}@{lb.info.version}+{trained.training_hash[:12]}")
        f.insert(3, "label", np.asarray(classes, dtype=object)[p.argmax(axis=1)])
        f.insert(4, "confidence", p.max(axis=1))
        frames.append(f)
    preds = pd.concat(frames, ignore_index=True)
    write_table(preds, fx.paths.table("model_predictions", dataset, batch_id))
    meta = _meta(spec, run_id)
    pv = preds[prob_cols(classes)].to_numpy().round(6)
    events = [dict(batch_id=batch_id, item_id=r.item_id, kind="model", actor=r.labeler_version, label=r.label,
                   confidence=r.confidence, dedup_key=f"model:{batch_id}:{r.item_id}:{r.labeler_version}",
                   payload={"probs": dict(zip(classes, pv[i].tolist()))}, **meta)
              for i, r in enumerate(preds.itertuples(index=False))]
    fx.ledger.append_events(dataset, events)
    return preds


def fuse(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None) -> pd.DataFrame:
    """Fuse the labelers' probability vectors into one label and confidence per item (the engine's auto)."""
    spec = fx.spec(dataset)
    classes = spec.class_names
    preds = read_table(fx, "model_predictions", dataset, batch_id)
    answers = preds.rename(columns={"labeler": "worker_id"})[["item_id", "worker_id", "label", *prob_cols(classes)]]
    fused = aggregate(answers, method="auto", classes=classes)
    wide = preds.pivot(index="item_id", columns="labeler", values="label")
    fused["agreement"] = wide.eq(fused["label"], axis=0).mean(axis=1).reindex(fused.index)
    fused["disagreement"] = wide.ne(wide.iloc[:, 0], axis=0).any(axis=1).reindex(fused.index)
    out = fused.reset_index()[["item_id", "label", "confidence", "agreement", "disagreement", *prob_cols(classes)]]
    write_table(out, fx.paths.table("fused_labels", dataset, batch_id))
    meta = _meta(spec, run_id)
    events = [dict(batch_id=batch_id, item_id=r.item_id, kind="fusion", actor="fusion:auto", label=r.label,
                   confidence=r.confidence, dedup_key=f"fusion:{batch_id}:{r.item_id}:{r.label}:{float(r.confidence):.6f}",
                   payload={"agreement": round(float(r.agreement), 4)}, **meta)
              for r in out.itertuples(index=False)]
    fx.ledger.append_events(dataset, events)
    return out


# ----------------------------------------------------------------------------- routing
def review_tasks(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Route each fused item to people or auto-accept it, store the decision with its reasons, open tasks."""
    spec = fx.spec(dataset)
    fused = read_table(fx, "fused_labels", dataset, batch_id).set_index("item_id")
    preds = read_table(fx, "model_predictions", dataset, batch_id)
    model_labels = preds.pivot(index="item_id", columns="labeler", values="label").reindex(fused.index)
    seeded = fx.ledger.tasks(dataset, batch_id=batch_id)
    seeded_items = set(seeded.loc[seeded["kind"] == "seed", "item_id"]) if not seeded.empty else set()
    pool = fused.loc[~fused.index.isin(seeded_items)]
    seed_dist = human_labels(fx, dataset)["label"].value_counts().to_dict()
    budget = spec.review.items_allowed(len(pool))
    routes = route_batch(pool, model_labels.loc[pool.index], confidence_threshold=spec.quality.confidence_threshold,
                         prior=spec.prior, seed_distribution=seed_dist or None, audit_rate=spec.quality.audit_rate,
                         bias_ratio=spec.quality.bias_ratio, review_budget=budget, seed=seed)
    routes = routes.reset_index()
    if seeded_items:
        s = fused.loc[fused.index.isin(seeded_items)].reset_index()
        routes = pd.concat([routes, pd.DataFrame({
            "item_id": s["item_id"], "route": "seed", "label": s["label"], "confidence": s["confidence"],
            "priority": 0.0, "reasons": [["seed: already sent to people to train the labelers"]] * len(s)})],
            ignore_index=True)
    routes["reasons"] = routes["reasons"].map(list)
    tbl = routes.assign(reasons=routes["reasons"].map(json.dumps))
    write_table(tbl, fx.paths.table("routing", dataset, batch_id))
    to_people = routes[routes["route"].isin(["review", "audit"])]
    fx.ledger.create_tasks([dict(task_id=task_id_for(dataset, batch_id, r.item_id, r.route), dataset=dataset,
                                 batch_id=batch_id, item_id=r.item_id, kind=r.route, reasons=r.reasons,
                                 suggestion=str(r.label), run_id=run_id)
                            for r in to_people.itertuples(index=False)])
    return routes


# ----------------------------------------------------------------------------- final labels
FINAL_SOURCES = ("auto", "calibrated", "annotated")


def final_labels(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None) -> pd.DataFrame:
    """Every item's final label: people's decision where they answered, else the fused label."""
    spec = fx.spec(dataset)
    tasks = fx.ledger.tasks(dataset, batch_id=batch_id)
    open_tasks = tasks[tasks["status"] == "open"]
    if len(open_tasks):
        raise NotReadyError(f"waiting for people: {len(open_tasks)} of {len(tasks)} task(s) of batch {batch_id} "
                            f"are open (`factory tasks list --batch {batch_id}`)")
    routes = read_table(fx, "routing", dataset, batch_id).set_index("item_id")
    fused = read_table(fx, "fused_labels", dataset, batch_id).set_index("item_id")
    events = fx.ledger.events(dataset, batch_id=batch_id, kind=["model", "fusion"])
    machine_events = events.groupby("item_id")["event_id"].agg(list)
    decisions = fx.ledger.human_decisions(dataset, batch_id=batch_id)
    out = pd.DataFrame(index=fused.index)
    out["batch_id"] = batch_id
    out["label"] = fused["label"].astype(str)
    out["confidence"] = fused["confidence"].astype(float)
    out["source"] = "auto"
    out["route"] = routes["route"].reindex(out.index)
    out["fused_label"] = fused["label"].astype(str)
    out["fused_confidence"] = fused["confidence"].astype(float)
    human_events = pd.Series([[] for _ in range(len(out))], index=out.index, dtype=object)
    out["annotators"] = "[]"
    if not decisions.empty:
        d = decisions[decisions["item_id"].isin(out.index)].assign(
            task_kind=lambda x: x["task_id"].map(tasks.set_index("task_id")["kind"]))
        # majority of the people's current answers per item; ties go to the alphabetically first label
        votes = d.groupby(["item_id", "label"]).size().rename("n").reset_index()
        votes["total"] = votes.groupby("item_id")["n"].transform("sum")
        top = votes.sort_values(["item_id", "n", "label"], ascending=[True, False, True]).drop_duplicates("item_id")
        top = top.set_index("item_id")
        per_item = d.groupby("item_id").agg(all_seed=("task_kind", lambda k: bool((k == "seed").all())),
                                            annotators=("actor", lambda a: json.dumps(sorted(set(a)))),
                                            events=("event_id", list))
        idx = top.index
        out.loc[idx, "label"] = top["label"].astype(str)
        out.loc[idx, "confidence"] = (top["n"] / top["total"]).astype(float)
        out.loc[idx, "source"] = per_item.loc[idx, "all_seed"].map({True: "annotated", False: "calibrated"})
        out.loc[idx, "annotators"] = per_item.loc[idx, "annotators"]
        human_events.loc[idx] = per_item.loc[idx, "events"]
    machine = machine_events.reindex(out.index)
    event_lists = [(m if isinstance(m, list) else []) + h for m, h in zip(machine, human_events)]
    out["event_ids"] = [json.dumps(e) for e in event_lists]
    out["n_events"] = [len(e) for e in event_lists]
    out["spec_version"] = spec.version
    out["guideline_version"] = spec.guideline.version
    out = out.reset_index()
    write_table(out, fx.paths.table("final_labels", dataset, batch_id))
    meta = _meta(spec, run_id)
    ev = []
    for r in out.itertuples(index=False):
        digest = hashlib.sha256(f"{r.label}|{r.source}|{r.event_ids}".encode()).hexdigest()[:16]
        ev.append(dict(batch_id=batch_id, item_id=r.item_id, kind="final", actor=f"final:{r.source}", label=r.label,
                       confidence=r.confidence, dedup_key=f"final:{batch_id}:{r.item_id}:{digest}",
                       payload={"source": r.source, "events": json.loads(r.event_ids)}, **meta))
    fx.ledger.append_events(dataset, ev)
    return out


def batch_summary(fx: Factory, dataset: str, batch_id: str) -> dict:
    """Counts per route and source, and the audit-sample agreement, for reports and asset metadata."""
    final = read_table(fx, "final_labels", dataset, batch_id)
    audit = final[final["route"] == "audit"]
    agree = float((audit["label"] == audit["fused_label"]).mean()) if len(audit) else None
    return {
        "items": int(len(final)),
        "by_source": final["source"].value_counts().to_dict(),
        "by_route": final["route"].value_counts().to_dict(),
        "audit_sample": int(len(audit)),
        "audit_agreement": agree,
        "label_distribution": final["label"].value_counts().to_dict(),
    }

"""The steps of a batch, as plain functions over the ledger and Parquet tables (no Dagster here).

design -> collection -> initial tasks (seed, or people first) -> labelers -> model predictions ->
fusion -> routing/review tasks -> escalation (second opinions, arbitration) -> final labels.  Every step is idempotent: rerunning it after a crash adds nothing twice, because
events carry dedup keys and tables are written whole to a temporary file and renamed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from factory.engine import aggregate
from factory.engine.seeding import select_seed
from factory.errors import FactoryError, NotReadyError
from factory import loop as people_loop
from factory.progress import NULL, Progress, counted
from factory.quality import audit_target
from factory.routing_policy import (auto_accept_choice, escalation_tasks, human_model_routes,
                                    prelabel_human_routes, prelabel_model_routes, prelabel_span_routes, prob_cols,
                                    required_tier, set_escalations, span_reasons)
from factory.root import Factory  # noqa: F401  (the root object lived here; callers still import it from pipeline)
from factory.spec import DatasetSpec
from factory.task_rows import max_tier, task_id_for, task_row  # noqa: F401  (task_id_for: callers import it from here)

def in_schema(spec: DatasetSpec, labels: pd.Series) -> pd.Series:
    """True where a stored label is a valid answer of the spec's task type and classes (sets: each class)."""
    schema = spec.label_schema
    seen: dict[str, bool] = {}  # a dataset's labels repeat: each distinct stored text is parsed once

    def ok(value) -> bool:
        if isinstance(value, str) and value in seen:
            return seen[value]
        try:
            good = schema.parse(value) == str(value)
        except Exception:  # noqa: BLE001 - any refusal means outside the schema
            good = False
        if isinstance(value, str):
            seen[value] = good
        return good

    return labels.map(ok).astype(bool)


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


def labeler_input(spec: DatasetSpec, items: pd.DataFrame) -> pd.DataFrame:
    """What the labelers read of each item: ``item_id, text``, plus what the task type records (spans: tokens)."""
    return spec.task_type.labeler_input(items)


def item_table(spec: DatasetSpec, items: pd.DataFrame) -> pd.DataFrame | None:
    """The items' recorded context the type's fusion needs (spans: ``item_id, tokens, n_tokens``), else None."""
    hook = spec.task_type.item_table
    return None if hook is None else hook(items)


def _meta(spec: DatasetSpec, run_id: str | None) -> dict:
    return {"spec_version": spec.version, "guideline_version": spec.guideline.version, "run_id": run_id}


# ----------------------------------------------------------------------------- design
def record_spec(fx: Factory, dataset: str) -> DatasetSpec:
    """Validate the dataset's spec file and record its version in the ledger."""
    from factory.guidelines import requeue_on_bump

    spec = fx.spec(dataset)
    fx.ledger.record_spec(dataset, spec.version, spec.guideline.version,
                          spec.model_dump(mode="json", by_alias=True))
    requeue_on_bump(fx, dataset)  # a guideline bump re-queues the items its open questions affect
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


# ----------------------------------------------------------------------------- modes and risk
TRAINING_KINDS = ("seed", "annotate", "review", "audit", "second", "verify", "arbitrate", "requeue")


def item_modes(spec: DatasetSpec, items: pd.DataFrame) -> pd.Series:
    """The collaboration mode of each item: the spec's mode, or a slice rule's on its metadata."""
    modes = pd.Series(spec.mode, index=items["item_id"].to_numpy(), dtype=object)
    if spec.slices:
        meta = items["meta"].map(json.loads).to_numpy()
        for rule in reversed(spec.slices):  # the first matching rule wins
            hit = np.array([m.get(rule.field) in rule.equals for m in meta], dtype=bool)
            modes[hit] = rule.mode
    return modes


# ----------------------------------------------------------------------------- people first
def _features(texts: list[str]):
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    vec = HashingVectorizer(n_features=2 ** 18, alternate_sign=False, ngram_range=(1, 1), stop_words="english")
    return TfidfTransformer().fit_transform(vec.transform(texts))


def human_labels(fx: Factory, dataset: str) -> pd.DataFrame:
    """Every item's current human decision, for training: arbitrations, answers (majority), gold items."""
    dec = fx.ledger.human_decisions(dataset)
    frames = []
    if not dec.empty:
        kinds = dec["payload"].map(lambda p: json.loads(p).get("task_kind"))
        dec = dec[kinds.isin(TRAINING_KINDS)]
        if not dec.empty:
            agg = aggregate(dec.rename(columns={"actor": "worker_id"})[["item_id", "worker_id", "label"]], method="mv")
            frames.append(agg[["label"]].reset_index())
    from factory.workforce import Workforce

    gold = Workforce(fx.ledger).gold(dataset)
    if not gold.empty:
        frames.append(gold[["item_id", "label"]])
    if not frames:
        return pd.DataFrame(columns=["item_id", "label"])
    # gold comes last and wins: a known answer beats a vote
    return pd.concat(frames, ignore_index=True).drop_duplicates("item_id", keep="last").reset_index(drop=True)


@counted("initial tasks", "tasks")
def initial_tasks(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Tasks people answer before the models run.

    Items in mode human-model: every item, `human_model.overlap` times (blind: one person per copy).
    Items in the prelabel modes: while the dataset has fewer human labels than spec.seed.size, a
    diverse seed sample (k-means++ on TF-IDF) to train the labelers.
    """
    spec = fx.spec(dataset)
    items = read_table(fx, "raw_items", dataset, batch_id)
    modes = item_modes(spec, items)
    rows = []
    tier = required_tier(spec, None, [])
    hm = items[modes.to_numpy() == "human-model"]
    for r in range(1, spec.human_model.overlap + 1):
        rows += [task_row(dataset, batch_id, i, "annotate", [f"human-model: first labels, copy {r} of "
                                                             f"{spec.human_model.overlap}"], tier=tier, run_id=run_id,
                          round_=r) for i in hm["item_id"]]
    pre = items[modes.to_numpy() != "human-model"]
    if len(pre):
        have = len(human_labels(fx, dataset))
        open_t = fx.ledger.tasks(dataset, status="open")
        open_seed = int(open_t["kind"].isin(["seed", "annotate"]).sum()) if not open_t.empty else 0
        need = max(0, spec.seed.size - have - open_seed - len(hm))
        if need:
            picks = select_seed(_features(pre["text"].tolist()), min(need, len(pre)), seed=seed)
            rows += [task_row(dataset, batch_id, pre["item_id"].iloc[int(i)], "seed",
                              ["seed: diverse sample to train the labelers"], tier=tier, run_id=run_id)
                     for i in sorted(picks)]
    fx.ledger.create_tasks(rows)
    out = fx.ledger.tasks(dataset, batch_id=batch_id)
    return out[out["kind"].isin(["seed", "annotate"])][["task_id", "item_id", "kind", "status"]]


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


GIVE_UP_AFTER_SKIPS = 2  # distinct people who skipped a first-pass task before the batch stops waiting for it


def given_up_tasks(fx: Factory, dataset: str) -> set[str]:
    """Open seed/annotate tasks skipped by GIVE_UP_AFTER_SKIPS different people: nobody will label them.

    The batch stops waiting for them; in mode human-model their item, if nobody answered it at all,
    is routed up a tier as `missing_label` (an omission the verification step must see).
    """
    skips = fx.ledger.events(dataset, kind="skip")
    if skips.empty:
        return set()
    open_tasks = fx.ledger.tasks(dataset, status="open")
    first = set(open_tasks.loc[open_tasks["kind"].isin(["seed", "annotate"]), "task_id"])
    n = skips[skips["task_id"].isin(first)].groupby("task_id")["actor"].nunique()
    return set(n.index[n >= GIVE_UP_AFTER_SKIPS])


def train_labelers(fx: Factory, dataset: str, batch_id: str | None = None, seed: int = 0) -> TrainedLabelers:
    """Train (or reuse, if the same human labels were seen before) the differentiated labelers."""
    from factory.labelers import Labeler, training_hash

    spec = fx.spec(dataset)
    if batch_id is not None:
        open_tasks = fx.ledger.tasks(dataset, status="open")
        first = open_tasks[((open_tasks["kind"] == "seed")
                            | ((open_tasks["kind"] == "annotate") & (open_tasks["batch_id"] == batch_id)))
                           & ~open_tasks["task_id"].isin(given_up_tasks(fx, dataset))]
        if len(first):
            raise NotReadyError(f"waiting for people: {len(first)} seed/annotation task(s) of '{dataset}' are open; "
                                f"answer them (`factory tasks list --dataset {dataset}`) and rerun")
    labels = human_labels(fx, dataset)
    if labels["label"].nunique() < 2:
        raise NotReadyError(f"'{dataset}' has {len(labels)} human label(s) covering "
                            f"{labels['label'].nunique()} class(es); the labelers need at least two classes")
    items = fx.ledger.items(dataset, item_ids=labels["item_id"].tolist())
    train = labels.merge(items[["item_id", "text", "meta"]], on="item_id").sort_values("item_id").reset_index(drop=True)
    th = training_hash(train[["item_id", "text"]], train["label"].tolist())
    tt = spec.task_type
    # keyed by the code's labeler versions too: changed labeler code never reuses models trained by old code
    suite = hashlib.sha256(str(tt.labeler_suite()).encode()).hexdigest()[:8]
    folder = fx.paths.models / dataset / f"{th}-{suite}"
    if (folder / "labelers.json").exists():
        names = json.loads((folder / "labelers.json").read_text())
        return TrainedLabelers(th, _with_embedding_cache(fx, [Labeler.load(folder / n) for n in names]), len(train),
                               reused=True)
    labelers = [lb.fit(labeler_input(spec, train), train["label"].tolist(), spec.class_names)
                for lb in fx.progress.track(_with_embedding_cache(fx, tt.make_labelers(seed=seed)),
                                            "train labelers", weight=len(train), label=lambda lb: lb.name)]
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


def _with_embedding_cache(fx: Factory, labelers: list) -> list:
    """Point the embedding labelers at <root>/data/embeddings, so texts are embedded once per factory."""
    for lb in labelers:
        if hasattr(type(lb), "cache_dir"):
            lb.cache_dir = fx.paths.data / "embeddings"
    return labelers


# ----------------------------------------------------------------------------- predictions and fusion
def model_predictions(fx: Factory, dataset: str, batch_id: str, trained: TrainedLabelers,
                      run_id: str | None = None) -> pd.DataFrame:
    """Each labeler's full probability vector for every item of the batch (long format) + model events."""
    spec = fx.spec(dataset)
    classes = spec.class_names
    items = read_table(fx, "raw_items", dataset, batch_id)
    frames = []
    for lb in fx.progress.track(trained.labelers, "predict", weight=len(items), label=lambda lb: lb.info.name):
        if spec.task_type.predict_items is not None:  # spans: tagged per token, decided by the labeler
            label, conf, p = spec.task_type.predict_items(lb, labeler_input(spec, items), classes)
        else:
            p = lb.predict_proba(items[["item_id", "text"]])
            label, conf = spec.task_type.decide(p, classes)  # argmax, or the set of classes at >= 0.5
        f = pd.DataFrame(p, columns=prob_cols(classes))
        f.insert(0, "item_id", items["item_id"].to_numpy())
        f.insert(1, "labeler", lb.info.name)
        f.insert(2, "labeler_version", f"{lb.info.name}@{lb.info.version}+{trained.training_hash[:12]}")
        f.insert(3, "label", label)
        f.insert(4, "confidence", conf)
        frames.append(f)
    preds = pd.concat(frames, ignore_index=True)
    write_table(preds, fx.paths.table("model_predictions", dataset, batch_id))
    meta = _meta(spec, run_id)
    pv = preds[prob_cols(classes)].to_numpy().round(6)
    events = [dict(batch_id=batch_id, item_id=r.item_id, kind="model", actor=r.labeler_version, label=r.label,
                   confidence=r.confidence, dedup_key=f"model:{batch_id}:{r.item_id}:{r.labeler_version}",
                   payload={"probs": dict(zip(classes, pv[i].tolist()))}, **meta)
              for i, r in enumerate(preds.itertuples(index=False))]
    with fx.progress.work("record model events", len(events), "events"):
        fx.ledger.append_events(dataset, events)
    return preds


# How the labelers' answers are fused: the type's ``pool_models`` (one class: the linear pool, the mean of the
# probability vectors, per item; why not Dawid-Skene: factory.tasks.classification.Classification.pool_models).
# The name is recorded in fusion events and keys the held-out cache.
MODEL_FUSION = "weighted"


@counted("fuse")
def fuse(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None) -> pd.DataFrame:
    """Fuse the labelers' probability vectors into one label and confidence per item (linear pool)."""
    spec = fx.spec(dataset)
    classes = spec.class_names
    preds = read_table(fx, "model_predictions", dataset, batch_id)
    answers = preds.rename(columns={"labeler": "worker_id"})[["item_id", "worker_id", "label", *prob_cols(classes)]]
    # the type's fusion of its labelers (one class: the linear pool; sets: per-class marginals averaged; spans: each
    # labeler an annotator of aggregate_spans, with span routing's probability, reason and priority per sentence)
    # only a type whose fusion reads the items' context (an ``item_table`` hook: spans' tokens) reads raw_items
    items = read_table(fx, "raw_items", dataset, batch_id) if spec.task_type.item_table is not None else None
    fused = _pool_models(spec, answers, items)
    raw = fused["confidence"].to_numpy(dtype=float)
    fused, calibration = calibrate_fused(fx, dataset, fused)
    fused["raw_confidence"] = raw
    fx.ledger.record_check(dataset, batch_id, "confidence_calibration", spec.quality.standard, True, calibration, run_id)
    wide = preds.pivot(index="item_id", columns="labeler", values="label")
    fused["agreement"] = wide.eq(fused["label"], axis=0).mean(axis=1).reindex(fused.index)
    fused["disagreement"] = wide.ne(wide.iloc[:, 0], axis=0).any(axis=1).reindex(fused.index)
    out = fused.reset_index()[["item_id", "label", "confidence", "raw_confidence", "agreement", "disagreement",
                               *prob_cols(classes), *[c for c in ("route_reason", "priority") if c in fused]]]
    write_table(out, fx.paths.table("fused_labels", dataset, batch_id))
    meta = _meta(spec, run_id)
    events = [dict(batch_id=batch_id, item_id=r.item_id, kind="fusion", actor=f"fusion:{MODEL_FUSION}", label=r.label,
                   confidence=r.confidence, dedup_key=f"fusion:{batch_id}:{r.item_id}:{r.label}:{float(r.confidence):.6f}",
                   payload={"agreement": round(float(r.agreement), 4),
                            "raw_confidence": round(float(r.raw_confidence), 6)}, **meta)
              for r in out.itertuples(index=False)]
    fx.ledger.append_events(dataset, events)
    return out


HELDOUT_FOLDS = 5


def _pool_models(spec: DatasetSpec, answers: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
    """The labelers' answers fused per item by the type (index item_id: label, confidence, prob_<class>; spans also
    route_reason and priority).  ``items``: the items answered (the type's ``item_table`` of them is its context)."""
    return spec.task_type.pool_models(answers, spec.class_names, None if items is None else item_table(spec, items),
                                      target=spec.quality.confidence_threshold)


def heldout_predictions(fx: Factory, dataset: str, seed: int = 0) -> pd.DataFrame:
    """Every human-labelled item's fused label and raw confidence from labelers that never saw it (K-fold).

    The labelers are trained on all human labels (seed, review, audit, arbitration, gold), so their
    confidence on those items is in-sample; cross-validating each labeler family and fusing the
    out-of-fold vectors gives what people verified *against models that did not know the answer*.
    Cached next to the models, keyed by the training labels and the labeler code.
    Columns: item_id, label (fused), raw_confidence, human_label, correct (0/1).
    """
    from factory.labelers import training_hash

    spec = fx.spec(dataset)
    classes = spec.class_names
    tt = spec.task_type
    labels = human_labels(fx, dataset)
    labels = labels[in_schema(spec, labels["label"])]
    items = fx.ledger.items(dataset, item_ids=labels["item_id"].tolist())
    train = labels.merge(items[["item_id", "text", "meta"]], on="item_id").sort_values("item_id").reset_index(drop=True)
    cols = ["item_id", "label", "raw_confidence", "human_label", "correct"]
    if len(train) < 2 or train["label"].nunique() < 2:
        return pd.DataFrame(columns=cols)
    th = training_hash(train[["item_id", "text"]], train["label"].tolist())
    suite = hashlib.sha256(f"{tt.labeler_suite()}|{MODEL_FUSION}|{HELDOUT_FOLDS}|{seed}".encode()).hexdigest()[:8]
    path = fx.paths.models / dataset / f"heldout-{th[:16]}-{suite}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    frames = []
    X = labeler_input(spec, train)
    for j, lb in enumerate(fx.progress.track(tt.make_labelers(seed=seed), "calibration: cross-fit labelers",
                                             weight=len(train), label=lambda lb: lb.name)):
        # each family's out-of-fold answers (the type's: probability vectors and their decision, or spans)
        f = tt.cross_val_answers(lambda j=j: tt.make_labelers(seed=seed)[j], X, train["label"].tolist(), classes,
                                 folds=HELDOUT_FOLDS, seed=seed).reset_index(drop=True)
        f.insert(0, "item_id", train["item_id"].to_numpy())
        f.insert(1, "worker_id", f"{lb.name}#{j}")
        frames.append(f)
    fused = _pool_models(spec, pd.concat(frames, ignore_index=True), train)  # fused exactly as `fuse` does
    human = train.set_index("item_id")["label"].astype(str).reindex(fused.index)
    out = pd.DataFrame({"item_id": fused.index, "label": fused["label"].astype(str).to_numpy(),
                        "raw_confidence": fused["confidence"].to_numpy(dtype=float),
                        "human_label": human.to_numpy()})
    out["correct"] = (out["label"] == out["human_label"]).astype(float)
    write_table(out[cols], path)
    return out[cols]


def calibrate_fused(fx: Factory, dataset: str, fused: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The fused confidence calibrated on what people verified on this dataset (engine: cross_fit_confidence).

    Fit on the human-labelled items' out-of-fold fused confidence (`heldout_predictions`), shrunk
    towards their accuracy with few of them; the top class's probability becomes the calibrated
    confidence, the other classes share the rest.  Returns the new frame and what it was fit on.
    """
    from factory.engine.calibration import cross_fit_confidence

    held = heldout_predictions(fx, dataset)
    raw = fused["confidence"].to_numpy(dtype=float)
    if held.empty:  # no verified item yet: nothing measures the models, the raw confidence stands (recorded)
        return fused, {"n_verified": 0, "method": "none", "fit_on": "no human label yet", "fusion": MODEL_FUSION}
    conf = np.concatenate([held["raw_confidence"].to_numpy(dtype=float), raw])
    correct = np.concatenate([held["correct"].to_numpy(dtype=float), np.full(len(raw), np.nan)])
    cal, info = cross_fit_confidence(conf, correct)
    info |= {"fit_on": "human-labelled items of this dataset, fused out-of-fold "
                       f"({HELDOUT_FOLDS}-fold cross-validated labelers)", "fusion": MODEL_FUSION,
             "heldout_accuracy": round(float(held["correct"].mean()), 6),
             "mean_raw_confidence": round(float(raw.mean()), 6) if len(raw) else None,
             "mean_confidence": round(float(cal[len(held):].mean()), 6) if len(raw) else None}
    # one class: the top class's probability becomes it; a set's (or spans') per-class marginals stay
    return fx.spec(dataset).task_type.with_confidence(fused, cal[len(held):]), info


# ----------------------------------------------------------------------------- routing
def auto_accept_threshold(fx: Factory, dataset: str, batch_id: str) -> tuple[float, dict]:
    """The confidence threshold of auto-accept for this batch, with the guarantee it rests on.

    From the random audit samples of earlier batches (people's label vs the fused label and its
    confidence: items drawn at random from the auto-accepted, so the bound holds for them),
    `factory.guarantee.choose_threshold` picks the lowest threshold whose error among
    auto-accepted items is <= quality.auto_accept.epsilon with probability >= 1 - delta.  The spec's
    confidence_threshold is a floor.  With fewer than MIN_GUARANTEE_SAMPLE verified items the floor
    applies alone, and the record says so.
    """
    spec = fx.spec(dataset)
    frames = []
    for b in fx.ledger.batches(dataset)["batch_id"]:
        path = fx.paths.table("final_labels", dataset, b)
        if b != batch_id and path.exists():
            f = pd.read_parquet(path, columns=["label", "fused_label", "fused_confidence", "route"])
            frames.append(f[f["route"] == "audit"])  # the random audit: an unbiased sample of auto-accepted items
    verified = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fused_confidence"])
    return auto_accept_choice(spec, verified)


def _human_model_routes(fx: Factory, spec: DatasetSpec, dataset: str, batch_id: str, items: pd.DataFrame,
                        fused: pd.DataFrame) -> pd.DataFrame:
    """People labelled first; the engine's verification flags probable mislabels, gaps and rule anomalies."""
    from factory.labelers import cross_val_proba

    classes = spec.class_names
    dec = fx.ledger.human_decisions(dataset, batch_id=batch_id)
    dec = dec[dec["item_id"].isin(items["item_id"])]
    answered = dec.groupby("item_id").size()
    missing = items.loc[~items["item_id"].isin(answered.index), "item_id"]
    tt = spec.task_type
    people = dec.rename(columns={"actor": "worker_id"})[["item_id", "worker_id", "label"]]
    if not len(dec):
        human = pd.DataFrame(columns=["label", "confidence"])
    else:  # the type's fusion of people (one label: Dawid-Skene; sets: the label-set Dawid-Skene)
        human = tt.fuse_people(people, classes)
    labelled = items[items["item_id"].isin(human.index)].set_index("item_id")
    given = human.loc[labelled.index, "label"].astype(str)
    if len(labelled) >= 2:
        oos = cross_val_proba(lambda: tt.make_labelers()[0],
                              labelled.reset_index()[["item_id", "text"]], given.tolist(), classes,
                              folds=spec.human_model.verify_with)
        posterior = human.loc[labelled.index, prob_cols(classes)].to_numpy(float)
        # the type's adapter of the confident-learning rule (sets: each class a yes/no question)
        sus = tt.suspect_answers(given.tolist(), oos, classes, posterior, index=labelled.index).reindex(labelled.index)
    else:
        sus = pd.DataFrame({"flag": False, "reasons": [[]] * len(labelled)}, index=labelled.index)
    n_labels = dec.groupby("item_id")["label"].nunique()
    return human_model_routes(spec, given, human.loc[labelled.index, "confidence"], sus, n_labels,
                              labelled["meta"].map(json.loads), missing, fused)


@counted("route")
def review_tasks(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Route every item by its mode, store each decision with its reasons, open the tasks for people."""
    spec = fx.spec(dataset)
    items = read_table(fx, "raw_items", dataset, batch_id)
    modes = item_modes(spec, items)
    fused = read_table(fx, "fused_labels", dataset, batch_id).set_index("item_id")
    preds = read_table(fx, "model_predictions", dataset, batch_id)
    model_labels = preds.pivot(index="item_id", columns="labeler", values="label").reindex(fused.index)
    existing = fx.ledger.tasks(dataset, batch_id=batch_id)
    seeded = set(existing.loc[existing["kind"] == "seed", "item_id"]) if not existing.empty else set()
    parts = []
    ph = fused.index[(modes.reindex(fused.index) == "prelabel-human").to_numpy() & ~fused.index.isin(seeded)]
    if len(ph):
        # the class-share bias check compares one class per item with the spec's prior: not for sets or spans
        shares = spec.task_type.class_shares
        seed_dist = human_labels(fx, dataset)["label"].value_counts().to_dict() if shares else {}
        threshold, info = auto_accept_threshold(fx, dataset, batch_id)
        fx.ledger.record_check(dataset, batch_id, "auto_accept_guarantee", spec.quality.standard, True, info, run_id)
        # the review budget is per routing pass: first the audit this batch needs to be certifiable (without it
        # nothing the machines accept can be released), then deferred items of earlier batches, then new flags
        budget = spec.review.items_allowed(len(ph))
        acceptable = fused.loc[ph, "confidence"]
        if "route_reason" in fused:  # spans: what span routing lets through without a person
            acceptable = acceptable[span_reasons(fused.loc[ph], threshold).to_numpy() == ""]
        else:
            acceptable = acceptable[acceptable >= threshold]
        reserve = min(audit_target(spec.quality, acceptable), len(acceptable), budget)
        carried = fund_deferred(fx, dataset, budget - reserve, exclude_batch=batch_id, run_id=run_id)
        info = (info or {}) | {"review_budget": budget, "audit_reserved": int(reserve), "budget_to_deferred": carried}
        if "route_reason" in fused:  # the type's fusion routed each item itself (spans: span routing)
            parts.append(prelabel_span_routes(spec, fused.loc[ph], seed, threshold, budget - carried))
        else:
            parts.append(prelabel_human_routes(spec, fused.loc[ph], model_labels, seed_dist, seed, threshold,
                                               budget - carried))
    else:
        info = None
    pm = fused.index[(modes.reindex(fused.index) == "prelabel-model").to_numpy() & ~fused.index.isin(seeded)]
    if len(pm):
        # the audit rate counts every prelabel-model item of the batch, the seeded ones included
        parts.append(prelabel_model_routes(spec, preds, pm, seed,
                                           n_items=int((modes == "prelabel-model").sum())))
    hm = items[(modes == "human-model").to_numpy()]
    if len(hm):
        parts.append(_human_model_routes(fx, spec, dataset, batch_id, hm, fused))
    if seeded:
        s = fused.loc[fused.index.isin(seeded)].reset_index()
        parts.append(pd.DataFrame({"item_id": s["item_id"], "route": "seed", "label": s["label"],
                                   "confidence": s["confidence"],
                                   "reasons": [["seed: already sent to people to train the labelers"]] * len(s)}))
    routes = pd.concat(parts, ignore_index=True)
    routes.attrs["auto_accept"] = info
    routes["reasons"] = routes["reasons"].map(list)
    routes["mode"] = routes["item_id"].map(modes)
    meta = items.set_index("item_id")["meta"].map(json.loads)
    routes["required_tier"] = [
        max_tier(spec.human_model.flag_tier if r.route == "verify" else None,
                 required_tier(spec, r.label, r.reasons, meta.get(r.item_id)))
        for r in routes.itertuples(index=False)]
    # a type whose people correct a pre-annotation (spans) always shows it: the fused spans are the starting point
    show = spec.review.show_model_suggestion or spec.task_type.shows_prelabel
    rows = [task_row(dataset, batch_id, r.item_id, r.route, r.reasons, tier=r.required_tier, run_id=run_id,
                     suggestion=str(r.label) if show and r.route != "verify" else None, domain=spec.workforce.domain)
            for r in routes[routes["route"].isin(["review", "audit", "verify"])].itertuples(index=False)]
    rows += _honeypots(fx, spec, dataset, batch_id, len(rows), run_id, seed)
    fx.ledger.create_tasks(rows)
    if (routes["route"] == "deferred").any():  # the ledger's record of deferral: flagged, no person yet
        de = routes[routes["route"] == "deferred"]
        fx.ledger.append_events(dataset, [dict(
            batch_id=batch_id, item_id=r.item_id, kind="deferral", actor="routing:budget", label=None,
            dedup_key=f"deferral:{batch_id}:{r.item_id}:{spec.version}",
            payload={"reasons": r.reasons, "priority": round(float(r.priority), 6), "fused_label": str(r.label),
                     "confidence": round(float(r.confidence), 6)},
            **_meta(spec, run_id)) for r in de.itertuples(index=False)])
    if "priority" in routes:
        routes = routes.drop(columns="priority")
        routes.attrs["auto_accept"] = info
    if (routes["route"] == "excluded").any():
        ex = routes[routes["route"] == "excluded"]
        fx.ledger.append_events(dataset, [dict(
            batch_id=batch_id, item_id=r.item_id, kind="exclusion", actor="prelabel-model:verifier", label=None,
            dedup_key=f"exclusion:{batch_id}:{r.item_id}", payload={"reasons": r.reasons},
            **_meta(spec, run_id)) for r in ex.itertuples(index=False)])
    # the routing table last: its existence means "routed", so the tasks must already be there after a crash
    write_table(routes.assign(reasons=routes["reasons"].map(json.dumps)), fx.paths.table("routing", dataset, batch_id))
    return routes


def deferred_items(fx: Factory, dataset: str, batch_id: str | None = None) -> pd.DataFrame:
    """Items routing flagged but the review budget could not fund, still without a task for people.

    The state lives in the ledger: a `deferral` event (written by review_tasks) and no task on the
    item since.  Columns: item_id, batch_id, reasons, priority, fused_label, confidence, created_at.
    """
    cols = ["item_id", "batch_id", "reasons", "priority", "fused_label", "confidence", "created_at"]
    ev = fx.ledger.events(dataset, batch_id=batch_id, kind="deferral")
    if ev.empty:
        return pd.DataFrame(columns=cols)
    t = fx.ledger.tasks(dataset)
    has_task = set(t.loc[t["kind"] != "gold", "item_id"]) if not t.empty else set()
    ev = ev[~ev["item_id"].isin(has_task)].drop_duplicates("item_id", keep="last")
    pay = ev["payload"].map(json.loads)
    return pd.DataFrame({"item_id": ev["item_id"].to_numpy(), "batch_id": ev["batch_id"].to_numpy(),
                         "reasons": pay.map(lambda p: p.get("reasons", [])).to_numpy(),
                         "priority": pay.map(lambda p: float(p.get("priority", 0.0))).to_numpy(),
                         "fused_label": pay.map(lambda p: p.get("fused_label")).to_numpy(),
                         "confidence": pay.map(lambda p: p.get("confidence")).to_numpy(),
                         "created_at": ev["created_at"].to_numpy()}, columns=cols)


def fund_deferred(fx: Factory, dataset: str, budget: int, *, exclude_batch: str | None = None,
                  run_id: str | None = None) -> int:
    """Open review tasks for up to `budget` deferred items (oldest batch first, then highest priority).

    Each task sits in the item's own batch, so that batch is finalised again once it is answered
    (`needs_finalise`).  Returns how many of the budget it used.
    """
    d = deferred_items(fx, dataset)
    if exclude_batch is not None:
        d = d[d["batch_id"] != exclude_batch]
    if d.empty or budget <= 0:
        return 0
    spec = fx.spec(dataset)
    order = {b: i for i, b in enumerate(fx.ledger.batches(dataset).sort_values("created_at")["batch_id"])}
    d = (d.assign(_b=d["batch_id"].map(order).fillna(len(order)), _p=-d["priority"])
         .sort_values(["_b", "_p", "item_id"]).head(int(budget)))
    show = spec.review.show_model_suggestion
    rows = []
    for r in d.itertuples(index=False):
        reasons = [x for x in r.reasons if x != "budget"] + ["deferred"]
        rows.append(task_row(dataset, r.batch_id, r.item_id, "review", reasons,
                             tier=required_tier(spec, r.fused_label, reasons), run_id=run_id,
                             suggestion=str(r.fused_label) if show else None, domain=spec.workforce.domain))
    fx.ledger.create_tasks(rows)
    return len(rows)


def needs_finalise(fx: Factory, dataset: str, batch_id: str) -> bool:
    """True when the batch has no final labels yet, or some of its deferred items got a task since."""
    path = fx.paths.table("final_labels", dataset, batch_id)
    if not path.exists():
        return True
    fl = pd.read_parquet(path, columns=["item_id", "source"])
    was = set(fl.loc[fl["source"] == "deferred", "item_id"])
    return bool(was - set(deferred_items(fx, dataset, batch_id)["item_id"]))


def _honeypots(fx: Factory, spec: DatasetSpec, dataset: str, batch_id: str, n_tasks: int, run_id: str | None,
               seed: int) -> list[dict]:
    """Hidden gold items mixed into the batch's queue at spec.workforce.gold_rate (no suggestion shown)."""
    from factory.workforce import Workforce

    rate = spec.workforce.gold_rate
    if not rate or not n_tasks:
        return []
    gold = Workforce(fx.ledger).gold(dataset)
    if gold.empty:
        return []
    n = min(len(gold), max(1, int(round(rate * n_tasks))))
    pick = gold.sample(n=n, random_state=seed)["item_id"]
    # like an audit task, a honeypot shows the models' fused label (never the gold one) where suggestions are
    # shown: a task without a suggestion among tasks with one would give the honeypot away
    fused: dict = {}
    if spec.review.show_model_suggestion:
        ev = fx.ledger.events(dataset, kind="fusion")
        fused = ev[ev["item_id"].isin(set(pick))].groupby("item_id")["label"].last().to_dict() if len(ev) else {}
    return [task_row(dataset, batch_id, i, "gold", ["honeypot"], run_id=run_id, suggestion=fused.get(i)) for i in pick]


# ----------------------------------------------------------------------------- final labels
FINAL_SOURCES = ("auto", "calibrated", "annotated", "verified", "arbitrated")
MAX_ANSWERS = 3


def _known_reliabilities(fx: Factory, dataset: str) -> pd.Series:
    """Gold accuracy of each person with enough gold answers (annotator_id -> accuracy); others are estimated."""
    from factory.workforce import Workforce

    spec = fx.spec(dataset)
    # gold figures only: an empty reliability series skips the engine's dataset-wide Dawid-Skene
    scores = Workforce(fx.ledger).scores(dataset, reliability=pd.Series(dtype=float))
    if scores.empty:
        return pd.Series(dtype=float)
    enough = scores[scores["gold_answers"] >= spec.workforce.min_gold_answers]
    return enough.set_index("annotator_id")["gold_accuracy"].astype(float)


def escalate(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None) -> pd.DataFrame:
    """Open second-opinion or expert-arbitration tasks where people and models have not settled an item.

    The engine's adaptive routing (`decide`) reads the posterior of models + people: items below
    the target (spec.quality.min_accuracy) get one more answer from someone who has not seen the item (at least tier L2); items
    still unsettled after two answers go to an expert.  Returns the new tasks.
    """
    spec = fx.spec(dataset)
    classes = spec.class_names
    routes = read_table(fx, "routing", dataset, batch_id).set_index("item_id")
    fused = read_table(fx, "fused_labels", dataset, batch_id).set_index("item_id")
    dec = fx.ledger.human_decisions(dataset, batch_id=batch_id)
    if dec.empty:
        return pd.DataFrame()
    dec = dec[dec["item_id"].isin(routes.index) & dec["task_id"].notna()]
    kinds = dec["payload"].map(lambda p: json.loads(p).get("task_kind"))
    dec = dec[kinds.isin(TRAINING_KINDS)]
    arbitrated = set(fx.ledger.events(dataset, batch_id=batch_id, kind="arbitration")["item_id"])
    tasks = fx.ledger.tasks(dataset, batch_id=batch_id)
    pending_arb = set(tasks.loc[tasks["kind"] == "arbitrate", "item_id"])
    # an answer outside the current schema is a schema problem for the blocking checks, not a dispute
    off_schema = set(dec.loc[~in_schema(spec, dec["label"]), "item_id"])
    off_schema |= set(dec.loc[kinds.reindex(dec.index) == "requeue", "item_id"])  # decided under the new guideline
    people = routes.index[routes.index.isin(dec["item_id"]) & ~routes.index.isin(arbitrated | pending_arb | off_schema)
                          & (routes["route"] != "seed")]
    if not len(people):
        return pd.DataFrame()
    d = dec[dec["item_id"].isin(people)].rename(columns={"actor": "worker_id"})
    if not spec.task_type.people_loop:  # sets and spans: the type's fusion of people and models decides
        post = _set_posterior(fx, spec, dataset, batch_id, routes, d[["item_id", "worker_id", "label"]])
        new = set_escalations(spec, dataset, batch_id, routes, post, d.groupby("item_id").size(), run_id)
        fx.ledger.create_tasks(new)
        return pd.DataFrame(new)
    prior = fused.loc[people, prob_cols(classes)].to_numpy(copy=True)
    if (routes.loc[people, "mode"] == "human-model").any():  # people first: the models' prior is kept weak
        hm = (routes.loc[people, "mode"] == "human-model").to_numpy()
        prior[hm] = 1.0 / len(classes)  # people first: the models flag (verify route), people decide
    n = d.groupby("item_id").size().reindex(people).fillna(0).astype(int)
    base = routes.loc[people, "route"].map({"verify": spec.human_model.overlap + 1}).fillna(1).astype(int)
    n_eff = n - base + 1
    # the one people-in-the-loop round the replay benchmark runs too (factory.loop.people_round)
    settings = people_loop.LoopSettings.from_spec(spec, escalate_after=2, max_answers=MAX_ANSWERS)
    act = people_loop.people_round(pd.DataFrame(prior, index=people, columns=prob_cols(classes)),
                                   d[["item_id", "worker_id", "label"]], settings, classes, n_answers=n_eff,
                                   budget_left=len(people),
                                   known_reliability=_known_reliabilities(fx, dataset)).decisions
    new = escalation_tasks(spec, dataset, batch_id, routes, act, n, run_id)
    fx.ledger.create_tasks(new)
    return pd.DataFrame(new)


def _set_posterior(fx: Factory, spec: DatasetSpec, dataset: str, batch_id: str, routes: pd.DataFrame,
                   answers: pd.DataFrame) -> pd.DataFrame:
    """Sets and spans: people's answers (``item_id, worker_id, label``) fused with the models' pooled answer by the
    type's fusion (label-set Dawid-Skene; aggregate_spans); index item_id, ``label`` and ``confidence``.

    The models enter as ONE worker (their linear pool): three labelers trained on the same seed err
    together, and counted as three independent workers they outvoted every single correction.  Seed and
    human-model items fuse people alone (the models echo the seed; in human-model they only flag)."""
    alone = set(routes.index[(routes["route"] == "seed") | (routes["mode"] == "human-model")])
    fused = read_table(fx, "fused_labels", dataset, batch_id)
    models = fused.loc[~fused["item_id"].isin(alone), ["item_id", "label"]].assign(worker_id="models:pooled")
    context = item_table(spec, read_table(fx, "raw_items", dataset, batch_id))  # spans: the items' tokens
    if context is None:
        return spec.task_type.fuse_with_models(answers, models, spec.class_names)
    return spec.task_type.fuse_with_models(answers, models, spec.class_names, items=context)


def _said_labels(answers: pd.DataFrame, machine: pd.DataFrame, idx: pd.Index, classes: list[str]) -> np.ndarray:
    """(len(idx), k) booleans: which classes the events a people-decided final label rests on gave each item
    (people's answers, the models' and the fusion's labels: the events its final event names)."""
    said = np.zeros((len(idx), len(classes)), dtype=bool)
    both = pd.concat([answers[["item_id", "label"]], machine[["item_id", "label"]]]).dropna()
    r, c = idx.get_indexer(both["item_id"]), pd.Index(classes).get_indexer(both["label"].astype(str))
    ok = (r >= 0) & (c >= 0)
    said[r[ok], c[ok]] = True
    return said


def supported_argmax(post: np.ndarray, said: np.ndarray) -> np.ndarray:
    """Each row's most probable class among those someone said (``said``, rows with none said: all classes).

    The people's fusion (Dawid-Skene) can learn that a person's answers run against the others' and then
    turn that person's lone answer into its opposite: a label no person and no model gave, which no ledger
    event backs (the release refuses it).  The final label is always one the ledger's events gave; the
    confidence stays the posterior's, so such an item shows as the doubtful one it is."""
    allowed = said | ~said.any(axis=1, keepdims=True)
    return np.where(allowed, post, -np.inf).argmax(axis=1)


@counted("final labels")
def final_labels(fx: Factory, dataset: str, batch_id: str, run_id: str | None = None) -> pd.DataFrame:
    """Every item's final label and path: auto, verified, annotated, calibrated, arbitrated or deferred.

    auto: the fused label, nobody looked (prelabel-human); verified: the independent verifier model
    agreed, nobody looked (prelabel-model); annotated and calibrated: see `_human_source`;
    arbitrated: an expert's final decision; deferred: flagged by routing beyond the review budget and
    not answered yet: no accepted label (label and confidence empty), never released.

    Excluded items (prelabel-model disagreements under on_disagreement=exclude) get no label; their
    exclusion event in the ledger says why.  Waits (NotReadyError) while tasks are open, and opens
    second-opinion or arbitration tasks first when people and models have not settled an item.
    """
    spec = fx.spec(dataset)
    classes = spec.class_names

    tasks = fx.ledger.tasks(dataset, batch_id=batch_id)
    waiting = tasks[(tasks["status"] == "open") & (tasks["kind"] != "gold")
                    & ~tasks["task_id"].isin(given_up_tasks(fx, dataset))]
    if len(waiting):
        raise NotReadyError(f"waiting for people: {len(waiting)} of {len(tasks)} task(s) of batch {batch_id} "
                            f"are open (`factory tasks list --batch {batch_id}`)")
    new = escalate(fx, dataset, batch_id, run_id)
    if len(new):
        kinds = new["kind"].value_counts().to_dict()
        raise NotReadyError(f"waiting for people: opened {kinds.get('second', 0)} second-opinion and "
                            f"{kinds.get('arbitrate', 0)} arbitration task(s) for items people and models have "
                            f"not settled (`factory tasks list --batch {batch_id}`)")
    routes = read_table(fx, "routing", dataset, batch_id).set_index("item_id")
    fused = read_table(fx, "fused_labels", dataset, batch_id).set_index("item_id")
    keep = routes.index[routes["route"] != "excluded"]
    fused = fused.loc[fused.index.intersection(keep)]
    events = fx.ledger.events(dataset, batch_id=batch_id, kind=["model", "fusion", "arbitration"])
    machine_events = events[events["kind"] != "arbitration"].groupby("item_id")["event_id"].agg(list)
    arbitration = events[events["kind"] == "arbitration"].groupby("item_id").tail(1).set_index("item_id")
    decisions = fx.ledger.human_decisions(dataset, batch_id=batch_id)
    out = pd.DataFrame(index=fused.index)
    out["batch_id"] = batch_id
    out["label"] = fused["label"].astype(str)
    out["confidence"] = fused["confidence"].astype(float)
    route = routes["route"].reindex(out.index)
    out["source"] = np.where(route == "verified", "verified", "auto")
    out["route"] = route
    out["mode"] = routes["mode"].reindex(out.index)
    out["fused_label"] = fused["label"].astype(str)
    out["fused_confidence"] = fused["confidence"].astype(float)
    if "raw_confidence" in fused:  # the fusion's own confidence, before calibration on people's labels
        out["raw_confidence"] = fused["raw_confidence"].astype(float)
    pm = out.index[(out["mode"] == "prelabel-model").to_numpy() & route.isin(["verified", "audit"]).to_numpy()]
    if len(pm) and spec.task_type.people_loop:  # one class per item: the pool's prob_<class> vector prices it
        # prelabel-model's machine label is the one its verifier checked (the primary labelers' fusion, which the
        # verifier's own model event also gave), not the pool of all three: on the demo the pool differed on 14 of
        # 1,688 verified items and was right on 3 of them. The audit measures that label (fused_label), and a
        # `verified` item releases it, with the pool's calibrated probability of it as its confidence.
        checked = routes.loc[pm, "label"].astype(str)
        p = fused.loc[pm, prob_cols(classes)].to_numpy(float)
        conf = p[np.arange(len(pm)), pd.Index(classes).get_indexer(checked)]
        out.loc[pm, "fused_label"] = checked.to_numpy()
        out.loc[pm, "fused_confidence"] = conf
        ver = pm[(route.loc[pm] == "verified").to_numpy()]
        out.loc[ver, "label"] = checked.loc[ver].to_numpy()
        out.loc[ver, "confidence"] = conf[(route.loc[pm] == "verified").to_numpy()]
    human_events = pd.Series([[] for _ in range(len(out))], index=out.index, dtype=object)
    out["annotators"] = "[]"
    if not decisions.empty:
        d = decisions[decisions["item_id"].isin(out.index)].copy()
        d["task_kind"] = d["task_id"].map(tasks.set_index("task_id")["kind"])
        d = d[d["task_kind"].isin(TRAINING_KINDS)]
    else:
        d = decisions
    if len(d):
        idx = pd.Index(sorted(d["item_id"].unique()))
        prior = fused.loc[idx, prob_cols(classes)].to_numpy(copy=True)
        hm = (out.loc[idx, "mode"] == "human-model").to_numpy()
        # people first: in human-model the models' role is to flag probable mislabels for another person (the
        # verify route); as a vote they overruled three people on 29 of 261 re-checked demo items
        prior[hm] = 1.0 / len(classes)
        # seed items taught the labelers: their models' probabilities echo the very answers being fused, so
        # they are no evidence here (and escalation never reviews seed items, so nothing could correct a flip)
        seeded = (routes["route"].reindex(idx) == "seed").to_numpy()
        prior[seeded] = 1.0 / len(classes)
        # the same fusion of people and models the escalation round decided on (factory.loop)
        answers = d.rename(columns={"actor": "worker_id"})[["item_id", "worker_id", "label"]]
        if not spec.task_type.people_loop:  # sets and spans: the type's fusion of people and models
            post = _set_posterior(fx, spec, dataset, batch_id, routes, answers).reindex(idx)
            out.loc[idx, "label"] = post["label"].astype(str).to_numpy()
            out.loc[idx, "confidence"] = post["confidence"].astype(float).to_numpy()
        else:
            post = people_loop.fuse_people(prior, idx, answers, classes,
                                           default_reliability=spec.workforce.default_reliability,
                                           known_reliability=_known_reliabilities(fx, dataset)).posterior.to_numpy()
            said = _said_labels(d, events[events["kind"] != "arbitration"], idx, classes)
            pick = supported_argmax(post, said)
            out.loc[idx, "label"] = np.asarray(classes, dtype=object)[pick]
            out.loc[idx, "confidence"] = post[np.arange(len(idx)), pick]
        per_item = d.groupby("item_id").agg(
            kinds=("task_kind", lambda k: set(k)),
            annotators=("actor", lambda a: json.dumps(sorted(set(a)))),
            events=("event_id", list))
        out.loc[idx, "source"] = per_item.loc[idx, "kinds"].map(_human_source).to_numpy()
        # people's answers outside the current schema are kept as given, for the blocking check to name
        off = d[~in_schema(spec, d["label"])].groupby("item_id")["label"].agg(lambda x: x.mode().iloc[0])
        out.loc[off.index, "label"] = off.astype(str)
        out.loc[idx, "annotators"] = per_item.loc[idx, "annotators"]
        human_events.loc[idx] = per_item.loc[idx, "events"]
    if len(d):  # an answer under a bumped guideline (requeue) supersedes the answers given before it
        rq = d[d["task_kind"] == "requeue"].sort_values("seq").groupby("item_id").tail(1).set_index("item_id")
        out.loc[rq.index, "label"] = rq["label"].astype(str)
        out.loc[rq.index, "source"] = "calibrated"
    arb = arbitration.index.intersection(out.index)
    if len(arb):
        out.loc[arb, "label"] = arbitration.loc[arb, "label"].astype(str)
        out.loc[arb, "confidence"] = 1.0
        out.loc[arb, "source"] = "arbitrated"
        for i in arb:
            human_events.at[i] = human_events.at[i] + [arbitration.at[i, "event_id"]]
    unfunded = out.index.intersection(pd.Index(deferred_items(fx, dataset, batch_id)["item_id"]))
    out["label"] = out["label"].astype(object)
    out.loc[unfunded, "label"] = None  # a flagged item nobody answered has no accepted label
    out.loc[unfunded, "confidence"] = np.nan
    out.loc[unfunded, "source"] = "deferred"
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
        if r.source == "deferred":  # its deferral event is its record; a final event would claim a label
            continue
        digest = hashlib.sha256(f"{r.label}|{r.source}|{r.event_ids}".encode()).hexdigest()[:16]
        ev.append(dict(batch_id=batch_id, item_id=r.item_id, kind="final", actor=f"final:{r.source}", label=r.label,
                       confidence=r.confidence, dedup_key=f"final:{batch_id}:{r.item_id}:{digest}",
                       payload={"source": r.source, "events": json.loads(r.event_ids)}, **meta))
    fx.ledger.append_events(dataset, ev)
    from factory.workforce import Policy, Workforce

    Workforce(fx.ledger).evaluate(dataset, Policy.from_spec(spec))  # continuous evaluation after every batch
    return out


ANSWER_KINDS = ("human", "correction", "arbitration")


def answer_count(fx: Factory, dataset: str, batch_id: str) -> int:
    """People's answers recorded for a batch (a new answer or correction means its final labels are stale)."""
    return len(fx.ledger.events(dataset, batch_id=batch_id, kind=list(ANSWER_KINDS)))


def _human_source(kinds: set) -> str:
    """annotated: people labelled first (seed, human-model); calibrated: a person checked a machine's or a
    colleague's label (review, audit, second opinion, a flagged label re-checked by a higher tier)."""
    return "annotated" if kinds <= {"seed", "annotate"} else "calibrated"


def batch_summary(fx: Factory, dataset: str, batch_id: str) -> dict:
    """Per-batch report: items per path, people's answers and minutes, per-annotator figures, gold accuracy."""
    spec = fx.spec(dataset)
    final = read_table(fx, "final_labels", dataset, batch_id)
    routes = read_table(fx, "routing", dataset, batch_id)
    tasks = fx.ledger.tasks(dataset, batch_id=batch_id)
    answered = tasks[tasks["status"] == "answered"]
    paths = {p: 0 for p in (*FINAL_SOURCES, "deferred", "excluded")}
    paths.update(final["source"].value_counts().to_dict())
    deferred = deferred_items(fx, dataset, batch_id)
    paths["excluded"] = int((routes["route"] == "excluded").sum())
    audit = final[final["route"] == "audit"]
    agree = float((audit["label"] == audit["fused_label"]).mean()) if len(audit) else None
    secs = spec.workforce.seconds_per_answer
    minutes = float(answered["required_tier"].fillna("L1").map(lambda t: secs.get(t, secs.get("L1", 20))).sum() / 60)
    per_annotator = {}
    if len(answered):
        lab = final.set_index("item_id")["label"]
        a = answered.assign(final=answered["item_id"].map(lab))
        for who, g in a.groupby("annotator"):
            scored = g[g["final"].notna()]
            per_annotator[str(who)] = {"answers": int(len(g)),
                                       "agreement_with_final": round(float((scored["answer"] == scored["final"]).mean()), 4)
                                       if len(scored) else None}
    from factory.workforce import Workforce

    gold = Workforce(fx.ledger).gold_answers(dataset)
    # the labelers' accuracy on this batch's human-checked items: labels they never trained on (feedback loop)
    held = final[final["source"].isin(["calibrated", "arbitrated"])].set_index("item_id")["label"]
    preds = read_table(fx, "model_predictions", dataset, batch_id)
    preds = preds[preds["item_id"].isin(held.index)]
    labeler_acc = {v: {"accuracy": round(float((g["label"].to_numpy() == held.loc[g["item_id"]].to_numpy()).mean()), 4),
                       "n": int(len(g))} for v, g in preds.groupby("labeler_version")} if len(preds) else {}
    return {
        "items": int(len(final)) + paths["excluded"],
        "paths": paths,
        "by_route": routes["route"].value_counts().to_dict(),
        "human_answers": int(len(answered)),
        "human_minutes": round(minutes, 1),
        "audit_sample": int(len(audit)),
        "audit_agreement": agree,
        "gold_accuracy": round(float(gold["correct"].mean()), 4) if len(gold) else None,
        "per_annotator": per_annotator,
        "label_distribution": final["label"].value_counts().to_dict(),
        "deferred": int(len(deferred)),
        "deferred_reasons": deferred["reasons"].explode().value_counts().to_dict() if len(deferred) else {},
        "deferred_items": deferred["item_id"].tolist(),
        "auto_accepted_share": round((paths["auto"] + paths["verified"]) / max(1, int(len(final)) + paths["excluded"]), 4),
        "labeler_accuracy_heldout": labeler_acc,
    }

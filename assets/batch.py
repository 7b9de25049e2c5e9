"""The software-defined assets of one dataset: thin wrappers over factory.pipeline.

Groups: design (dataset_spec), collection (raw_items), annotation (initial_tasks, labelers,
model_predictions, fused_labels), review (review_tasks, final_labels), qa (batch_quality),
release (dataset_release).  Every batch is a dynamic partition.
"""

import logging

import dagster as dg

from assets.resources import FactoryResource
from checks.asset_checks import check_results, check_specs
from checks.standards import DEFAULT_STANDARD, validate
from factory import pipeline as P
from factory import progress
from factory import release as R
from factory.errors import FactoryError, NotReadyError
from factory.quality import reliability_markdown as reliability_table


def dagster_name(dataset: str) -> str:
    """Dagster names allow letters, digits and underscores only."""
    return dataset.replace("-", "_")


def partitions_for(dataset: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{dagster_name(dataset)}_batches")


def _fail(e: FactoryError) -> dg.Failure:
    """A refusal (bad spec, failed gate): the step is red, because something must be fixed."""
    return dg.Failure(description=str(e), allow_retries=False)


class _WaitingIsNotAWarning(logging.Filter):
    """final_labels leaves its checks unreported while it waits for people (its materialisation is what they
    check); Dagster warns about each such check on every waiting run.  Waiting is normal: drop that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Blocking asset check") and "emitted no result" in msg)


logging.getLogger("dagster._core.execution.plan.active").addFilter(_WaitingIsNotAWarning())

WAITING = "waiting_for_people"
ANSWERS_SEEN = "answers_seen"  # people's answers the final labels were computed from (the sensor compares it)


def _progress(context) -> progress.Progress:
    """Long steps report into the run's log (start, end, count and rate; never per item), and draw bars when
    `factory run` asked for them (a terminal, --progress or FACTORY_PROGRESS=1)."""
    return progress.tee(progress.LogLines(context.log.info), progress.bars(auto=False))


def _waiting(context, asset_key: dg.AssetKey, e: NotReadyError) -> dg.AssetObservation:
    """Waiting for people is the factory's normal state, not a failure: the step succeeds without
    materialising, its downstream steps are skipped, and the observation says what waits."""
    context.log.info(str(e))
    return dg.AssetObservation(asset_key=asset_key, partition=context.partition_key if context.has_partition_key
                               else None, metadata={WAITING: str(e)})


def _residual_outcome(spec, df):
    """The residual personal-information scan as one more expectation outcome of raw_items."""
    from checks.standards import ExpectationOutcome
    from factory.compliance import categories
    from factory.pii import residual_check

    cats = categories(spec)
    blocking = spec.compliance.grade != "general"
    if not cats:
        return ExpectationOutcome("pii_residual", "factory_pii_residual_scan", True, blocking,
                                  "grade general, no categories declared: nothing to scan for")
    r = residual_check(df, "text", cats)
    return ExpectationOutcome("pii_residual", "factory_pii_residual_scan", r["success"], blocking,
                              f"no {', '.join(cats)} left after redaction", r["unexpected_count"], r["unexpected_items"])


def _standard_of(dataset: str, root: str | None) -> str:
    """The quality standard a dataset's spec names (the default if the spec cannot be read yet)."""
    from factory.pipeline import Factory

    try:
        return Factory.at(root).spec(dataset).quality.standard
    except FactoryError:
        return DEFAULT_STANDARD


def build_dataset_assets(dataset: str, root: str | None = None) -> list:
    """Every asset and check of one dataset, keyed under the dataset's name."""
    dn = dagster_name(dataset)
    parts = partitions_for(dataset)
    standard = _standard_of(dataset, root)

    def key(name: str) -> dg.AssetKey:
        return dg.AssetKey([dn, name])

    @dg.asset(key=key("dataset_spec"), group_name="design",
              description=f"The validated spec of '{dataset}' (datasets/{dataset}.yaml); its hash is the data version.")
    def dataset_spec(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            spec = P.record_spec(factory.factory(), dataset)
        except FactoryError as e:
            raise _fail(e) from None
        return dg.MaterializeResult(
            data_version=dg.DataVersion(spec.version),
            metadata={"spec_version": spec.version, "guideline_version": spec.guideline.version,
                      "mode": spec.mode, "classes": spec.class_names, "task_type": spec.task.type,
                      "compliance_grade": spec.compliance.grade})

    raw_key = key("raw_items")

    @dg.asset(key=raw_key, group_name="collection", partitions_def=parts, deps=[key("dataset_spec")],
              check_specs=[*check_specs(raw_key, "raw_items", standard),
                           dg.AssetCheckSpec(name="pii_residual", asset=raw_key, blocking=True,
                                             description="no personal information left after redaction "
                                                         "(blocking for compliance grades above general)")],
              description="The batch's accepted items (content-hash ids); duplicates and quarantine in the ledger.")
    def raw_items(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        fx = factory.factory()
        batch_id = context.partition_key
        try:
            df = P.raw_items(fx, dataset, batch_id)
        except FactoryError as e:
            raise _fail(e) from None
        batch = fx.ledger.batch(batch_id) or {}
        with _progress(context).work("check raw items", len(df), "rows"):  # Great Expectations + PII scan
            outcome = validate(df, "raw_items", standard=standard)
            outcome.outcomes.append(_residual_outcome(fx.spec(dataset), df))
        fx.ledger.record_check(dataset, batch_id, "raw_items", standard, outcome.success,
                               outcome.to_dict(), context.run_id)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(batch.get("source_sha256", "")[:16]),
            metadata={"items": len(df), "rows": batch.get("n_rows"), "duplicates": batch.get("n_duplicates"),
                      "quarantined": batch.get("n_quarantined"), "source": batch.get("source_path"),
                      "source_sha256": batch.get("source_sha256"),
                      "path": str(fx.paths.table("raw_items", dataset, batch_id))},
            check_results=check_results(raw_key, outcome))

    @dg.asset(key=key("initial_tasks"), group_name="annotation", partitions_def=parts, deps=[raw_key],
              description="Tasks people answer before the models run: every item k times (mode human-model) or, "
                          "while the dataset has fewer human labels than spec.seed.size, a diverse seed sample.")
    def initial_tasks(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            t = P.initial_tasks(factory.factory(_progress(context)), dataset, context.partition_key, context.run_id)
        except FactoryError as e:
            raise _fail(e) from None
        return dg.MaterializeResult(metadata={"tasks": len(t),
                                              "by_kind": dg.MetadataValue.json(t["kind"].value_counts().to_dict())})

    @dg.asset(key=key("labelers"), group_name="annotation", partitions_def=parts, deps=[key("initial_tasks")],
              output_required=False,
              description="Three labelers of different families trained on every human label so far; "
                          "the training-data hash is the data version.")
    def labelers(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            tr = P.train_labelers(factory.factory(_progress(context)), dataset, context.partition_key)
        except NotReadyError as e:
            yield _waiting(context, key("labelers"), e)
            return
        except FactoryError as e:
            raise _fail(e) from None
        yield dg.MaterializeResult(
            data_version=dg.DataVersion(tr.training_hash[:16]),
            metadata={"training_hash": tr.training_hash, "n_train": tr.n_train, "reused": tr.reused,
                      "labelers": dg.MetadataValue.json(tr.versions)})

    @dg.asset(key=key("model_predictions"), group_name="annotation", partitions_def=parts,
              deps=[raw_key, key("labelers")],
              description="Each labeler's full probability vector for every item (one model event per item).")
    def model_predictions(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        fx = factory.factory(_progress(context))
        try:
            tr = P.train_labelers(fx, dataset)
            preds = P.model_predictions(fx, dataset, context.partition_key, tr, context.run_id)
        except FactoryError as e:
            raise _fail(e) from None
        per = preds.groupby("labeler")["label"].value_counts().unstack(fill_value=0)
        return dg.MaterializeResult(metadata={
            "rows": len(preds), "labelers": dg.MetadataValue.json(tr.versions),
            "predicted_classes": dg.MetadataValue.md(per.to_markdown() if hasattr(per, "to_markdown") else str(per)),
            "path": str(fx.paths.table("model_predictions", dataset, context.partition_key))})

    @dg.asset(key=key("fused_labels"), group_name="annotation", partitions_def=parts,
              deps=[key("model_predictions")],
              description="The labelers fused by the label engine: one label and confidence per item.")
    def fused_labels(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            f = P.fuse(factory.factory(_progress(context)), dataset, context.partition_key, context.run_id)
        except FactoryError as e:
            raise _fail(e) from None
        return dg.MaterializeResult(metadata={
            "items": len(f), "mean_confidence": float(f["confidence"].mean()),
            "disagreement_rate": float(f["disagreement"].mean()),
            "label_distribution": dg.MetadataValue.json(f["label"].value_counts().to_dict())})

    @dg.asset(key=key("review_tasks"), group_name="review", partitions_def=parts, deps=[key("fused_labels")],
              description="Routing: disputed, low-confidence and bias-suspect items plus a random audit go to people.")
    def review_tasks(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            r = P.review_tasks(factory.factory(_progress(context)), dataset, context.partition_key, context.run_id)
        except FactoryError as e:
            raise _fail(e) from None
        reasons = r["reasons"].explode().value_counts().to_dict()
        return dg.MaterializeResult(metadata={
            "routes": dg.MetadataValue.json(r["route"].value_counts().to_dict()),
            "reasons": dg.MetadataValue.json(reasons),
            "to_people": int(r["route"].isin(["review", "audit", "verify"]).sum()),
            "deferred": int((r["route"] == "deferred").sum()),
            "auto_accept_threshold": dg.MetadataValue.json(r.attrs.get("auto_accept") or {}),
            "auto_accepted_share": float((r["route"] == "auto").mean())})

    final_key = key("final_labels")

    # a multi-asset only so that its checks may go unreported while it waits for people (can_subset makes
    # every output optional): a step that waits succeeds, and batch_quality downstream is skipped
    @dg.multi_asset(specs=[dg.AssetSpec(final_key, group_name="review", deps=[key("review_tasks")],
                                        description="Every item's final label (people's decision where they "
                                                    "answered, else the fused label), with its source and "
                                                    "contributing events.")],
                    check_specs=check_specs(final_key, "final_labels", standard), can_subset=True,
                    partitions_def=parts,
                    name=f"{dn}__final_labels")
    def final_labels(context: dg.AssetExecutionContext, factory: FactoryResource):
        fx = factory.factory(_progress(context))
        batch_id = context.partition_key
        try:
            spec = fx.spec(dataset)
            out = P.final_labels(fx, dataset, batch_id, context.run_id)
        except NotReadyError as e:
            yield _waiting(context, final_key, e)
            return
        except FactoryError as e:
            raise _fail(e) from None
        routes = P.read_table(fx, "routing", dataset, batch_id)
        # excluded items get no label, by design; deferred ones have none yet (counted, never released)
        deferred = out["source"] == "deferred"
        n_items = int((routes["route"] != "excluded").sum()) - int(deferred.sum())
        with _progress(context).work("check final labels", int((~deferred).sum()), "rows"):
            outcome = validate(out[~deferred], "final_labels", {"classes": spec.class_names, "n_items": n_items},
                               standard=standard, task_type=spec.task_type)
        fx.ledger.record_check(dataset, batch_id, "final_labels", standard, outcome.success,
                               outcome.to_dict(), context.run_id)
        for o in outcome.blocking_failures:
            context.log.error(f"blocking expectation failed: {o.message()}")
        yield dg.MaterializeResult(
            asset_key=final_key,
            metadata={"items": len(out), "by_source": dg.MetadataValue.json(out["source"].value_counts().to_dict()),
                      "deferred": int(deferred.sum()),
                      "standard": standard, ANSWERS_SEEN: P.answer_count(fx, dataset, batch_id),
                      "path": str(fx.paths.table("final_labels", dataset, batch_id))},
            check_results=check_results(final_key, outcome))

    @dg.asset(key=key("batch_quality"), group_name="qa", partitions_def=parts, deps=[final_key],
              description="Measured quality of the batch: routing shares and the audit sample's agreement.")
    def batch_quality(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        fx = factory.factory()
        s = P.batch_summary(fx, dataset, context.partition_key)
        q = R.measure_batch(fx, dataset, context.partition_key)
        fx.ledger.record_check(dataset, context.partition_key, "batch_quality", q["standard"], q["passed"],
                               {"standard": q["standard"], "gates": q["gates"], "expectations": []}, context.run_id)
        m = q["measures"]
        audit = (m.get("audit") or {}).get("accuracy") or {}
        labelers = (m.get("agreement") or {}).get("labelers") or {}
        meta = {k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in s.items() if v is not None}
        meta |= {"standard": q["standard"], "merkle_root": q["merkle_root"], "events": q["events"],
                 "audit_accuracy": dg.MetadataValue.json(audit), "completeness": m["completeness"]["estimate"],
                 "machine_people_kappa": (m.get("machine_vs_people") or {}).get("cohen_kappa"),
                 "labelers_fleiss_kappa": labelers.get("fleiss_kappa"),
                 "labelers_krippendorff_alpha": labelers.get("krippendorff_alpha"),
                 "gates": dg.MetadataValue.json(q["gates"]), "gates_passed": q["passed"]}
        cal = m.get("calibration") or {}
        for name, c in (("verified", cal.get("verified")), ("audit", cal.get("audit")),
                        ("verified_raw", cal.get("verified_raw"))):
            if c and c.get("n"):  # ECE of the machine's confidence vs people's (or gold) labels, with its n
                meta[f"ece_{name}"] = c["ece"]
                meta[f"ece_{name}_n"] = c["n"]
        if (cal.get("verified") or {}).get("n"):
            meta["calibration"] = dg.MetadataValue.json(cal)
            meta["reliability_diagram"] = dg.MetadataValue.md(reliability_table(cal))
        # the batch's Merkle root over its ledger events is its data version: any new or changed event changes it
        return dg.MaterializeResult(data_version=dg.DataVersion(q["merkle_root"][:16]),
                                    metadata={k: v for k, v in meta.items() if v is not None})

    @dg.asset(key=key("dataset_release"), group_name="release", deps=[final_key],
              description="An immutable, versioned release folder of every batch that passed its blocking checks.")
    def dataset_release(context: dg.AssetExecutionContext, factory: FactoryResource) -> dg.MaterializeResult:
        try:
            rel = R.release(factory.factory(_progress(context)), dataset, run_id=context.run_id)
        except FactoryError as e:
            raise _fail(e) from None
        return dg.MaterializeResult(
            data_version=dg.DataVersion(rel["version"]),
            metadata={"version": rel["version"], "path": rel["path"], "items": rel["items"],
                      "bump": rel["bump"], "batches": dg.MetadataValue.json(rel["batches"]),
                      "manifest_sha256": rel["manifest_sha256"], "content_id": rel["content_id"],
                      "standard": rel["standard"], "quality_passed": rel["quality_passed"],
                      "merkle_roots": dg.MetadataValue.json(rel["merkle_roots"])})

    return [dataset_spec, raw_items, initial_tasks, labelers, model_predictions, fused_labels, review_tasks,
            final_labels, batch_quality, dataset_release]


PREPARE = ("dataset_spec", "raw_items", "initial_tasks")
ANNOTATE = ("labelers", "model_predictions", "fused_labels", "review_tasks")
FINALISE = ("final_labels", "batch_quality")
RELEASE = ("dataset_release",)


def stage_keys(dataset: str, names: tuple[str, ...]) -> list[dg.AssetKey]:
    return [dg.AssetKey([dagster_name(dataset), n]) for n in names]

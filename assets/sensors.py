"""Sensors, schedules and stage jobs of one dataset: the factory runs itself, nobody types a command.

* `<ds>_inbox` (sensor): a file dropped in `<root>/inbox/<dataset>/` is ingested *in the sensor* (so the
  batch id, the partition key, is known and a bad file is refused at once) and becomes a dynamic
  partition plus a `prepare` run whose `run_key` is the file's sha256: a file is processed once, even
  if the tick is repeated after a crash (the ledger already knows the content, the run key is the same).
  Refused files (`..` names, symlinks out of the inbox, archives, malformed content) are never moved:
  their reason is written to `inbox/<dataset>/.rejected/<name>.json` and logged.  Write files under a
  name starting with '.' and rename them when complete: dot-files are not read.
* `<ds>_seeded` (sensor): once no seed task of the dataset is open, every batch prepared but not yet
  routed gets an `annotate` run (labelers, predictions, fusion, routing); run key per batch and number of
  human labels, so new seed answers allow a new attempt.
* `<ds>_review_complete` (sensor): a routed batch (its `review_tasks` partition materialised, which Dagster
  records only after the routing table and the tasks are both written) whose tasks are all answered gets
  `final_labels` and `batch_quality` materialised; run key per batch and answer count.  A run killed
  mid-stage keeps its run key; the daemon's run retries (deploy/dagster.yaml) rerun it.
* `<ds>_nightly_release` (schedule, 02:00 UTC): releases when batches that passed their blocking checks
  exist beyond the latest release; skips with the reason otherwise.

All start RUNNING.  Stage jobs carry a RetryPolicy: unexpected errors (a dropped database connection)
are retried, failed checks and refusals are not (those raise Failure(allow_retries=False)).  Waiting for
people is not a failure: the step succeeds without materialising (an observation says what waits), so a
run that stops for people is green, and red always means something broke.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from assets.batch import ANNOTATE, ANSWERS_SEEN, FINALISE, PREPARE, RELEASE, dagster_name, partitions_for, stage_keys
from assets.resources import FactoryResource
from factory.errors import FactoryError
from factory.ingest import SUPPORTED, inbox_path, ingest, sha256_file
from factory.pipeline import answer_count
from factory.progress import LogLines

INBOX = "inbox"
REJECTED = ".rejected"
SENSOR_INTERVAL = int(os.environ.get("FACTORY_SENSOR_INTERVAL", "30"))
RELEASE_CRON = os.environ.get("FACTORY_RELEASE_CRON", "0 2 * * *")
STEP_RETRIES = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


def inbox_dir(root: str | Path, dataset: str) -> Path:
    """Where files for `dataset` are dropped: <root>/inbox/<dataset>/."""
    return Path(root) / INBOX / dataset


def job_name(dataset: str, stage: str) -> str:
    return f"{dagster_name(dataset)}_{stage}"


def build_dataset_jobs(dataset: str) -> dict[str, dg.UnresolvedAssetJobDefinition]:
    """One asset job per stage (prepare, annotate, finalise partitioned by batch; release not)."""
    parts = partitions_for(dataset)
    stages = {"prepare": PREPARE, "annotate": ANNOTATE, "finalise": FINALISE}
    jobs = {s: dg.define_asset_job(job_name(dataset, s), selection=stage_keys(dataset, names), partitions_def=parts,
                                   op_retry_policy=STEP_RETRIES, tags={"factory/stage": s, "factory/dataset": dataset})
            for s, names in stages.items()}
    jobs["release"] = dg.define_asset_job(job_name(dataset, "release"), selection=stage_keys(dataset, RELEASE),
                                          op_retry_policy=STEP_RETRIES,
                                          tags={"factory/stage": "release", "factory/dataset": dataset})
    return jobs


def _reject(inbox: Path, name: str, reason: str, log) -> None:
    folder = inbox / REJECTED
    folder.mkdir(exist_ok=True)
    safe = name.replace("/", "_").replace("..", "_")
    (folder / f"{safe}.json").write_text(json.dumps({"file": name, "reason": reason}, ensure_ascii=False, indent=1))
    log.warning(f"inbox: refused {name}: {reason}")


def scan_inbox(fx, dataset: str, seen: dict[str, str], log) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """Ingest new inbox entries; returns ([(name, sha256, batch_id)], updated seen-map name -> stat key)."""
    inbox = inbox_dir(fx.paths.root, dataset)
    if not inbox.is_dir():
        return [], seen
    spec = fx.spec(dataset)
    new_seen = dict(seen)
    accepted = []
    for entry in sorted(os.scandir(inbox), key=lambda e: e.name):
        name = entry.name
        if name.startswith("."):
            continue  # rejected reasons, files still being written (.part, .tmp)
        st = entry.stat(follow_symlinks=False)
        stat_key = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        if seen.get(name) == stat_key:
            continue
        new_seen[name] = stat_key
        try:
            path = inbox_path(inbox, name)
            if path.is_file() and path.suffix.lower() not in SUPPORTED:
                from factory.ingest import read_source

                read_source(path, spec)  # raises the precise refusal (archive, unknown type)
            sha = sha256_file(path) if path.is_file() else None
            known = fx.ledger.batch_by_source(dataset, sha) if sha else None
            if known:  # ingested by an earlier tick that did not finish: request its run again
                accepted.append((name, sha, known["batch_id"]))
                continue
            rep = ingest(path, spec, fx.ledger, LogLines(log.info))  # start/end/counts in the sensor log
            accepted.append((name, rep.sha256, rep.batch_id))
            log.info(rep.summary())
        except FactoryError as e:
            _reject(inbox, name, str(e), log)
    return accepted, new_seen


def _routed(instance: dg.DagsterInstance, dataset: str) -> set[str]:
    """Batches whose review_tasks step finished: its materialisation is recorded only after the routing
    table *and* the tasks are written, so a run killed between the two is not taken for a routed batch."""
    return instance.get_materialized_partitions(dg.AssetKey([dagster_name(dataset), "review_tasks"]))


def _finalised_with(instance: dg.DagsterInstance, dataset: str, batch_id: str) -> int | None:
    """The answer count the batch's latest final_labels materialisation was computed from (None: never
    finalised, or by a version that did not record it).  Whoever materialised it (`factory run`, the demo,
    an earlier sensor run), a batch whose answers have not changed since is not finalised again."""
    recs = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey([dagster_name(dataset), "final_labels"]),
                              asset_partitions=[batch_id]), limit=1).records
    if not recs:
        return None
    value = recs[0].asset_materialization.metadata.get(ANSWERS_SEEN) if recs[0].asset_materialization else None
    return int(value.value) if value is not None else None


def build_dataset_sensors(dataset: str, jobs: dict | None = None) -> list:
    """The inbox, seeded and review-complete sensors and the nightly release schedule of one dataset."""
    dn = dagster_name(dataset)
    parts = partitions_for(dataset)
    jobs = jobs or build_dataset_jobs(dataset)

    @dg.sensor(name=f"{dn}_inbox", job=jobs["prepare"], minimum_interval_seconds=SENSOR_INTERVAL,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Files dropped in inbox/{dataset}/ become batches (partitions) and prepare runs.")
    def inbox_sensor(context: dg.SensorEvaluationContext, factory: FactoryResource):
        fx = factory.factory()
        seen = json.loads(context.cursor) if context.cursor else {}
        accepted, seen = scan_inbox(fx, dataset, seen, context.log)
        if not accepted:
            return dg.SensorResult(skip_reason=f"no new file in {inbox_dir(fx.paths.root, dataset)}",
                                   cursor=json.dumps(seen, sort_keys=True))
        existing = set(context.instance.get_dynamic_partitions(parts.name))
        new_parts = sorted({b for _, _, b in accepted} - existing)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=sha, partition_key=b,
                                        tags={"factory/source_file": name, "factory/source_sha256": sha})
                          for name, sha, b in accepted],
            dynamic_partitions_requests=[parts.build_add_request(new_parts)] if new_parts else [],
            cursor=json.dumps(seen, sort_keys=True))

    @dg.sensor(name=f"{dn}_seeded", job=jobs["annotate"], minimum_interval_seconds=SENSOR_INTERVAL,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="When no seed task is open, prepared batches are pre-labelled, fused and routed.")
    def seeded_sensor(context: dg.SensorEvaluationContext, factory: FactoryResource):
        fx = factory.factory()
        tasks = fx.ledger.tasks(dataset)
        open_seed = int(((tasks["kind"] == "seed") & (tasks["status"] == "open")).sum()) if not tasks.empty else 0
        if open_seed:
            return dg.SkipReason(f"waiting for people: {open_seed} seed task(s) of '{dataset}' are open")
        n_human = int((tasks["status"] == "answered").sum()) if not tasks.empty else 0
        existing = set(context.instance.get_dynamic_partitions(parts.name))
        routed = _routed(context.instance, dataset)
        todo = [b for b in fx.ledger.batches(dataset)["batch_id"]
                if b in existing and b not in routed and fx.paths.table("raw_items", dataset, b).exists()]
        if not todo:
            return dg.SkipReason("no prepared batch waits for pre-labelling")
        return [dg.RunRequest(run_key=f"annotate:{b}:{n_human}", partition_key=b) for b in todo]

    @dg.sensor(name=f"{dn}_review_complete", job=jobs["finalise"], minimum_interval_seconds=SENSOR_INTERVAL,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="A routed batch whose tasks are all answered gets final_labels and batch_quality.")
    def review_complete_sensor(context: dg.SensorEvaluationContext, factory: FactoryResource):
        fx = factory.factory()
        tasks = fx.ledger.tasks(dataset)
        existing = set(context.instance.get_dynamic_partitions(parts.name))
        routed = _routed(context.instance, dataset)
        requests = []
        for b in fx.ledger.batches(dataset)["batch_id"]:
            if b not in existing or b not in routed:
                continue
            bt = tasks[tasks["batch_id"] == b] if not tasks.empty else tasks
            if len(bt) and (bt["status"] == "open").any():
                continue
            # the answer count is in the key: a correction or late answer finalises the batch again
            n_answers = answer_count(fx, dataset, b)
            if _finalised_with(context.instance, dataset, b) == n_answers:
                continue  # settled work: final labels already computed from exactly these answers
            requests.append(dg.RunRequest(run_key=f"finalise:{b}:{n_answers}", partition_key=b))
        return requests or dg.SkipReason("no routed batch has all its tasks answered")

    @dg.schedule(name=f"{dn}_nightly_release", job=jobs["release"], cron_schedule=RELEASE_CRON,
                 execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Nightly: a new release when batches that passed their blocking checks are not released yet.")
    def nightly_release(context: dg.ScheduleEvaluationContext, factory: FactoryResource):
        from factory.release import _ready_batches, latest_release

        fx = factory.factory()
        try:
            ready, pending = _ready_batches(fx, dataset)
        except FactoryError as e:
            return dg.SkipReason(str(e))
        prev = latest_release(fx, dataset)
        released = set(json.loads(prev["batches"])) if prev else set()
        new = sorted(set(ready) - released)
        if not new:
            return dg.SkipReason(f"no approved batch of '{dataset}' since release "
                                 f"{prev['version'] if prev else '(none)'}; {len(pending)} pending")
        key = hashlib.sha256("|".join(sorted(ready)).encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=f"release:{key}", tags={"factory/new_batches": ",".join(new)})

    return [inbox_sensor, seeded_sensor, review_complete_sensor, nightly_release]

"""Run stages of a dataset's asset graph in-process on a Dagster instance (CLI, demo and tests use it)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from assets.batch import ANNOTATE, FINALISE, PREPARE, RELEASE, WAITING, build_dataset_assets, partitions_for, stage_keys
from assets.resources import FactoryResource

STAGES = {"prepare": PREPARE, "annotate": ANNOTATE, "finalise": FINALISE, "release": RELEASE}


def instance_for(root: Path) -> dg.DagsterInstance:
    """The Dagster instance of a factory root: $DAGSTER_HOME, else <root>/dagster_home."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(root / "dagster_home")
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    conf = Path(home) / "dagster.yaml"
    if not conf.exists():
        conf.write_text("telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.get()


def add_batch_partition(instance: dg.DagsterInstance, dataset: str, batch_id: str) -> None:
    """Register a batch as a dynamic partition of the dataset's assets."""
    instance.add_dynamic_partitions(partitions_for(dataset).name, [batch_id])


@dataclass
class StageResult:
    """What one stage run did.  `success` is the Dagster run's (a run that waits for people succeeds);
    `waiting_for` holds what the stage waits for, `failures` what broke."""

    stage: str
    success: bool
    run_id: str
    failures: list[str]
    failed_checks: list[str]
    waiting_for: list[str] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        """True when a step stopped because people must answer first (the run itself succeeded)."""
        return bool(self.waiting_for)

    @property
    def complete(self) -> bool:
        """Every step of the stage materialised, nothing failed and nothing waits."""
        return self.success and not self.waiting_for

    @property
    def refused(self) -> bool:
        """A release refused by a blocking gate (factory.errors.ReleaseRefused): nothing was written."""
        return self.stage == "release" and any(" REFUSED (nothing was written)" in f for f in self.failures)


def run_stage(root: Path, dataset: str, stage: str, instance: dg.DagsterInstance,
              batch_id: str | None = None, log_level: str = "CRITICAL") -> StageResult:
    """Materialise one stage (prepare, annotate, finalise, release) of a dataset for one batch."""
    assets = build_dataset_assets(dataset, str(root))
    keys = stage_keys(dataset, STAGES[stage])
    res = dg.materialize(assets, selection=keys, instance=instance, partition_key=batch_id if stage != "release" else None,
                         resources={"factory": FactoryResource(root=str(root))}, raise_on_error=False,
                         tags={"factory/stage": stage, "factory/dataset": dataset},
                         run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
    failures, waiting = [], []
    for ev in res.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            err = ev.event_specific_data.error
            desc = getattr(ev.event_specific_data, "user_failure_data", None)
            failures.append((desc.description if desc and desc.description else None) or (err.message if err else "failed"))
        elif ev.event_type_value == "ASSET_OBSERVATION":
            meta = ev.event_specific_data.asset_observation.metadata
            if WAITING in meta:
                waiting.append(str(meta[WAITING].value))
    failed_checks = [f"{e.asset_check_key.asset_key.to_user_string()}:{e.asset_check_key.name}"
                     for e in res.get_asset_check_evaluations() if not e.passed]
    return StageResult(stage, res.success and not failures, res.run_id, failures, failed_checks, waiting)

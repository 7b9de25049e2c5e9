"""The factory's Dagster Definitions, built in one place: one asset lane per dataset spec found."""
from __future__ import annotations

import os

import dagster as dg

from assets.batch import build_dataset_assets
from assets.resources import FactoryResource
from assets.sensors import build_dataset_jobs, build_dataset_sensors
from factory.pipeline import Factory


def _executor() -> dg.ExecutorDefinition:
    """$FACTORY_EXECUTOR: multiprocess (default), celery (dagster-celery) or k8s (dagster-k8s), see deploy/."""
    kind = os.environ.get("FACTORY_EXECUTOR", "multiprocess")
    if kind == "celery":
        from dagster_celery import celery_executor  # installed on scale-out hosts only

        return celery_executor
    if kind == "k8s":
        from dagster_k8s import k8s_job_executor  # installed in the cluster image only

        return k8s_job_executor
    return dg.multiprocess_executor.configured({"max_concurrent": int(os.environ.get("FACTORY_MAX_STEPS", "4"))})


# steps of one run in parallel processes; several runs at once are bounded by the run coordinator
# (deploy/dagster.yaml).  Tables are one Parquet file per partition, so no DuckDB writer pool is needed.
EXECUTOR = _executor()


def build_definitions(root: str | None = None) -> dg.Definitions:
    """Definitions for every dataset under the factory root (datasets/*.yaml)."""
    fx = Factory.at(root)
    assets: list = []
    jobs: list = []
    sensors: list = []
    schedules: list = []
    for name in fx.datasets():
        assets.extend(build_dataset_assets(name, str(fx.paths.root)))
        dataset_jobs = build_dataset_jobs(name)
        jobs.extend(dataset_jobs.values())
        for s in build_dataset_sensors(name, dataset_jobs):
            (schedules if isinstance(s, dg.ScheduleDefinition) else sensors).append(s)
    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, schedules=schedules, executor=EXECUTOR,
                          resources={"factory": FactoryResource(root=str(fx.paths.root))})


defs = build_definitions()

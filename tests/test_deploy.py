"""deploy/ stays honest: the Kubernetes and Celery configuration is validated against the real libraries'
schemas (dagster-k8s, dagster-celery), and every name a manifest uses is defined by a manifest.

Nothing here starts a cluster: README says what was run (Celery, tests/test_celery.py) and what was only
validated (Kubernetes, this file)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"


def _instance_config(tmp_path, monkeypatch, text: str) -> dict:
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://dagster@db:5432/dagster")
    monkeypatch.setenv("FACTORY_IMAGE", "registry.example/factory:1")
    cfg, _ = dagster_instance_config(str(tmp_path))
    return cfg


def _launcher_errors(config: dict) -> list[str]:
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    res = process_config(K8sRunLauncher.config_type(), config)
    return [] if res.success else [e.message for e in res.errors]


def test_k8s_instance_yaml_loads_and_its_run_launcher_config_passes_the_schema(tmp_path, monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed: pip install -e '.[test]'")
    cfg = _instance_config(tmp_path, monkeypatch, (K8S / "dagster.yaml").read_text())
    launcher = cfg["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert _launcher_errors(launcher["config"]) == []
    # the schema check is real: a launcher config without a required entry or with a wrong type fails
    broken = {k: v for k, v in launcher["config"].items() if k != "instance_config_map"}
    assert any("instance_config_map" in e for e in _launcher_errors(broken))
    assert _launcher_errors(launcher["config"] | {"job_namespace": 3})


def _manifests() -> list[dict]:
    docs = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name in ("dagster.yaml", "kustomization.yaml"):
            continue
        docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return docs


def test_k8s_manifests_parse_and_define_every_name_they_use():
    docs = _manifests()
    assert all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs}
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                if p.name not in ("dagster.yaml", "kustomization.yaml"))
    for gen in kust.get("configMapGenerator", []):
        defined.add(("ConfigMap", gen["name"]))
        assert all((K8S / f).exists() for f in gen["files"])
    launcher = yaml.safe_load((K8S / "dagster.yaml").read_text())["run_launcher"]["config"]
    used = {("Secret", s) for s in launcher["env_secrets"]} | {("ConfigMap", c) for c in launcher["env_config_maps"]}
    used |= {("ConfigMap", launcher["instance_config_map"]), ("ServiceAccount", launcher["service_account_name"])}
    used |= {("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) for v in launcher["volumes"]
             if "persistentVolumeClaim" in v}
    assert used - defined == set(), f"used by deploy/k8s/dagster.yaml but defined by no manifest: {used - defined}"
    # every database URL the instance and the factory read comes from the Secret the run pods get
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] in launcher["env_secrets"])
    assert {"DAGSTER_POSTGRES_URL", "FACTORY_DATABASE_URL"} <= set(secret["stringData"])
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in launcher["env_config_maps"])
    assert env["data"]["FACTORY_HOME"] in {m["mountPath"] for m in launcher["volume_mounts"]}


def test_celery_run_config_passes_the_executor_schema_and_names_the_workers_queue():
    pytest.importorskip("dagster_celery", reason="dagster-celery is not installed: pip install -e '.[test]'")
    from dagster._config import process_config
    from dagster_celery.executor import CELERY_CONFIG

    text = (REPO / "deploy" / "celery" / "run_config.yaml").read_text()
    conf = yaml.safe_load(text)["execution"]["config"]
    res = process_config(CELERY_CONFIG, {**conf, "broker": "amqp://x", "backend": "redis://x"})
    assert res.success, [e.message for e in res.errors]
    # the queue the documented worker command listens on is the one the steps are sent to
    queue = conf["config_source"]["task_default_queue"]
    assert f"-q {queue}" in text


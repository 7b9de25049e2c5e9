"""`factory demo`: the whole flow on BBC News with simulated reviewers, through the real asset graph."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from assets.runner import add_batch_partition, instance_for, run_stage
from factory.datasets import load_bbc_news
from factory.ingest import ingest, item_id_for
from factory.pipeline import Factory, read_table
from factory.pipeline import batch_summary, needs_finalise
from factory.simulate import SimulatedPool
from factory.workforce import Workforce

DATASET = "bbc-news"
MARKER = ".factory-demo"
DEFINITIONS = {
    "business": "Companies, markets, the economy, trade and finance.",
    "entertainment": "Film, music, television, theatre, celebrities and the arts.",
    "politics": "Government, parties, elections, parliament and public policy.",
    "sports": "Sports events, athletes, teams and competitions.",
    "tech": "Technology, computing, the internet, gadgets and games.",
}


def demo_spec(seed_size: int, mode: str = "prelabel-human") -> dict:
    return {
        "name": DATASET,
        "description": "BBC News articles (2004-2005) labelled by topic: one of five sections.",
        "license": "CC-BY-4.0",
        "task": {"type": "classification", "input": "text", "metadata": []},
        "classes": [{"name": k, "definition": v} for k, v in DEFINITIONS.items()],
        "guideline": {"version": "1.0", "text": "Pick the section an editor would file the article under."},
        "mode": mode,
        "seed": {"size": seed_size},
        "quality": {"confidence_threshold": 0.9, "audit_rate": 0.02, "bias_ratio": 2.0, "min_accuracy": 0.9,
                    "max_quarantine_rate": 0.1},
        "review": {"budget": 0.5},
        "splits": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "compliance": {"class": "general", "personal_information": []},
        "human_model": {"overlap": 2, "flag_tier": "L2"},
        "prelabel_model": {"accept_confidence": 0.8, "on_disagreement": "to-human", "audit_rate": 0.01},
        "workforce": {"gold_rate": 0.02},
    }


def prepare_root(root: Path) -> None:
    """Start from an empty demo folder; refuse to wipe a folder the demo did not create."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(f"{root}: exists and is not a demo folder; choose another --root")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("created by `factory demo`; deleted and rebuilt by the next demo run\n")


def run_demo(root: Path, batches: int = 2, limit: int | None = None, seed_size: int = 100, seed: int = 0,
             mode: str = "prelabel-human", progress: Callable[[str], None] = print) -> dict:
    """Design -> ingest -> pre-label -> route -> simulated review -> checks -> release; returns the summary."""
    t0 = time.time()
    root = root.resolve()
    prepare_root(root)
    (root / "datasets").mkdir()
    (root / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(demo_spec(seed_size, mode), sort_keys=False))
    fx = Factory.at(root)
    instance = instance_for(root)
    news = load_bbc_news(seed=seed)
    if limit:
        news = news.iloc[:limit]
    truth = {item_id_for(t): lab for t, lab in zip(news["text"], news["label"])}
    pool = SimulatedPool(truth, seed=seed)
    pool.register(Workforce(fx.ledger))
    progress(f"[demo] {len(news)} BBC News articles in {batches} batch(es); {pool.noise_model}")
    inbox = root / "inbox"
    inbox.mkdir()
    spec = fx.spec(DATASET)
    batch_ids, human_answers = [], 0
    for i, chunk in enumerate(_chunks(news, batches)):
        path = inbox / f"bbc-news-part{i + 1}.csv"
        chunk[["text"]].to_csv(path, index=False)
        rep = ingest(path, spec, fx.ledger)
        add_batch_partition(instance, DATASET, rep.batch_id)
        batch_ids.append(rep.batch_id)
        progress(f"[demo] ingested {path.name}: {rep.items} items, {rep.duplicates_within + rep.duplicates_across} "
                 f"duplicates, {len(rep.quarantined)} quarantined -> batch {rep.batch_id}")
        for stage in ("prepare", "annotate", "finalise"):
            for _round in range(5):  # people answer what each run opened, then the stage runs again
                r = run_stage(root, DATASET, stage, instance, rep.batch_id)
                if not r.waiting:
                    break
                n = pool.answer_open_tasks(fx.ledger, spec)
                human_answers += n
                progress(f"[demo]   {stage}: waiting for people -> {n} simulated answers")
            if not r.success:
                raise RuntimeError(f"stage {stage} of batch {rep.batch_id} failed: {r.failures or r.failed_checks}")
            # people answer what the stage opened: seed/first labels after prepare, review tasks after annotate
            n = pool.answer_open_tasks(fx.ledger, spec) if stage != "finalise" else 0
            human_answers += n
            what = {"prepare": "first labels (seed or every item)", "annotate": "routed items"}.get(stage)
            progress(f"[demo]   {stage}: ok ({time.time() - t0:.0f}s)" + (f"; {n} simulated answers: {what}" if n else ""))
        if i == 0 and batches > 1:
            # an expert sets up gold items from the first batch: honeypots for the next batches' queues
            first = read_table(fx, "final_labels", DATASET, rep.batch_id)["item_id"].head(30)
            Workforce(fx.ledger).add_gold(DATASET, {it: truth[it] for it in first}, source="simulated-expert")
    # a later batch's budget funded earlier batches' deferred items: people answered them, so those
    # batches are finalised again (what `factory run` does for a user)
    for b in [b for b in batch_ids if needs_finalise(fx, DATASET, b)]:
        for _round in range(5):
            r = run_stage(root, DATASET, "finalise", instance, b)
            if not r.waiting:  # a stage waiting for people succeeds too: success alone ends nothing
                break
            human_answers += pool.answer_open_tasks(fx.ledger, spec)
        if not r.success:
            raise RuntimeError(f"stage finalise of batch {b} failed: {r.failures or r.failed_checks}")
        progress(f"[demo] batch {b}: finalised again with its funded deferred items ({time.time() - t0:.0f}s)")
    r = run_stage(root, DATASET, "release", instance)
    if not r.success:
        raise RuntimeError(f"release failed: {r.failures or r.failed_checks}")
    rel = fx.ledger.releases(DATASET).iloc[-1]
    final = pd.concat([read_table(fx, "final_labels", DATASET, b) for b in batch_ids], ignore_index=True)
    final["gold"] = final["item_id"].map(truth)
    labelled = final[final["source"] != "deferred"]  # deferred items have no label: counted, not scored
    summaries = [batch_summary(fx, DATASET, b) for b in batch_ids]
    paths: dict[str, int] = {}
    for sm in summaries:
        for k, v in sm["paths"].items():
            paths[k] = paths.get(k, 0) + int(v)
    n = int(sum(sm["items"] for sm in summaries))
    auto = paths.get("auto", 0) + paths.get("verified", 0)  # accepted without a person looking
    effort = people_effort(fx, batch_ids)
    summary = {
        "simulated": True,
        "noise_model": pool.noise_model,
        "dataset": DATASET,
        "mode": mode,
        "batches": batch_ids,
        "items": n,
        "paths": paths,
        "auto_accepted": round(auto / n, 4),
        "routed": round(1 - auto / n, 4),
        "deferred": int(paths.get("deferred", 0)),
        "audit_sample": int(sum(sm["audit_sample"] for sm in summaries)),
        "human_answers": human_answers,
        **effort,
        "human_minutes": round(sum(sm["human_minutes"] for sm in summaries), 1),
        "accuracy": round(float((labelled["label"] == labelled["gold"]).mean()), 4),
        "accuracy_auto_accepted": round(float((final.loc[final.source == "auto", "label"]
                                               == final.loc[final.source == "auto", "gold"]).mean()), 4)
        if (final.source == "auto").any() else None,
        "accuracy_models_only": round(float((final["fused_label"] == final["gold"]).mean()), 4),
        "release_version": rel["version"],
        "release_path": rel["path"],
        "dagster_home": str(Path(instance.root_directory)),
        "seconds": round(time.time() - t0, 1),
        "dagster_ui": f"FACTORY_HOME={root} DAGSTER_HOME={instance.root_directory} "
                      f".venv/bin/dagster dev -w workspace.yaml",
    }
    return summary


def people_effort(fx: Factory, batch_ids: list[str]) -> dict:
    """Where people's work went: answered tasks per kind (seed, audit, review, second, arbitrate, gold, ...)
    and the items people decided (annotated, calibrated, arbitrated) per routing decision, with their share."""
    tasks = fx.ledger.tasks(DATASET)
    done = tasks[tasks["status"] == "answered"] if not tasks.empty else tasks
    routes = pd.concat([read_table(fx, "routing", DATASET, b) for b in batch_ids], ignore_index=True)
    final = pd.concat([read_table(fx, "final_labels", DATASET, b) for b in batch_ids], ignore_index=True)
    people = final.loc[final["source"].isin(["annotated", "calibrated", "arbitrated"]), "item_id"]
    by_route = routes.loc[routes["item_id"].isin(people), "route"].value_counts()
    return {"answers_by_task": {str(k): int(v) for k, v in done["kind"].value_counts().items()},
            "people_items": int(len(people)),
            "people_items_share": round(len(people) / max(len(routes), 1), 4),
            "people_items_by_route": {str(k): int(v) for k, v in by_route.items()}}


def _chunks(df: pd.DataFrame, n: int):
    size = -(-len(df) // n)
    for i in range(n):
        part = df.iloc[i * size:(i + 1) * size]
        if len(part):
            yield part

"""Where people's work goes in a `factory demo --mode prelabel-model` run, and what a clean seed would save.

    factory demo --root /tmp/pm --mode prelabel-model --json > pm.json
    PYTHONPATH=. python -m benchmarks.prelabel_effort /tmp/pm

Reads the demo's ledger and tables (the reviewers are SIMULATED; the truth is the corpus's topic and is used
to score only). Prints, per batch: answered tasks per kind and first reason, how often the fused label and the
verifier were right on each route, and, for the first batch, the routes prelabel-model would take if its labelers
had learnt from the same seed items with their true labels instead of the people's single answers (an upper
bound on what checking the seed could save; nothing here changes what the factory does).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from factory.datasets import load_bbc_news
from factory.ingest import item_id_for
from factory.pipeline import Factory, read_table
from factory.routing_policy import prelabel_model_routes, prob_cols, verifier_name

DATASET = "bbc-news"


def _first_reason(r) -> str:
    r = json.loads(r) if isinstance(r, str) else list(r)
    return r[0] if r else ""


def main(root: str) -> dict:
    fx = Factory.at(root)
    spec = fx.spec(DATASET)
    classes = spec.class_names
    news = load_bbc_news(seed=0)
    truth = {item_id_for(t): lab for t, lab in zip(news["text"], news["label"])}
    tasks = fx.ledger.tasks(DATASET)
    tasks = tasks[tasks["status"] == "answered"].assign(reason=lambda t: t["reasons"].map(_first_reason))
    batches = list(fx.ledger.batches(DATASET).sort_values("created_at")["batch_id"])
    out: dict = {"simulated": True, "batches": {}}
    for b in batches:
        preds = read_table(fx, "model_predictions", DATASET, b)
        ver = verifier_name(sorted(preds["labeler"].unique()))
        vlab = preds[preds["labeler"] == ver].set_index("item_id")["label"]
        r = read_table(fx, "routing", DATASET, b)
        gold = r["item_id"].map(truth)
        routes = {k: {"items": int(len(g)), "fused_right": round(float((g["label"] == gold[g.index]).mean()), 4),
                      "verifier_right": round(float((g["item_id"].map(vlab) == gold[g.index]).mean()), 4)}
                  for k, g in r.groupby("route")}
        t = tasks[tasks["batch_id"] == b]
        out["batches"][b] = {"answers": {f"{k}:{why}": int(n) for (k, why), n in t.groupby(["kind", "reason"]).size().items()},
                             "labeler_accuracy": {n: round(float((g["label"] == g["item_id"].map(truth)).mean()), 4)
                                                  for n, g in preds.groupby("labeler")},
                             "routes": routes}
    # the first batch again, its labelers trained on the seed items' true labels instead of the people's answers
    b = batches[0]
    items = read_table(fx, "raw_items", DATASET, b)
    r = read_table(fx, "routing", DATASET, b)
    seed_ids = r.loc[r["route"] == "seed", "item_id"]
    ev = fx.ledger.events(DATASET, kind="human")
    given = ev[ev["item_id"].isin(seed_ids)].sort_values("seq").groupby("item_id")["label"].first().reindex(seed_ids)
    rest = items[~items["item_id"].isin(seed_ids)]
    train = items.set_index("item_id").loc[seed_ids].reset_index()
    what_if = {"seed_accuracy": round(float((given.to_numpy() == seed_ids.map(truth).to_numpy()).mean()), 4)}
    for name, labels in (("people's seed", given.tolist()), ("true seed", seed_ids.map(truth).tolist())):
        frames = []
        for lb in spec.task_type.make_labelers(seed=0):
            if hasattr(type(lb), "cache_dir"):
                lb.cache_dir = fx.paths.data / "embeddings"
            lb.fit(train[["item_id", "text"]], labels, classes)
            p = lb.predict_proba(rest[["item_id", "text"]])
            f = pd.DataFrame(p, columns=prob_cols(classes))
            f.insert(0, "item_id", rest["item_id"].to_numpy())
            f.insert(1, "labeler", lb.info.name)
            f.insert(2, "label", np.asarray(classes, dtype=object)[p.argmax(1)])
            frames.append(f)
        routed = prelabel_model_routes(spec, pd.concat(frames, ignore_index=True), pd.Index(rest["item_id"]), seed=0,
                                       n_items=len(items))
        ok = routed["route"] != "review"
        what_if[name] = {"routes": routed["route"].value_counts().to_dict(),
                         "accepted_or_audited_right": round(float((routed["label"] == routed["item_id"].map(truth))[ok].mean()), 4)}
    out["first_batch_seed_what_if"] = what_if
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=1))

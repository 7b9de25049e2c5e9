"""Disputed items: what people did not resolve, the ground an expert arbitrates on (used by the gate and the workbench)."""
from __future__ import annotations

import json


def _json(text) -> object:
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text


def disputed_items(fx, dataset: str) -> list[dict]:
    """Items people did not resolve: their answers disagree; an audit answer contradicts the confident
    models; or a task was skipped and is still open.  Items arbitrated since their last answer drop out."""
    ev = fx.ledger.events(dataset, kind=["human", "correction", "retraction", "skip", "arbitration"])
    tasks = fx.ledger.tasks(dataset)
    kind_of = tasks.set_index("task_id")["kind"].to_dict()
    sugg = tasks.set_index("task_id")["suggestion"].to_dict()
    open_tasks = set(tasks.loc[tasks["status"] == "open", "task_id"])
    reasons_of = {t: _json(r) for t, r in zip(tasks["task_id"], tasks["reasons"])}
    arb_open = tasks[(tasks["status"] == "open") & (tasks["kind"] == "arbitrate")]
    open_arbitrate = arb_open.groupby("item_id")["task_id"].agg(list).to_dict() if len(arb_open) else {}
    gone = set(ev.loc[ev["kind"] == "retraction", "supersedes"].dropna())
    live = ev[ev["kind"].isin(["human", "correction"]) & ~ev["event_id"].isin(gone)]
    current = live.sort_values("seq").groupby("task_id").tail(1)
    last_arb = ev[ev["kind"] == "arbitration"].groupby("item_id")["seq"].max().to_dict()
    last_act = ev[ev["kind"].isin(["human", "correction", "skip"]) & (ev["payload"].map(
        lambda p: _json(p).get("source") != "arbitration"))].groupby("item_id")["seq"].max().to_dict()
    out = []
    groups = dict(list(ev.groupby("item_id")))
    for item_id in open_arbitrate:
        if item_id not in groups:
            groups[item_id] = tasks[tasks["item_id"] == item_id].assign(kind="task", seq=-1, payload="{}")
    for item_id, grp in groups.items():
        if item_id in last_arb and last_arb[item_id] > last_act.get(item_id, -1):
            continue
        why = []
        cur = current[current["item_id"] == item_id]
        if cur["label"].nunique() > 1:
            why.append("people disagree: " + ", ".join(f"{a} said {l}" for a, l in zip(cur["actor"], cur["label"])))
        for r in cur.itertuples():
            if kind_of.get(r.task_id) == "audit" and sugg.get(r.task_id) and sugg[r.task_id] != r.label:
                why.append(f"audit answer '{r.label}' contradicts the confident models ('{sugg[r.task_id]}')")
        for tid in open_arbitrate.get(item_id, []):
            why.append("open expert task: " + ", ".join(map(str, reasons_of.get(tid, []))))
        skips = grp[(grp["kind"] == "skip") & grp["task_id"].isin(open_tasks)]
        for r in skips.itertuples():
            why.append(f"skipped by {r.actor}: {_json(r.payload).get('reason', '')}")
        if why:
            out.append({"dataset": dataset, "item_id": item_id, "batch_id": grp["batch_id"].iloc[0], "why": why,
                        "gap_flagged": False, "last_seq": int(grp["seq"].max())})
    gaps = set(fx.ledger.events(dataset, kind="guideline_gap")["item_id"])
    for d in out:
        d["gap_flagged"] = d["item_id"] in gaps
    return sorted(out, key=lambda d: d["last_seq"])

"""How a task row is made, for every module that opens tasks (pipeline, workforce, guidelines).

Domain layer, no storage: the internal key of a task, its round number, the row the ledger's
`create_tasks` takes, and the order of the workforce tiers a task may require.
"""
from __future__ import annotations

import hashlib

TIER_RANK = {"L1": 0, "L2": 1, "L3": 2, "expert": 3}


def task_id_for(dataset: str, batch_id: str, item_id: str, kind: str) -> str:
    """The internal key of a task (deterministic: a rerun finds it); people see `Ledger.public_task_id(key)`."""
    return "k_" + hashlib.sha256(f"{dataset}|{batch_id}|{item_id}|{kind}".encode()).hexdigest()[:16]


def stable_round(*parts: str) -> int:
    """A task round number derived from the parts (stable across processes, unlike hash())."""
    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:6], 16) + 2


def max_tier(*tiers: str | None) -> str:
    """The highest of the given tiers (None ignored; L1 when none is given)."""
    return max((t for t in tiers if t), key=lambda t: TIER_RANK[t], default="L1")


def task_row(dataset: str, batch_id: str, item_id: str, kind: str, reasons: list[str], *, tier: str = "L1",
             suggestion: str | None = None, run_id: str | None = None, round_: int = 1,
             domain: str | None = None) -> dict:
    """A row for `Ledger.create_tasks`: round 1 keeps the kind as the key's last part, later rounds `kind#round`."""
    kid = kind if round_ == 1 else f"{kind}#{round_}"
    # keyed: the ledger turns the key into the unguessable public id when it creates the task
    return dict(task_id=task_id_for(dataset, batch_id, item_id, kid), keyed=True, dataset=dataset, batch_id=batch_id,
                item_id=item_id, kind=kind, reasons=reasons, suggestion=suggestion, run_id=run_id,
                required_tier=tier, domain=domain)

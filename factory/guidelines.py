"""Guideline questions: an expert marks an item a guideline gap; similar disputed items are listed;
bumping the guideline version in the spec re-queues them for people under the new rules."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import sqlalchemy as sa

from factory.errors import TaskError
from factory.storage.ledger import canonical, now
from factory.storage.tables import questions_table
from factory.task_rows import stable_round, task_row
from factory.workforce import Workforce

DISPUTE_KINDS = ("second", "verify", "arbitrate")


def disputed_items(fx, dataset: str) -> list[str]:
    """Items people disputed: second opinions, flagged verifications, arbitrations."""
    t = fx.ledger.tasks(dataset)
    return sorted(set(t.loc[t["kind"].isin(DISPUTE_KINDS), "item_id"])) if not t.empty else []


def similar_items(fx, dataset: str, item_id: str, candidates: list[str], top: int = 10) -> list[str]:
    """The candidates most similar to the item (TF-IDF cosine on their text)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    cands = [c for c in candidates if c != item_id]
    if not cands:
        return []
    texts = fx.ledger.items(dataset, item_ids=[item_id, *cands]).set_index("item_id")["text"]
    order = [i for i in [item_id, *cands] if i in texts.index]
    m = TfidfVectorizer(sublinear_tf=True).fit_transform(texts.loc[order].tolist())
    sims = (m[1:] @ m[0].T).toarray().ravel()
    best = np.argsort(-sims, kind="stable")[:top]
    return [order[1:][i] for i in best if sims[i] > 0]


def open_question(fx, dataset: str, item_id: str, expert: str, note: str) -> dict:
    """Record a guideline gap (ledger event + question listing similar disputed items)."""
    spec = fx.spec(dataset)
    wf = Workforce(fx.ledger)
    a = wf.get(expert)
    if a["tier"] != "expert":
        raise TaskError(f"'{expert}' is {a['tier']}; only an expert can mark a guideline gap")
    fx.ledger.flag_guideline_gap(dataset, item_id, expert, note, guideline_version=spec.guideline.version)
    sim = similar_items(fx, dataset, item_id, disputed_items(fx, dataset))
    q = dict(question_id="q_" + hashlib.sha256(f"{dataset}|{item_id}|{note}".encode()).hexdigest()[:12],
             dataset=dataset, item_id=item_id, expert=expert, note=note.strip(),
             guideline_version=spec.guideline.version, similar_items=canonical(sim), status="open",
             resolved_in=None, created_at=now())
    with fx.ledger.engine.begin() as c:
        if not c.execute(sa.select(questions_table.c.question_id).where(
                questions_table.c.question_id == q["question_id"])).first():
            c.execute(questions_table.insert().values(**q))
    return dict(q, similar_items=sim)


def questions(fx, dataset: str) -> pd.DataFrame:
    Workforce(fx.ledger)  # creates the tables on first use
    with fx.ledger.reader.connect() as c:
        return pd.DataFrame(c.execute(sa.select(questions_table).where(questions_table.c.dataset == dataset)
                                      .order_by(questions_table.c.created_at)).mappings().all(),
                            columns=[col.name for col in questions_table.c])


def requeue_on_bump(fx, dataset: str, run_id: str | None = None) -> list[dict]:
    """When the spec's guideline version differs from an open question's, re-queue its items for people."""
    spec = fx.spec(dataset)
    qs = questions(fx, dataset)
    qs = qs[(qs["status"] == "open") & (qs["guideline_version"] != spec.guideline.version)] if len(qs) else qs
    if qs.empty:
        return []
    rows = []
    for q in qs.itertuples(index=False):
        affected = [q.item_id, *json.loads(q.similar_items)]
        where = fx.ledger.items(dataset, item_ids=affected).set_index("item_id")["batch_id"]
        rows += [task_row(dataset, where[i], i, "requeue",
                          [f"guideline {q.guideline_version} -> {spec.guideline.version}: question {q.question_id}"],
                          tier="L2", run_id=run_id, round_=stable_round("guideline", spec.guideline.version))
                 for i in affected if i in where.index]
    fx.ledger.create_tasks(rows)
    with fx.ledger.engine.begin() as c:
        c.execute(questions_table.update().where(questions_table.c.question_id.in_(list(qs["question_id"])))
                  .values(status="requeued", resolved_in=spec.guideline.version))
    return rows

"""The ledger: batches, items, review tasks and every label event, append-only, through SQLAlchemy Core.

SQLite in WAL mode by default, the same code on PostgreSQL.  Label events are never updated: a
correction is a new event whose `supersedes` names the event it replaces.  Events of a dataset form
a hash chain (each event's hash covers its canonical content and the previous hash), so an edited or
deleted row is found by `verify_chain`.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from factory.errors import TaskError

metadata = sa.MetaData()

spec_versions = sa.Table(
    "spec_versions", metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("guideline_version", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
)

batches = sa.Table(
    "batches", metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(64), nullable=False, index=True),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),
    sa.Column("n_rows", sa.Integer, nullable=False),
    sa.Column("n_items", sa.Integer, nullable=False),
    sa.Column("n_duplicates", sa.Integer, nullable=False),
    sa.Column("n_quarantined", sa.Integer, nullable=False),
    sa.Column("spec_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.UniqueConstraint("dataset", "source_sha256", name="uq_batch_source"),
)

items = sa.Table(
    "items", metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("source_row", sa.Integer, nullable=False),
)

duplicates = sa.Table(
    "duplicates", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("source_row", sa.Integer, nullable=False),
    sa.Column("first_batch_id", sa.String(64), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),  # within | across
)

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("source_file", sa.Text, nullable=False),
    sa.Column("source_row", sa.Integer, nullable=False),
    sa.Column("field", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # seed | review | audit
    sa.Column("reasons", sa.Text, nullable=False),
    sa.Column("suggestion", sa.String(128)),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(64)),
)

label_events = sa.Table(
    "label_events", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(32), nullable=False, unique=True),
    sa.Column("dedup_key", sa.String(255), unique=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),  # model | fusion | human | correction | final
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("label", sa.String(128)),
    sa.Column("confidence", sa.Float),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("supersedes", sa.String(32)),
    sa.Column("spec_version", sa.String(32)),
    sa.Column("guideline_version", sa.String(64)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_events_item", "dataset", "item_id"),
    sa.Index("ix_events_batch_kind", "dataset", "batch_id", "kind"),
    sa.Index("ix_events_task", "task_id"),
)

chain_heads = sa.Table(
    "chain_heads", metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

check_results = sa.Table(
    "check_results", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=False),
    sa.Column("asset", sa.String(64), nullable=False),
    sa.Column("standard", sa.String(64), nullable=False),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("created_at", sa.String(32), nullable=False),
)

releases = sa.Table(
    "releases", metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("manifest_sha256", sa.String(64), nullable=False),
    sa.Column("n_items", sa.Integer, nullable=False),
    sa.Column("batches", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

GENESIS = "0" * 64
HASHED_FIELDS = ("event_id", "dataset", "batch_id", "item_id", "task_id", "kind", "actor", "label",
                 "confidence", "payload", "supersedes", "spec_version", "guideline_version", "run_id",
                 "created_at")


def now() -> str:
    """UTC timestamp, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def canonical(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for payloads and hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(prev_hash: str, row: dict) -> str:
    """The chain hash of one event: sha256 over the previous hash and the event's canonical content."""
    content = canonical({k: row.get(k) for k in HASHED_FIELDS})
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    # let SQLAlchemy emit BEGIN itself so that writers take the lock at the start (BEGIN IMMEDIATE)
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Ledger:
    """Append-only store of the factory's facts: batches, items, tasks, label events, checks, releases."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # writers take the write lock at BEGIN (IMMEDIATE) so two writers never deadlock on upgrade;
            # readers use a second engine with deferred transactions and never wait for a writer (WAL)
            self.engine = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
            self.reader = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(self.reader, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
            self.reader = self.engine
        from factory.db import ensure_schema  # SQLite upgrades itself; other databases must be at the head

        ensure_schema(self.engine, url, metadata)

    # ----------------------------------------------------------------- specs and batches
    def record_spec(self, dataset: str, version: str, guideline_version: str, body: dict) -> bool:
        """Store a spec version once; returns True when it is new."""
        with self.engine.begin() as c:
            hit = c.execute(sa.select(spec_versions.c.version).where(
                spec_versions.c.dataset == dataset, spec_versions.c.version == version)).first()
            if hit:
                return False
            c.execute(spec_versions.insert().values(dataset=dataset, version=version,
                                                    guideline_version=guideline_version,
                                                    body=canonical(body), recorded_at=now()))
            return True

    def batch_by_source(self, dataset: str, sha256: str) -> dict | None:
        with self.reader.connect() as c:
            row = c.execute(sa.select(batches).where(batches.c.dataset == dataset,
                                                     batches.c.source_sha256 == sha256)).mappings().first()
            return dict(row) if row else None

    def batch(self, batch_id: str) -> dict | None:
        with self.reader.connect() as c:
            row = c.execute(sa.select(batches).where(batches.c.batch_id == batch_id)).mappings().first()
            return dict(row) if row else None

    def batches(self, dataset: str | None = None) -> pd.DataFrame:
        q = sa.select(batches).order_by(batches.c.created_at)
        if dataset:
            q = q.where(batches.c.dataset == dataset)
        with self.reader.connect() as c:
            return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in batches.c])

    def known_items(self, dataset: str, item_ids: Iterable[str]) -> dict[str, str]:
        """Map of the given item ids already in the ledger to the batch that first brought them."""
        ids = list(item_ids)
        out: dict[str, str] = {}
        with self.reader.connect() as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for r in c.execute(sa.select(items.c.item_id, items.c.batch_id).where(
                        items.c.dataset == dataset, items.c.item_id.in_(chunk))):
                    out[r.item_id] = r.batch_id
        return out

    def add_batch(self, batch_row: dict, item_rows: Sequence[dict], duplicate_rows: Sequence[dict],
                  quarantine_rows: Sequence[dict]) -> None:
        """Write a batch and everything found in it in one transaction: all or nothing."""
        with self.engine.begin() as c:
            c.execute(batches.insert().values(**batch_row))
            if item_rows:
                c.execute(items.insert(), list(item_rows))
            if duplicate_rows:
                c.execute(duplicates.insert(), list(duplicate_rows))
            if quarantine_rows:
                c.execute(quarantine.insert(), list(quarantine_rows))

    def items(self, dataset: str, batch_id: str | None = None, item_ids: Sequence[str] | None = None) -> pd.DataFrame:
        q = sa.select(items).where(items.c.dataset == dataset).order_by(items.c.source_row, items.c.item_id)
        if batch_id:
            q = q.where(items.c.batch_id == batch_id)
        if item_ids is not None:
            q = q.where(items.c.item_id.in_(list(item_ids)))
        with self.reader.connect() as c:
            return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in items.c])

    def table(self, name: str, **where: Any) -> pd.DataFrame:
        """Rows of one ledger table filtered by equality on columns (read-only helper for reports)."""
        t = metadata.tables[name]
        q = sa.select(t)
        for k, v in where.items():
            q = q.where(t.c[k] == v)
        with self.reader.connect() as c:
            return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in t.c])

    # ----------------------------------------------------------------- label events
    def append_events(self, dataset: str, events: Sequence[dict]) -> int:
        """Append label events atomically, extending the dataset's hash chain.

        Events whose `dedup_key` is already present are skipped, so a rerun of a step adds nothing
        twice.  Returns the number of events written.
        """
        if not events:
            return 0
        with self.engine.begin() as c:
            return self._append(c, dataset, events)

    def _lock_head(self, c, dataset: str):
        """Lock the dataset's chain head for this transaction (SQLite: BEGIN IMMEDIATE did already)."""
        if c.dialect.name == "postgresql":
            # a row to lock must exist: two first writers would otherwise both insert the head
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            c.execute(pg_insert(chain_heads).values(dataset=dataset, seq=0, hash=GENESIS).on_conflict_do_nothing())
        return c.execute(sa.select(chain_heads).where(chain_heads.c.dataset == dataset).with_for_update()).first()

    def _append(self, c, dataset: str, events: Sequence[dict]) -> int:
        # the head lock comes first: concurrent appenders of a dataset queue on it, and the dedup check
        # below then sees every event they committed (PostgreSQL READ COMMITTED takes a new snapshot)
        head = self._lock_head(c, dataset)
        keys = [e["dedup_key"] for e in events if e.get("dedup_key")]
        existing: set[str] = set()
        for i in range(0, len(keys), 500):
            existing.update(r[0] for r in c.execute(sa.select(label_events.c.dedup_key).where(
                label_events.c.dedup_key.in_(keys[i:i + 500]))))
        prev = head.hash if head else GENESIS
        rows = []
        ts = now()
        seen: set[str] = set()
        for e in events:
            k = e.get("dedup_key")
            if k and (k in existing or k in seen):
                continue
            if k:
                seen.add(k)
            row = {
                "event_id": e.get("event_id") or uuid.uuid4().hex,
                "dedup_key": k,
                "dataset": dataset,
                "batch_id": e["batch_id"],
                "item_id": e["item_id"],
                "task_id": e.get("task_id"),
                "kind": e["kind"],
                "actor": e["actor"],
                "label": None if e.get("label") is None else str(e["label"]),
                "confidence": None if e.get("confidence") is None else round(float(e["confidence"]), 6),
                "payload": canonical(e.get("payload") or {}),
                "supersedes": e.get("supersedes"),
                "spec_version": e.get("spec_version"),
                "guideline_version": e.get("guideline_version"),
                "run_id": e.get("run_id"),
                "created_at": e.get("created_at") or ts,
                "prev_hash": prev,
            }
            row["hash"] = event_hash(prev, row)
            prev = row["hash"]
            rows.append(row)
        if not rows:
            return 0
        c.execute(label_events.insert(), rows)
        last_seq = c.execute(sa.select(sa.func.max(label_events.c.seq)).where(
            label_events.c.dataset == dataset)).scalar_one()
        if head:
            c.execute(chain_heads.update().where(chain_heads.c.dataset == dataset).values(seq=last_seq, hash=prev))
        else:
            c.execute(chain_heads.insert().values(dataset=dataset, seq=last_seq, hash=prev))
        return len(rows)

    def events(self, dataset: str, *, batch_id: str | None = None, item_id: str | None = None,
               kind: str | Sequence[str] | None = None) -> pd.DataFrame:
        q = sa.select(label_events).where(label_events.c.dataset == dataset).order_by(label_events.c.seq)
        if batch_id:
            q = q.where(label_events.c.batch_id == batch_id)
        if item_id:
            q = q.where(label_events.c.item_id == item_id)
        if kind:
            q = q.where(label_events.c.kind.in_([kind] if isinstance(kind, str) else list(kind)))
        with self.reader.connect() as c:
            return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in label_events.c])

    def verify_chain(self, dataset: str) -> dict:
        """Walk the dataset's hash chain; report the first broken link, if any."""
        prev, n = GENESIS, 0
        with self.reader.connect() as c:
            head = c.execute(sa.select(chain_heads).where(chain_heads.c.dataset == dataset)).first()
            for row in c.execute(sa.select(label_events).where(label_events.c.dataset == dataset)
                                 .order_by(label_events.c.seq)).mappings():
                if row["prev_hash"] != prev:
                    return {"ok": False, "events": n, "seq": row["seq"], "event_id": row["event_id"],
                            "problem": "previous-hash link broken (an event before it was deleted or edited)"}
                if event_hash(prev, dict(row)) != row["hash"]:
                    return {"ok": False, "events": n, "seq": row["seq"], "event_id": row["event_id"],
                            "problem": "content does not match its hash (the event was edited)"}
                prev = row["hash"]
                n += 1
        if (head.hash if head else GENESIS) != prev:
            return {"ok": False, "events": n, "seq": None, "event_id": None,
                    "problem": "the chain head does not match the last event (events at the end were deleted)"}
        return {"ok": True, "events": n, "head": prev}

    # ----------------------------------------------------------------- tasks and answers
    def create_tasks(self, task_rows: Sequence[dict]) -> int:
        """Create review tasks; a task id that exists already is left as it is (idempotent)."""
        if not task_rows:
            return 0
        ids = [t["task_id"] for t in task_rows]
        with self.engine.begin() as c:
            have: set[str] = set()
            for i in range(0, len(ids), 500):
                have.update(r[0] for r in c.execute(sa.select(tasks.c.task_id).where(
                    tasks.c.task_id.in_(ids[i:i + 500]))))
            new = [dict(t, reasons=canonical(t.get("reasons", [])), created_at=t.get("created_at") or now())
                   for t in task_rows if t["task_id"] not in have]
            if new:
                c.execute(tasks.insert(), new)
            return len(new)

    def tasks(self, dataset: str | None = None, batch_id: str | None = None,
              status: str | None = None) -> pd.DataFrame:
        """Tasks with their answer (status open/answered derives from the human events)."""
        ans = (sa.select(label_events.c.task_id, label_events.c.label.label("answer"),
                         label_events.c.actor.label("annotator"), label_events.c.event_id.label("answer_event"))
               .where(label_events.c.kind == "human").subquery())
        q = (sa.select(tasks, ans.c.answer, ans.c.annotator, ans.c.answer_event)
             .select_from(tasks.outerjoin(ans, ans.c.task_id == tasks.c.task_id))
             .order_by(tasks.c.created_at, tasks.c.task_id))
        if dataset:
            q = q.where(tasks.c.dataset == dataset)
        if batch_id:
            q = q.where(tasks.c.batch_id == batch_id)
        if status == "open":
            q = q.where(ans.c.answer.is_(None))
        elif status == "answered":
            q = q.where(ans.c.answer.is_not(None))
        with self.reader.connect() as c:
            df = pd.DataFrame(c.execute(q).mappings().all(),
                              columns=[col.name for col in tasks.c] + ["answer", "annotator", "answer_event"])
        df["status"] = df["answer"].map(lambda a: "open" if a is None or pd.isna(a) else "answered")
        return df

    def task(self, task_id: str) -> dict | None:
        with self.reader.connect() as c:
            row = c.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).mappings().first()
            return dict(row) if row else None

    def answer_task(self, task_id: str, label: str, annotator: str, classes: Sequence[str], *,
                    spec_version: str | None = None, guideline_version: str | None = None,
                    correct: bool = False, source: str = "cli", submission_id: str | None = None) -> dict:
        """Record a person's answer to a task as a human label event (a correction supersedes the first)."""
        t = self.task(task_id)
        if t is None:
            raise TaskError(f"task '{task_id}': no such task; list open tasks with `factory tasks list`")
        if str(label) not in set(map(str, classes)):
            raise TaskError(f"task '{task_id}': label '{label}' is not in the schema of dataset "
                            f"'{t['dataset']}'; use one of {list(classes)}")
        if not annotator or not str(annotator).strip():
            raise TaskError(f"task '{task_id}': an answer needs an annotator id (--annotator)")
        with self.engine.begin() as c:
            prior = c.execute(sa.select(label_events).where(
                label_events.c.task_id == task_id, label_events.c.kind.in_(["human", "correction"]))
                .order_by(label_events.c.seq)).mappings().all()
            if prior and not correct:
                first = prior[0]
                if first["label"] == str(label) and first["actor"] == annotator:
                    return {"event_id": first["event_id"], "duplicate": True}
                raise TaskError(f"task '{task_id}' was already answered '{first['label']}' by "
                                f"{first['actor']}; to correct it, answer again with --correct "
                                f"(the first answer is kept and superseded, never overwritten)")
            if correct and not prior:
                raise TaskError(f"task '{task_id}': nothing to correct, the task has no answer yet")
            kind = "correction" if correct else "human"
            ev = {
                "event_id": uuid.uuid4().hex,
                "dedup_key": f"answer:{task_id}" if not correct else f"correction:{task_id}:{len(prior)}",
                "batch_id": t["batch_id"], "item_id": t["item_id"], "task_id": task_id, "kind": kind,
                "actor": annotator, "label": str(label), "confidence": None,
                "payload": {"task_kind": t["kind"], "source": source, "submission_id": submission_id},
                "supersedes": prior[-1]["event_id"] if correct else None,
                "spec_version": spec_version, "guideline_version": guideline_version,
            }
            self._append(c, t["dataset"], [ev])
            return {"event_id": ev["event_id"], "duplicate": False}

    def human_decisions(self, dataset: str, batch_id: str | None = None) -> pd.DataFrame:
        """The current human answer per task: the latest correction, else the first answer."""
        ev = self.events(dataset, batch_id=batch_id, kind=["human", "correction"])
        if ev.empty:
            return ev
        return ev.sort_values("seq").groupby("task_id", as_index=False).tail(1).reset_index(drop=True)

    # ----------------------------------------------------------------- checks and releases
    def record_check(self, dataset: str, batch_id: str, asset: str, standard: str, success: bool,
                     details: dict, run_id: str | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(check_results.insert().values(dataset=dataset, batch_id=batch_id, asset=asset,
                                                    standard=standard, success=bool(success),
                                                    details=canonical(details), run_id=run_id, created_at=now()))

    def latest_checks(self, dataset: str) -> pd.DataFrame:
        df = self.table("check_results", dataset=dataset)
        if df.empty:
            return df
        return df.sort_values("id").groupby(["batch_id", "asset"], as_index=False).tail(1)

    def record_release(self, row: dict) -> None:
        with self.engine.begin() as c:
            c.execute(releases.insert().values(**row))

    def releases(self, dataset: str | None = None) -> pd.DataFrame:
        return self.table("releases", **({"dataset": dataset} if dataset else {}))

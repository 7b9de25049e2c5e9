"""The ledger: batches, items, review tasks and every label event, append-only, through SQLAlchemy Core.

SQLite in WAL mode by default, the same code on PostgreSQL.  Label events are never updated: a
correction is a new event whose `supersedes` names the event it replaces.  Events of a dataset form
hash chains (each event's hash covers its canonical content and the previous hash of its chain), so an
edited or deleted row is found by `verify_chain`.

A dataset has a root chain (`chain` ''), which holds what machines and the pipeline write, and one chain
per person (`person:<name>`) for what people write through the task doors (answers, corrections, undos,
skips, arbitrations, guideline gaps).  Appenders of one chain queue on its head row, so two people
answering never wait for each other or for a running batch.  The dataset's root hash (`chain_root`) rolls
every chain's head and length up into one value; releases and checkpoints publish it with the per-chain
positions, and `verify_chain` checks each chain and each published position.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from factory.storage.db import ensure_schema
from factory.errors import TaskError
from factory.tasks import LabelSchema, schema

metadata = sa.MetaData()


def _schema(classes: "LabelSchema | Sequence[str]") -> LabelSchema:
    """A dataset's label schema; a bare class list is a classification schema (older callers)."""
    return classes if isinstance(classes, LabelSchema) else schema("classification", list(map(str, classes)))


class TaskNotFound(TaskError):
    """The task id does not exist (HTTP 404)."""


class TaskConflict(TaskError):
    """The answer conflicts with the task's state: answered differently, lease expired or reassigned (HTTP 409)."""

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
    # the user's own id (spec task.id_column) and the hash of the duplicate key (factory.ingest.text_key)
    sa.Column("external_id", sa.String(256)),
    sa.Column("text_key", sa.String(64)),
    sa.Index("ix_items_external_id", "dataset", "external_id"),
    sa.Index("ix_items_text_key", "dataset", "text_key"),
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
    sa.Column("external_id", sa.String(256)),  # the duplicate row's own id: it still names its item
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
    # smart dispatch: the least tier that may answer (L1 < L2 < L3 < expert) and the item's domain
    sa.Column("required_tier", sa.String(16)),
    sa.Column("domain", sa.String(64)),
)

# the workbench's queue walks open tasks in this order (ORDER BY ... LIMIT 1 without a sort)
sa.Index("ix_tasks_queue", tasks.c.created_at, tasks.c.task_id)

# who holds a task right now (a lease); mutable working state, not part of the hash-chained record
task_assignments = sa.Table(
    "task_assignments", metadata,
    sa.Column("task_id", sa.String(64), primary_key=True),
    sa.Column("assignee", sa.String(128), nullable=False, index=True),
    sa.Column("assigned_at", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.String(32), nullable=False),
    sa.Column("n_assignments", sa.Integer, nullable=False),
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
    # model | fusion | human | correction | final | retraction | skip | arbitration | guideline_gap
    sa.Column("kind", sa.String(16), nullable=False),
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
    # the chain the event links into: '' the dataset's root chain, 'person:<name>' a person's (not hashed: the
    # prev_hash link binds an event to its chain)
    sa.Column("chain", sa.String(160), nullable=False, server_default=""),
    sa.Index("ix_events_item", "dataset", "item_id"),
    sa.Index("ix_events_chain", "dataset", "chain", "seq"),
    sa.Index("ix_events_batch_kind", "dataset", "batch_id", "kind"),
    sa.Index("ix_events_task", "task_id"),
    sa.Index("ix_events_actor", "actor", "kind"),
)

chain_heads = sa.Table(
    "chain_heads", metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("chain", sa.String(160), primary_key=True, server_default=""),
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

# people who use the workbench and the API (factory/users.py); not part of the hash-chained record
users = sa.Table(
    "users", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)

web_sessions = sa.Table(
    "web_sessions", metadata,
    sa.Column("session_sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)

login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(300), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
)

# per-ledger secrets (the task-id key): made once at random, kept with the ledger so that a rerun after a
# crash derives the same task ids, never shown to anyone
ledger_keys = sa.Table(
    "ledger_keys", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

GENESIS = "0" * 64
HASHED_FIELDS = ("event_id", "dataset", "batch_id", "item_id", "task_id", "kind", "actor", "label",
                 "confidence", "payload", "supersedes", "spec_version", "guideline_version", "run_id",
                 "created_at")


ROOT_CHAIN = ""


def person_chain(actor: str) -> str:
    """The chain a person's own events link into (answers, corrections, undos, skips, arbitrations)."""
    return f"person:{actor}"


def chain_root(chains: dict[str, dict]) -> str:
    """The dataset's root hash over its chains ({chain: {events, head}}): the root chain's head while it is the
    only chain with events (so single-chain ledgers and their published anchors keep their meaning), else the
    sha256 of the canonical list of [chain, events, head] of every chain with events."""
    live = sorted((k, int(v["events"]), v["head"]) for k, v in chains.items() if int(v["events"]))
    if not live:
        return GENESIS
    if [k for k, _, _ in live] == [ROOT_CHAIN]:
        return live[0][2]
    return hashlib.sha256(canonical([list(x) for x in live]).encode()).hexdigest()


def within_cut(events: pd.DataFrame, cut: dict) -> pd.Series:
    """Which events (frame with seq and chain) a cut from `Ledger.chain_anchor` covers: per chain, seq up to its
    head's (seq order is chain order within a chain; across chains a later seq may have committed earlier)."""
    upto = {k: v["seq"] for k, v in cut.get("chains", {}).items()}
    chain = events["chain"] if "chain" in events else pd.Series(ROOT_CHAIN, index=events.index)
    return events["seq"] <= chain.fillna(ROOT_CHAIN).map(upto).fillna(-1)


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


def _insert_ignoring_duplicates(c):
    """INSERT INTO label_events ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite (None elsewhere): one
    statement that both checks the dedup key and writes, instead of a SELECT first."""
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif c.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    return insert(label_events).on_conflict_do_nothing()


# The workbench's hot statements, built once with bound parameters: building a statement and its cache key
# cost more of the server's CPU than sending it (py-spy on the workbench server: about a third of an answer's
# Python time went to constructing `select(...).where(...)` and hashing it for the compiled cache).
def _fixed(name: str, values) -> list:
    """A statement's constant list as one bound parameter per value (`IN (:k0, :k1)`): SQLAlchemy would otherwise
    expand a list parameter when each statement runs (10 % of a `next`'s CPU went to that expansion)."""
    return [sa.bindparam(f"{name}{i}", v) for i, v in enumerate(values)]


ANSWER_KINDS = ("human", "correction", "retraction")
_ANSWER_KINDS_SQL = _fixed("ak", ANSWER_KINDS)
_LOCK_HEAD = (sa.select(chain_heads).where(chain_heads.c.dataset == sa.bindparam("h_dataset"),
                                           chain_heads.c.chain == sa.bindparam("h_chain")).with_for_update())
_MOVE_HEAD = (chain_heads.update().where(chain_heads.c.dataset == sa.bindparam("h_dataset"),
                                         chain_heads.c.chain == sa.bindparam("h_chain"))
              .values(seq=sa.bindparam("h_seq"), hash=sa.bindparam("h_hash")))
_TASK_WITH_LEASE = (sa.select(tasks, task_assignments.c.assignee.label("lease_assignee"),
                              task_assignments.c.lease_until.label("lease_until_"))
                    .select_from(tasks.outerjoin(task_assignments, task_assignments.c.task_id == tasks.c.task_id))
                    .where(tasks.c.task_id == sa.bindparam("t_id")))
_ITEM_ANSWERS = (sa.select(label_events.c.event_id, label_events.c.task_id, label_events.c.kind,
                           label_events.c.actor, label_events.c.label, label_events.c.payload,
                           label_events.c.supersedes, label_events.c.created_at)
                 .where(label_events.c.dataset == sa.bindparam("i_dataset"),
                        label_events.c.item_id == sa.bindparam("i_item"),
                        label_events.c.kind.in_(_ANSWER_KINDS_SQL)).order_by(label_events.c.seq))
_END_LEASE = (task_assignments.update().where(task_assignments.c.task_id == sa.bindparam("l_task"),
                                              task_assignments.c.assignee == sa.bindparam("l_who"),
                                              task_assignments.c.lease_until >= sa.bindparam("l_ts"))
              .values(lease_until=sa.bindparam("l_ts")))
_RENEW_LEASE = (task_assignments.update().where(task_assignments.c.task_id == sa.bindparam("l_task"))
                .values(lease_until=sa.bindparam("l_until")))
_NEW_LEASE = task_assignments.insert()
_ITEM_TEXT = sa.select(items.c.text, items.c.meta).where(items.c.dataset == sa.bindparam("i_dataset"),
                                                         items.c.item_id == sa.bindparam("i_item"))


def _pg_insert_and_move_head():
    """PostgreSQL: a person's event and its chain's new head in one statement (one round trip, not two): the
    insert ignores a duplicate dedup key, and the head moves only if the insert wrote (it returns no row then).
    The hash is still computed here from the head locked before (`_lock_head`): the tamper evidence is the same."""
    from sqlalchemy.dialects.postgresql import insert

    cols = [c.name for c in label_events.c if c.name != "seq"]
    ins = (insert(label_events).values({k: sa.bindparam(f"e_{k}") for k in cols}).on_conflict_do_nothing()
           .returning(label_events.c.seq).cte("ins"))
    # `head.seq < ins.seq` always holds (seq is the table's increasing key, the head the chain's last event); it
    # joins the two FROM elements, which SQLAlchemy's linter would otherwise warn about as a cartesian product
    return (chain_heads.update().where(chain_heads.c.dataset == sa.bindparam("h_dataset"),
                                       chain_heads.c.chain == sa.bindparam("h_chain"), chain_heads.c.seq < ins.c.seq)
            .values(seq=ins.c.seq, hash=sa.bindparam("h_hash")).returning(ins.c.seq))


_PG_INSERT_AND_MOVE_HEAD = _pg_insert_and_move_head()


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
        ensure_schema(self.engine, url, metadata)  # SQLite upgrades itself; other databases must be at the head

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

    def known_text_keys(self, dataset: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Map of the given duplicate-key hashes already in the ledger to (item id, batch id) of their item."""
        out: dict[str, tuple[str, str]] = {}
        with self.reader.connect() as c:
            for i in range(0, len(keys), 500):
                for r in c.execute(sa.select(items.c.text_key, items.c.item_id, items.c.batch_id).where(
                        items.c.dataset == dataset, items.c.text_key.in_(keys[i:i + 500]))):
                    out.setdefault(r.text_key, (r.item_id, r.batch_id))
        return out

    def known_external_ids(self, dataset: str, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Map of the given user ids (task.id_column) already in the ledger to (item id, batch id) they name."""
        out: dict[str, tuple[str, str]] = {}
        with self.reader.connect() as c:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for t in (items, duplicates):
                    col = t.c.item_id
                    batch = t.c.batch_id if t is items else t.c.first_batch_id
                    for r in c.execute(sa.select(t.c.external_id, col, batch.label("b")).where(
                            t.c.dataset == dataset, t.c.external_id.in_(chunk))):
                        out.setdefault(r.external_id, (r.item_id, r.b))
        return out

    def resolve_item(self, dataset: str | None, ident: str) -> list[tuple[str, str]]:
        """The (dataset, item id) pairs `ident` names: an item id, else a user's own id (task.id_column)."""
        with self.reader.connect() as c:
            q = sa.select(items.c.dataset, items.c.item_id).where(items.c.item_id == ident)
            if dataset:
                q = q.where(items.c.dataset == dataset)
            found = [(r.dataset, r.item_id) for r in c.execute(q)]
            if found:
                return found
            for t in (items, duplicates):
                q = sa.select(t.c.dataset, t.c.item_id).where(t.c.external_id == ident)
                if dataset:
                    q = q.where(t.c.dataset == dataset)
                found += [(r.dataset, r.item_id) for r in c.execute(q)]
        return sorted(set(found))

    def add_batch(self, batch_row: dict, item_rows: Sequence[dict], duplicate_rows: Sequence[dict],
                  quarantine_rows: Sequence[dict], events: Sequence[dict] = (),
                  extra: Sequence[tuple[sa.Table, Sequence[dict]]] = ()) -> None:
        """Write a batch and everything found in it (events, extra rows) in one transaction: all or nothing."""
        with self.engine.begin() as c:
            for table, rows in extra:
                if rows:
                    c.execute(table.insert(), list(rows))
            if events:
                self._append(c, batch_row["dataset"], events)
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

    def _lock_head(self, c, dataset: str, chain: str = ROOT_CHAIN):
        """Lock the head of one chain of the dataset for this transaction (SQLite: BEGIN IMMEDIATE did already)."""
        where = {"h_dataset": dataset, "h_chain": chain}
        head = c.execute(_LOCK_HEAD, where).first()
        if head is None and c.dialect.name == "postgresql":
            # a row to lock must exist: two first writers would otherwise both insert the head
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            c.execute(pg_insert(chain_heads).values(dataset=dataset, chain=chain, seq=0, hash=GENESIS)
                      .on_conflict_do_nothing())
            head = c.execute(_LOCK_HEAD, where).first()
        return head

    def _append(self, c, dataset: str, events: Sequence[dict], chain: str = ROOT_CHAIN) -> int:
        # the head lock comes first: concurrent appenders of a chain queue on it, and the dedup check
        # below then sees every event they committed (PostgreSQL READ COMMITTED takes a new snapshot);
        # appenders of other chains (another person) do not wait, and a dedup key they share is settled by
        # the unique index (the single-event insert ignores a duplicate, a batch is refused whole)
        head = self._lock_head(c, dataset, chain)
        single = _insert_ignoring_duplicates(c) if len(events) == 1 else None
        keys = [e["dedup_key"] for e in events if e.get("dedup_key")] if single is None else []
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
                "chain": chain,
            }
            row["hash"] = event_hash(prev, row)
            prev = row["hash"]
            rows.append(row)
        if not rows:
            return 0
        if single is not None and head is not None and c.dialect.name == "postgresql":
            # one event on PostgreSQL: insert it and move the head in one statement (nothing moves on a duplicate)
            params = {f"e_{k}": v for k, v in rows[0].items()}
            params.update(h_dataset=dataset, h_chain=chain, h_hash=prev)
            return 0 if c.execute(_PG_INSERT_AND_MOVE_HEAD, params).scalar() is None else 1
        if single is not None:  # one event (a person's answer): the insert is the duplicate check, its seq returned
            last_seq = c.execute(single.returning(label_events.c.seq), rows[0]).scalar()
            if last_seq is None:  # its dedup key is in the ledger already
                return 0
        elif len(rows) == 1:
            last_seq = c.execute(label_events.insert(), rows[0]).inserted_primary_key[0]
        elif c.dialect.insert_executemany_returning:
            last_seq = max(r[0] for r in c.execute(label_events.insert().returning(label_events.c.seq), rows))
        else:
            c.execute(label_events.insert(), rows)
            last_seq = c.execute(sa.select(sa.func.max(label_events.c.seq)).where(
                label_events.c.dataset == dataset, label_events.c.chain == chain)).scalar_one()
        if head:
            c.execute(_MOVE_HEAD, {"h_dataset": dataset, "h_chain": chain, "h_seq": last_seq, "h_hash": prev})
        else:
            c.execute(chain_heads.insert().values(dataset=dataset, chain=chain, seq=last_seq, hash=prev))
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

    def verify_chain(self, dataset: str, anchors: dict | None = None) -> dict:
        """Walk each hash chain of the dataset; report the first broken link, if any.

        `anchors` (published outside the database: releases, signed checkpoints) map a position to the hash
        the event there must carry: {(chain, count): hash}, or {count: hash} for the root chain (anchors
        from before person chains).  A chain rewritten consistently, or cut at the end with its head fixed,
        passes the walk but not its anchors; the result's `anchor_problems` names each one that does not
        hold.  `head` is the dataset's root hash (`chain_root`) over the chains walked."""
        prev: dict[str, str] = {}
        count: dict[str, int] = {}
        n = 0
        anchors = {(k if isinstance(k, tuple) else (ROOT_CHAIN, int(k))): v for k, v in (anchors or {}).items()}
        anchor_problems: list[str] = []

        def where(chain: str) -> str:
            return "" if chain == ROOT_CHAIN else f" of chain '{chain}'"

        with self.reader.connect() as c:
            heads = {h.chain: h for h in c.execute(sa.select(chain_heads).where(chain_heads.c.dataset == dataset))}
            for row in c.execute(sa.select(label_events).where(label_events.c.dataset == dataset)
                                 .order_by(label_events.c.seq)).mappings():
                chain = row["chain"] or ROOT_CHAIN
                last = prev.get(chain, GENESIS)
                if row["prev_hash"] != last:
                    return {"ok": False, "events": n, "seq": row["seq"], "event_id": row["event_id"],
                            "problem": "previous-hash link broken (an event before it was deleted or edited)"}
                if event_hash(last, dict(row)) != row["hash"]:
                    return {"ok": False, "events": n, "seq": row["seq"], "event_id": row["event_id"],
                            "problem": "content does not match its hash (the event was edited)"}
                prev[chain] = row["hash"]
                count[chain] = k = count.get(chain, 0) + 1
                n += 1
                if (chain, k) in anchors and anchors.pop((chain, k)) != row["hash"]:
                    anchor_problems.append(f"event {k}{where(chain)} (seq {row['seq']}) does not carry the hash "
                                           f"published for it: the chain up to it was rewritten")
        for chain, k in sorted(anchors):  # published positions the ledger no longer reaches
            anchor_problems.append(f"a hash was published for event {k}{where(chain)}, but the ledger has only "
                                   f"{count.get(chain, 0)} events{' in that chain' if chain else ''}: events at "
                                   f"the end were deleted")
        for chain in sorted(set(heads) | set(prev)):
            head = heads[chain].hash if chain in heads else GENESIS
            if head != prev.get(chain, GENESIS):
                return {"ok": False, "events": n, "seq": None, "event_id": None,
                        "problem": f"the chain head{where(chain)} does not match the last event (events at the end "
                                   f"were deleted)"}
        root = chain_root({k: {"events": count[k], "head": prev[k]} for k in prev})
        if anchor_problems:
            return {"ok": False, "events": n, "seq": None, "event_id": None, "head": root,
                    "problem": anchor_problems[0], "anchor_problems": anchor_problems}
        return {"ok": True, "events": n, "head": root}

    def chain_anchor(self, dataset: str) -> dict:
        """The dataset's chains now: {events (count), head (root hash, `chain_root`), seq, chains: {chain: {events,
        head, seq}}}; what a release or a checkpoint publishes."""
        h = chain_heads
        e = label_events
        # one statement, one snapshot: each head with the count of its chain's events up to the head's seq
        # (appenders of a chain queue on its head lock, so within a chain seq order is chain order)
        q = (sa.select(h.c.chain, h.c.seq, h.c.hash, sa.func.count(e.c.seq).label("n"))
             .select_from(h.outerjoin(e, sa.and_(e.c.dataset == h.c.dataset, e.c.chain == h.c.chain,
                                                 e.c.seq <= h.c.seq)))
             .where(h.c.dataset == dataset).group_by(h.c.chain, h.c.seq, h.c.hash))
        with self.reader.connect() as c:
            chains = {r.chain: {"events": int(r.n), "head": r.hash, "seq": int(r.seq)} for r in c.execute(q) if r.n}
        if not chains:
            return {"events": 0, "head": GENESIS, "seq": 0, "chains": {}}
        return {"events": sum(v["events"] for v in chains.values()), "head": chain_root(chains),
                "seq": max(v["seq"] for v in chains.values()), "chains": chains}

    # ----------------------------------------------------------------- tasks and answers
    def _key(self, name: str) -> str:
        """A per-ledger secret, made at random on first use (two first users: the first insert wins)."""
        cache = self.__dict__.setdefault("_keys", {})
        if name not in cache:
            for _attempt in range(3):
                with self.reader.connect() as c:
                    row = c.execute(sa.select(ledger_keys.c.value).where(ledger_keys.c.name == name)).first()
                if row:
                    cache[name] = row[0]
                    break
                try:
                    with self.engine.begin() as c:
                        c.execute(ledger_keys.insert().values(name=name, value=secrets.token_hex(32), created_at=now()))
                except sa.exc.IntegrityError:
                    continue
        return cache[name]

    def public_task_id(self, key: str) -> str:
        """The task id people see for an internal task key: HMAC-SHA256 under this ledger's secret.

        Deterministic for one ledger (a rerun after a crash finds the tasks it made), unguessable
        for anyone without the secret (one's own task ids say nothing about other people's).
        """
        return "t_" + hmac.new(self._key("task_id").encode(), key.encode(), hashlib.sha256).hexdigest()[:24]

    def create_tasks(self, task_rows: Sequence[dict]) -> int:
        """Create review tasks; a task id that exists already is left as it is (idempotent).

        Rows marked `keyed` (made by `task_rows.task_row`) carry an internal key as task_id; it is
        replaced here by `public_task_id(key)`.
        """
        if not task_rows:
            return 0
        task_rows = [{k: v for k, v in dict(t, task_id=self.public_task_id(t["task_id"])).items() if k != "keyed"}
                     if t.get("keyed") else {k: v for k, v in t.items() if k != "keyed"} for t in task_rows]
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
                self._reset_queue_floors()  # a task may be dated before the queue's floor
            if len(new) >= self.ANALYZE_AFTER and c.dialect.name == "postgresql":
                # PostgreSQL's advice after a bulk load: fresh statistics now, not at autovacuum's next turn.
                # The queue's plan depends on them: with the tables' sizes unknown, `next` sorted every open task
                # and probed each against the person's answers (1.2 s per call at 5,000 tasks) instead of walking
                # the queue index to the first free task
                c.exec_driver_sql("ANALYZE tasks")
                c.exec_driver_sql("ANALYZE label_events")
            return len(new)

    # how many tasks made at once call for fresh planner statistics (PostgreSQL)
    ANALYZE_AFTER = 500

    def _retracted_ids(self):
        """Subquery: event ids of answers withdrawn by a retraction event (an undo)."""
        r = label_events.alias("retractions")
        return sa.select(r.c.supersedes).where(r.c.kind == "retraction", r.c.supersedes.is_not(None))

    def _open_condition(self):
        """SQL condition on `tasks`: no live (non-retracted) human answer yet (probes use ix_events_task only)."""
        e = label_events.alias("answers")
        r = label_events.alias("retractions")
        undone = sa.exists().where(r.c.task_id == e.c.task_id, r.c.kind == "retraction",
                                   r.c.supersedes == e.c.event_id)
        return ~sa.exists().where(e.c.task_id == tasks.c.task_id, e.c.kind == "human", ~undone)

    def tasks(self, dataset: str | None = None, batch_id: str | None = None,
              status: str | None = None) -> pd.DataFrame:
        """Tasks with their answer (status open/answered derives from the human events; an undone answer reopens)."""
        ans = (sa.select(label_events.c.task_id, label_events.c.label.label("answer"),
                         label_events.c.actor.label("annotator"), label_events.c.event_id.label("answer_event"))
               .where(label_events.c.kind == "human", label_events.c.event_id.not_in(self._retracted_ids()))
               .subquery())
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

    def task_with_lease(self, c, task_id: str) -> dict | None:
        """The task and its lease (`lease`: assignee, lease_until, or None) in one read on the caller's connection."""
        row = c.execute(_TASK_WITH_LEASE, {"t_id": task_id}).mappings().first()
        if row is None:
            return None
        t = {k: row[k] for k in tasks.c.keys()}
        t["lease"] = (None if row["lease_assignee"] is None else
                      {"assignee": row["lease_assignee"], "lease_until": row["lease_until_"]})
        return t

    def answer_task(self, task_id: str, label: str, annotator: str, classes: "LabelSchema | Sequence[str]", *,
                    spec_version: str | None = None, guideline_version: str | None = None,
                    correct: bool = False, source: str = "cli", submission_id: str | None = None,
                    require_lease: bool = False) -> dict:
        """Record a person's answer to a task as a human label event (a correction supersedes the first).

        `submission_id` makes a retried submission idempotent (the first event is returned with
        duplicate=True); `require_lease` (the web workbench) accepts the answer only from the
        annotator who holds an unexpired lease on the task (see `next_task`), else TaskConflict.
        """
        t = self.task(task_id)
        if t is None:
            raise TaskNotFound(f"task '{task_id}': no such task; list open tasks with `factory tasks list`")
        sch = _schema(classes)
        with self.engine.connect() as c:
            ctx = self._item_context(c, sch, t["dataset"], t["item_id"])
        label = sch.parse(label, f"task '{task_id}' of dataset '{t['dataset']}'", ctx)
        if not annotator or not str(annotator).strip():
            raise TaskError(f"task '{task_id}': an answer needs an annotator id (--annotator)")
        with self.engine.begin() as c:
            return self._answer(c, t, label, annotator, spec_version=spec_version,
                                guideline_version=guideline_version, correct=correct, source=source,
                                submission_id=submission_id, require_lease=require_lease)

    def answer_tasks(self, answers: Sequence[dict],
                     classes_by_dataset: dict[str, "LabelSchema | Sequence[str]"], *, conn=None) -> list[dict]:
        """Record many answers in one transaction: all are written or none (raises on the first bad one).

        `classes_by_dataset` gives each dataset's label schema (``spec.label_schema``: the task type bound
        to the classes, which checks and canonicalises every label) or, for classification, its classes.

        Each answer is a dict with task_id, label, annotator and optionally spec_version,
        guideline_version, source, submission_id, payload (extra provenance merged into the event).
        `conn` writes inside the caller's transaction (the gate's, which read `task` and the task's
        `history` already in it: they are not read again).
        """
        if conn is not None:
            return self._answer_all(conn, answers, classes_by_dataset)
        with self.engine.begin() as c:
            return self._answer_all(c, answers, classes_by_dataset)

    def _answer_all(self, c, answers: Sequence[dict], classes_by_dataset: dict) -> list[dict]:
        out = []
        for a in answers:
            if a.get("arbitration"):  # an expert's decision on an item (dataset, item_id, rationale)
                sch = _schema(classes_by_dataset[a["dataset"]])
                label = sch.parse(a["label"], f"item '{a['item_id']}'",
                                  self._item_context(c, sch, a["dataset"], a["item_id"]))
                if not a.get("rationale") or not str(a["rationale"]).strip():
                    raise TaskError(f"item '{a['item_id']}': an arbitration needs a rationale (why this label)")
                out.append(self._arbitrate(c, a["dataset"], a["item_id"], label, a["annotator"],
                                           a["rationale"], spec_version=a.get("spec_version"),
                                           guideline_version=a.get("guideline_version"),
                                           evidence=a.get("evidence"), source=a.get("source", "import"),
                                           submission_id=a.get("submission_id")))
                continue
            t = a.get("task") or c.execute(sa.select(tasks).where(tasks.c.task_id == a["task_id"])).mappings().first()
            if t is None:
                raise TaskNotFound(f"task '{a['task_id']}': no such task")
            sch = _schema(classes_by_dataset[t["dataset"]])
            label = sch.parse(a["label"], f"task '{a['task_id']}'", self._item_context(c, sch, t["dataset"], t["item_id"]))
            out.append(self._answer(c, dict(t), label, a["annotator"],
                                    spec_version=a.get("spec_version"),
                                    guideline_version=a.get("guideline_version"),
                                    source=a.get("source", "import"), submission_id=a.get("submission_id"),
                                    extra=a.get("payload"), correct=bool(a.get("correct")),
                                    require_lease=bool(a.get("require_lease")), history=a.get("history")))
        return out

    @staticmethod
    def _item_context(c, sch: LabelSchema, dataset: str, item_id: str) -> dict | None:
        """What the task type checks an answer against on this item (spans: ``n_tokens``), None if nothing."""
        tt = sch.task_type
        if not tt.needs_item:
            return None
        meta = c.execute(sa.select(items.c.meta).where(items.c.dataset == dataset, items.c.item_id == item_id)).scalar()
        return tt.item_context(meta) if meta is not None else None

    def item_answers(self, c, dataset: str, item_id: str) -> list[dict]:
        """An item's human, correction and retraction events in seq order as plain rows, on the caller's
        connection (what the gate checks an answer against)."""
        return [dict(r) for r in c.execute(_ITEM_ANSWERS, {"i_dataset": dataset, "i_item": item_id}).mappings()]

    def _task_history(self, c, task_id: str) -> list[dict]:
        return [dict(r) for r in c.execute(sa.select(
            label_events.c.event_id, label_events.c.kind, label_events.c.actor, label_events.c.label,
            label_events.c.payload, label_events.c.supersedes, label_events.c.created_at).where(
            label_events.c.task_id == task_id,
            label_events.c.kind.in_(["human", "correction", "retraction"])).order_by(label_events.c.seq)).mappings()]

    @staticmethod
    def _live(history: list[dict]) -> list[dict]:
        gone = {h["supersedes"] for h in history if h["kind"] == "retraction"}
        return [h for h in history if h["kind"] != "retraction" and h["event_id"] not in gone]

    def _check_lease(self, c, task_id: str, annotator: str, ts: str) -> None:
        a = c.execute(sa.select(task_assignments).where(task_assignments.c.task_id == task_id)).mappings().first()
        if a is None:
            raise TaskConflict(f"task '{task_id}' is not assigned to {annotator}; take your next task with "
                               f"GET /api/tasks/next")
        if a["assignee"] != annotator:
            raise TaskConflict(f"task '{task_id}' was reassigned to another annotator after your lease ran out; "
                               f"your answer was not recorded, take your next task with GET /api/tasks/next")
        if a["lease_until"] < ts:
            raise TaskConflict(f"your lease on task '{task_id}' expired at {a['lease_until']}; your answer was not "
                               f"recorded, take a fresh task with GET /api/tasks/next")

    def _end_lease(self, c, task_id: str, annotator: str, ts: str) -> None:
        """Check that `annotator` holds an unexpired lease and end it, in one statement (atomic: a lease cannot
        run out or change hands between the check and the answer); when it does not hold, say why."""
        if c.execute(_END_LEASE, {"l_task": task_id, "l_who": annotator, "l_ts": ts}).rowcount != 1:
            self._check_lease(c, task_id, annotator, ts)
            raise TaskConflict(f"your lease on task '{task_id}' ended meanwhile; your answer was not recorded, "
                               f"take your next task with GET /api/tasks/next")

    def _answer(self, c, t: dict, label: str, annotator: str, *, spec_version: str | None,
                guideline_version: str | None, correct: bool = False, source: str = "cli",
                submission_id: str | None = None, require_lease: bool = False, extra: dict | None = None,
                history: list[dict] | None = None) -> dict:
        task_id = t["task_id"]
        if history is None:  # the gate passes the history it read in this transaction
            history = self._task_history(c, task_id)
        if submission_id:
            # idempotency is scoped to the submitter: someone else's submission id matches nothing of theirs
            for h in history:
                if (h["kind"] != "retraction" and h["actor"] == annotator
                        and json.loads(h["payload"]).get("submission_id") == submission_id):
                    if h["label"] != label:
                        raise TaskConflict(f"task '{task_id}': submission '{submission_id}' was already recorded "
                                           f"with label '{h['label']}'; a retry must carry the same answer")
                    return {"event_id": h["event_id"], "duplicate": True}
        ts = now()
        if require_lease and not correct:  # the lease first: a task you do not hold says nothing about itself
            self._end_lease(c, task_id, annotator, ts)
        prior = self._live(history)
        if prior and not correct:
            first = prior[0]
            if first["label"] == label and first["actor"] == annotator:
                return {"event_id": first["event_id"], "duplicate": True}
            if first["actor"] != annotator:  # blind review: never another person's label or name
                raise TaskConflict(f"task '{task_id}' was already answered by another person; your answer was "
                                   f"not recorded")
            raise TaskConflict(f"task '{task_id}' was already answered '{first['label']}' by "
                               f"{first['actor']}; to correct it, answer again with --correct "
                               f"(the first answer is kept and superseded, never overwritten; on the web "
                               f"workbench: undo with U within the grace period, or ask an expert to arbitrate)")
        if correct and not prior:
            raise TaskError(f"task '{task_id}': nothing to correct, the task has no answer yet")
        n_retracted = sum(h["kind"] == "retraction" for h in history)
        n_answers = sum(h["kind"] != "retraction" for h in history)
        if correct:
            key = f"correction:{task_id}:{n_answers}"
        else:
            key = f"answer:{task_id}" if n_retracted == 0 else f"answer:{task_id}:{n_retracted}"
        ev = {
            "event_id": uuid.uuid4().hex, "dedup_key": key,
            "batch_id": t["batch_id"], "item_id": t["item_id"], "task_id": task_id,
            "kind": "correction" if correct else "human",
            "actor": annotator, "label": label, "confidence": None,
            "payload": {"task_kind": t["kind"], "source": source, "submission_id": submission_id, **(extra or {})},
            "supersedes": prior[-1]["event_id"] if correct else None,
            "spec_version": spec_version, "guideline_version": guideline_version, "created_at": ts,
        }
        if self._append(c, t["dataset"], [ev], person_chain(annotator)) != 1:
            raise TaskConflict(f"task '{task_id}' was answered concurrently; reload it")
        return {"event_id": ev["event_id"], "duplicate": False}

    def human_decisions(self, dataset: str, batch_id: str | None = None) -> pd.DataFrame:
        """The current human answer per task: the latest correction, else the first answer (undone answers excluded)."""
        ev = self.events(dataset, batch_id=batch_id, kind=["human", "correction", "retraction"])
        if ev.empty:
            return ev
        gone = set(ev.loc[ev["kind"] == "retraction", "supersedes"].dropna())
        ev = ev[(ev["kind"] != "retraction") & ~ev["event_id"].isin(gone)]
        return ev.sort_values("seq").groupby("task_id", as_index=False).tail(1).reset_index(drop=True)

    # ----------------------------------------------------------------- assignment, undo, skip, arbitration
    def _queue_sql(self, has_dataset: bool, kinds: tuple, exclude_kinds: tuple, tiers: tuple = ()):
        """The two statements of `next_task`, built once per filter shape (building SQL costs more than running it)."""
        key = (has_dataset, kinds, exclude_kinds, tiers)
        cache = self.__dict__.setdefault("_queue_statements", {})
        if key not in cache:
            a = task_assignments
            me, ts = sa.bindparam("me"), sa.bindparam("ts")
            scope = [self._open_condition()]
            if has_dataset:
                scope.append(tasks.c.dataset == sa.bindparam("dataset"))
            if kinds:
                scope.append(tasks.c.kind.in_(_fixed("qk", kinds)))
            if exclude_kinds:
                scope.append(tasks.c.kind.not_in(_fixed("qx", exclude_kinds)))
            if tiers:  # smart dispatch: only tasks whose required tier the annotator has
                scope.append(sa.or_(tasks.c.required_tier.is_(None), tasks.c.required_tier.in_(_fixed("qt", tiers))))
            held = (sa.select(tasks).join(a, a.c.task_id == tasks.c.task_id)
                    .where(a.c.assignee == me, a.c.lease_until >= ts, *scope).order_by(a.c.assigned_at).limit(1))
            s = label_events.alias("skips")
            skipped = sa.exists().where(s.c.task_id == tasks.c.task_id, s.c.kind == "skip", s.c.actor == me)
            # blind overlap and no review of one's own label: never an item this person already answered
            mine = label_events.alias("mine")
            answered_item = sa.exists().where(mine.c.dataset == tasks.c.dataset, mine.c.item_id == tasks.c.item_id,
                                              mine.c.actor == me, mine.c.kind.in_(_fixed("qm", ("human", "correction"))))
            floor = tasks.c.created_at >= sa.bindparam("floor")
            free = (sa.select(tasks, a.c.task_id.label("leased"))
                    .select_from(tasks.outerjoin(a, a.c.task_id == tasks.c.task_id))
                    .where(floor, sa.or_(a.c.task_id.is_(None), a.c.lease_until < ts, a.c.assignee == me), ~skipped,
                           ~answered_item, *scope)
                    .order_by(tasks.c.created_at, tasks.c.task_id)
                    .limit(sa.bindparam("n", type_=sa.Integer)).offset(sa.bindparam("skip", type_=sa.Integer))
                    # PostgreSQL: people asking at once do not all pick the same first task and retry; each
                    # skips the tasks another's lease transaction is taking (SQLite's writers take turns anyway)
                    .with_for_update(of=tasks, skip_locked=True))
            first_open = (sa.select(tasks.c.created_at).where(floor, *scope)
                          .order_by(tasks.c.created_at, tasks.c.task_id).limit(1))
            cache[key] = (held, free, first_open)
        return cache[key]

    # The queue is walked in creation order and answered tasks pile up at its front, so each process
    # remembers where the first open task was (a floor) and starts there: `next` stays O(1) instead of
    # O(answered) (16 ms after 4,500 answers without it).  Only an undo can reopen a task before the
    # floor: an undo here resets it, and floors older than QUEUE_FLOOR_SECONDS are rebuilt from the
    # start, which bounds what an undo or a back-dated task from another process can go unseen.
    QUEUE_FLOOR_SECONDS = 30.0

    def _queue_floor(self, key) -> str:
        floors = self.__dict__.setdefault("_queue_floors", {})
        hit = floors.get(key)
        return hit[1] if hit and time.monotonic() - hit[0] < self.QUEUE_FLOOR_SECONDS else ""

    def _reset_queue_floors(self) -> None:
        self.__dict__.setdefault("_queue_floors", {}).clear()

    def next_task(self, annotator: str, *, dataset: str | None = None, kinds: Sequence[str] | None = None,
                  exclude_kinds: Sequence[str] | None = None, lease_seconds: float = 600,
                  tiers: Sequence[str] | None = None, accept=None, prefer=None, may_add: bool = True,
                  policy=None, with_item: bool = False) -> dict | None:
        """Lease the next open task to `annotator` (or renew the one they hold); None when nothing is left.

        A task leased to someone else is not offered until the lease runs out; then it can be
        reassigned, and the first holder's late answer is refused (TaskConflict).  Tasks the
        annotator skipped, or whose item they already answered (blind overlap, no review of one's own
        label), are not offered to them; `tiers` limits the offer to tasks of those required tiers.
        `accept(task) -> bool` and `prefer(task) -> sort key` are the dispatch policy
        (`workforce.can_take`, `workforce.pull_preference`): the first preferred accepted task is
        leased.  `may_add=False` (the person holds their limit of tasks) only renews a held lease.
        `policy(conn)`, when given, is called first inside the lease transaction and returns the dispatch policy
        read on its connection (a dict of any of tiers, accept, prefer, may_add): the person's registry row and
        load cost no connection of their own.  `with_item` adds the item's `text` and `meta` (same transaction).
        """
        a = task_assignments
        for _attempt in range(8):
            start = datetime.now(timezone.utc)
            ts = start.isoformat(timespec="microseconds")
            until = (start + timedelta(seconds=lease_seconds)).isoformat(timespec="microseconds")
            try:
                with self.engine.begin() as c:
                    rules = {"tiers": tiers, "accept": accept, "prefer": prefer, "may_add": may_add,
                             **(policy(c) if policy is not None else {})}
                    accept, prefer, may_add = rules["accept"], rules["prefer"], rules["may_add"]
                    shape = (bool(dataset), tuple(kinds or ()), tuple(exclude_kinds or ()),
                             tuple(sorted(rules["tiers"] or ())))
                    held_sql, free_sql, first_open_sql = self._queue_sql(*shape)
                    floor_key = (*shape, dataset)
                    params = {"me": annotator, "ts": ts, "floor": self._queue_floor(floor_key), "skip": 0,
                              "n": 1 if prefer is None else self.POLICY_WINDOW,
                              **({"dataset": dataset} if dataset else {})}
                    held = c.execute(held_sql, params).mappings().first()
                    if held is not None:
                        c.execute(_RENEW_LEASE, {"l_task": held["task_id"], "l_until": until})
                        return self._with_item(c, dict(held, assignee=annotator, lease_until=until), with_item)
                    first_open = c.execute(first_open_sql, params).scalar()
                    if first_open is not None:
                        floors = self.__dict__.setdefault("_queue_floors", {})
                        born = floors.get(floor_key, (time.monotonic(), ""))[0] if params["floor"] else time.monotonic()
                        floors[floor_key] = (born, first_open)
                        params["floor"] = first_open
                    if not may_add:
                        return None
                    row = self._pick(c, free_sql, params, accept, prefer)
                    if row is None:
                        return None
                    if row.pop("leased") is None:
                        c.execute(_NEW_LEASE, {"task_id": row["task_id"], "assignee": annotator, "assigned_at": ts,
                                               "lease_until": until, "n_assignments": 1})
                    else:
                        res = c.execute(a.update().where(
                            a.c.task_id == row["task_id"],
                            sa.or_(a.c.lease_until < ts, a.c.assignee == annotator)).values(
                            assignee=annotator, assigned_at=ts, lease_until=until,
                            n_assignments=a.c.n_assignments + 1))
                        if res.rowcount != 1:  # taken meanwhile (PostgreSQL): look again
                            raise sa.exc.IntegrityError("lease taken", None, Exception("lease taken"))
                    return self._with_item(c, dict(row, assignee=annotator, lease_until=until), with_item)
            except sa.exc.IntegrityError:
                continue
        raise TaskConflict(f"could not lease a task to {annotator}: too much contention, try again")

    @staticmethod
    def _with_item(c, task: dict, with_item: bool) -> dict:
        """The leased task, with its item's text and meta read on the lease's connection when asked."""
        if with_item:
            row = c.execute(_ITEM_TEXT, {"i_dataset": task["dataset"], "i_item": task["item_id"]}).first()
            task["item"] = {"text": row.text, "meta": row.meta} if row else None
        return task

    # how many free tasks a preference (`prefer`) chooses among, in queue order; without one the queue is walked
    # a task at a time until `accept` takes one (the SQL's tier filter already removed most refusals)
    POLICY_WINDOW = 25

    def _pick(self, c, free_sql, params: dict, accept, prefer) -> dict | None:
        """The free task to lease: the first in queue order, or the policy's preferred accepted one."""
        if accept is None and prefer is None:
            row = c.execute(free_sql, params).mappings().first()
            return dict(row) if row else None
        while True:
            rows = [dict(r) for r in c.execute(free_sql, params).mappings()]
            ok = [r for r in rows if accept is None or accept(r)]
            if ok:
                return min(ok, key=prefer) if prefer else ok[0]
            if len(rows) < params["n"]:
                return None
            params = dict(params, skip=params["skip"] + params["n"])

    def assignment(self, task_id: str) -> dict | None:
        """The task's current lease (assignee, lease_until), or None if it was never assigned."""
        with self.reader.connect() as c:
            row = c.execute(sa.select(task_assignments).where(task_assignments.c.task_id == task_id)).mappings().first()
            return dict(row) if row else None

    def retract_answer(self, task_id: str, annotator: str, *, grace_seconds: float = 120,
                       lease_seconds: float = 600, reason: str = "undo") -> dict:
        """Undo an annotator's own answer within the grace period: a retraction event supersedes it.

        The answer stays in the ledger (append-only); the task reopens and is leased back to the
        annotator.  Refused (TaskConflict) after the grace period or when the answer is not theirs
        or was already corrected.
        """
        t = self.task(task_id)
        if t is None:
            raise TaskNotFound(f"task '{task_id}': no such task")
        start = datetime.now(timezone.utc)
        ts = start.isoformat(timespec="microseconds")
        with self.engine.begin() as c:
            live = self._live(self._task_history(c, task_id))
            if not live or live[-1]["kind"] != "human" or live[-1]["actor"] != annotator:
                raise TaskConflict(f"task '{task_id}' has no answer of {annotator} to undo")
            answer = live[-1]
            closes = (datetime.fromisoformat(answer["created_at"]) + timedelta(seconds=grace_seconds))
            if start > closes:
                raise TaskConflict(f"the undo window of task '{task_id}' closed at "
                                   f"{closes.isoformat(timespec='seconds')} ({grace_seconds:g} s after the answer); "
                                   f"ask an expert to correct it")
            ev = {"event_id": uuid.uuid4().hex, "dedup_key": f"retraction:{answer['event_id']}",
                  "batch_id": t["batch_id"], "item_id": t["item_id"], "task_id": task_id, "kind": "retraction",
                  "actor": annotator, "label": None, "payload": {"reason": reason, "retracted_label": answer["label"]},
                  "supersedes": answer["event_id"], "created_at": ts}
            if self._append(c, t["dataset"], [ev], person_chain(annotator)) != 1:
                raise TaskConflict(f"task '{task_id}': this answer was already undone")
            self._reset_queue_floors()  # the task reopens, possibly before the queue's floor
            until = (start + timedelta(seconds=lease_seconds)).isoformat(timespec="microseconds")
            a = task_assignments
            if c.execute(a.update().where(a.c.task_id == task_id).values(
                    assignee=annotator, lease_until=until)).rowcount == 0:
                c.execute(a.insert().values(task_id=task_id, assignee=annotator, assigned_at=ts, lease_until=until,
                                            n_assignments=1))
        return {"event_id": ev["event_id"], "retracted": answer["event_id"], "label": answer["label"]}

    def skip_task(self, task_id: str, annotator: str, reason: str, *, require_lease: bool = True) -> dict:
        """An annotator passes on a task with a reason (a `skip` event); the task goes back to the pool."""
        t = self.task(task_id)
        if t is None:
            raise TaskNotFound(f"task '{task_id}': no such task")
        if not reason or not str(reason).strip():
            raise TaskError(f"task '{task_id}': a skip needs a reason (e.g. 'unclear', 'not in the schema')")
        ts = now()
        with self.engine.begin() as c:
            if self._live(self._task_history(c, task_id)):
                raise TaskConflict(f"task '{task_id}' is already answered; undo the answer first")
            if require_lease:
                self._check_lease(c, task_id, annotator, ts)
            ev = {"event_id": uuid.uuid4().hex, "batch_id": t["batch_id"], "item_id": t["item_id"],
                  "task_id": task_id, "kind": "skip", "actor": annotator, "label": None,
                  "payload": {"reason": str(reason).strip()[:500], "task_kind": t["kind"]}, "created_at": ts}
            self._append(c, t["dataset"], [ev], person_chain(annotator))
            c.execute(task_assignments.update().where(task_assignments.c.task_id == task_id).values(lease_until=ts))
        return {"event_id": ev["event_id"]}

    def _item(self, c, dataset: str, item_id: str) -> dict:
        row = c.execute(sa.select(items.c.batch_id).where(items.c.dataset == dataset,
                                                          items.c.item_id == item_id)).first()
        if row is None:
            raise TaskNotFound(f"item '{item_id}' is not in dataset '{dataset}'")
        return {"batch_id": row.batch_id}

    def arbitrate(self, dataset: str, item_id: str, label: str, expert: str, rationale: str,
                  classes: Sequence[str], *, spec_version: str | None = None, guideline_version: str | None = None,
                  evidence: dict | None = None) -> dict:
        """An expert's final decision on a disputed item, with a mandatory rationale.

        Writes one `arbitration` event, then for every task of the item a `correction` superseding a
        different live answer (or a `human` answer where the task is still open), so the item's final
        label follows the expert.  All in one transaction.
        """
        if str(label) not in set(map(str, classes)):
            raise TaskError(f"item '{item_id}': label '{label}' is not in the schema of '{dataset}'; "
                            f"use one of {list(classes)}")
        if not rationale or not str(rationale).strip():
            raise TaskError(f"item '{item_id}': an arbitration needs a rationale (why this label)")
        with self.engine.begin() as c:
            return self._arbitrate(c, dataset, item_id, str(label), expert, rationale, spec_version=spec_version,
                                   guideline_version=guideline_version, evidence=evidence)

    def _arbitrate(self, c, dataset: str, item_id: str, label: str, expert: str, rationale: str, *,
                   spec_version: str | None = None, guideline_version: str | None = None,
                   evidence: dict | None = None, source: str = "arbitration",
                   submission_id: str | None = None) -> dict:
        meta = {"spec_version": spec_version, "guideline_version": guideline_version}
        item = self._item(c, dataset, item_id)
        if submission_id:  # idempotent retry of the same expert's decision (scoped to the expert)
            for r in c.execute(sa.select(label_events.c.event_id, label_events.c.label, label_events.c.payload)
                               .where(label_events.c.dataset == dataset, label_events.c.item_id == item_id,
                                      label_events.c.kind == "arbitration", label_events.c.actor == expert)):
                if json.loads(r.payload).get("submission_id") == submission_id:
                    if r.label != label:
                        raise TaskConflict(f"item '{item_id}': submission '{submission_id}' was already "
                                           f"recorded with another label; a retry must carry the same answer")
                    return {"event_id": r.event_id, "tasks": [], "duplicate": True}
        arb_id = uuid.uuid4().hex
        ts = now()
        events, corrected = [], []
        for t in c.execute(sa.select(tasks).where(tasks.c.dataset == dataset, tasks.c.item_id == item_id)
                           .order_by(tasks.c.created_at)).mappings():
            history = self._task_history(c, t["task_id"])
            live = self._live(history)
            if live and live[-1]["label"] == label:
                continue
            n_retracted = sum(h["kind"] == "retraction" for h in history)
            n_answers = sum(h["kind"] != "retraction" for h in history)
            key = (f"correction:{t['task_id']}:{n_answers}" if live else
                   f"answer:{t['task_id']}" + (f":{n_retracted}" if n_retracted else ""))
            events.append({"event_id": uuid.uuid4().hex, "dedup_key": key, "batch_id": t["batch_id"],
                           "item_id": item_id, "task_id": t["task_id"], "kind": "correction" if live else "human",
                           "actor": expert, "label": label,
                           "payload": {"task_kind": t["kind"], "source": "arbitration", "submission_id": None,
                                       "arbitration": arb_id, "door": source},
                           "supersedes": live[-1]["event_id"] if live else None, "created_at": ts, **meta})
            corrected.append(t["task_id"])
        arb = {"event_id": arb_id, "batch_id": item["batch_id"], "item_id": item_id, "kind": "arbitration",
               "actor": expert, "label": label, "created_at": ts,
               "payload": {"rationale": str(rationale).strip(), "tasks": corrected, "evidence": evidence or {},
                           "source": source, "submission_id": submission_id},
               **meta}
        try:
            self._append(c, dataset, [arb, *events], person_chain(expert))
        except sa.exc.IntegrityError:  # another writer recorded one of these corrections meanwhile
            raise TaskConflict(f"item '{item_id}' was answered or arbitrated concurrently; reload it") from None
        return {"event_id": arb_id, "tasks": corrected, "duplicate": False}

    def flag_guideline_gap(self, dataset: str, item_id: str, expert: str, note: str, *,
                           guideline_version: str | None = None) -> dict:
        """Record that an item exposes a gap in the guideline (a `guideline_gap` event for the guideline owners)."""
        if not note or not str(note).strip():
            raise TaskError(f"item '{item_id}': a guideline gap needs a note saying what the guideline misses")
        with self.engine.begin() as c:
            item = self._item(c, dataset, item_id)
            ev = {"event_id": uuid.uuid4().hex, "batch_id": item["batch_id"], "item_id": item_id,
                  "kind": "guideline_gap", "actor": expert, "label": None, "payload": {"note": str(note).strip()},
                  "guideline_version": guideline_version}
            self._append(c, dataset, [ev], person_chain(expert))
        return {"event_id": ev["event_id"]}

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

"""The tiered expert network: annotator registry, certification, continuous evaluation, dispatch rules.

Annotators are pseudonymous ids with a tier (L1 < L2 < L3 < expert), domains and languages.  Every
change of an annotator (added, certified, failed a test, suspended, reinstated, proposed for promotion,
promoted) is an event with its reason; the registry row is the current state derived from them.
Gold items (known answers) serve qualification tests and hidden honeypots; their true label never
reaches an annotator (a honeypot shows the models' fused label like an audit task, never the gold one,
and looks like an audit task: `shown_kind_and_reasons`).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from factory.engine import aggregate_full
from factory.errors import TaskError, TaskRefused
from factory.storage.ledger import Ledger, canonical, now, task_assignments
from factory.quality import wilson_interval
from factory.storage.tables import annotator_events, annotators, gold_items, wf_metadata
from factory.task_rows import stable_round, task_row

TIERS = ("L1", "L2", "L3", "expert")
RANK = {t: i for i, t in enumerate(TIERS)}

@dataclass(frozen=True)
class Policy:
    """Thresholds of the workforce (from the spec's `workforce` section)."""

    pass_threshold: dict[str, float]
    test_size: int = 10
    suspend_below: float = 0.7
    promote_above: float = 0.95
    min_gold_answers: int = 10

    @classmethod
    def from_spec(cls, spec) -> "Policy":
        w = spec.workforce
        return cls(pass_threshold=dict(w.pass_threshold), test_size=w.test_size, suspend_below=w.suspend_below,
                   promote_above=w.promote_above, min_gold_answers=w.min_gold_answers)


def tier_at_least(tier: str, required: str) -> bool:
    return RANK[tier] >= RANK[required]


class Workforce:
    """Registry and evaluation of the people who answer tasks, stored beside the ledger."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        wf_metadata.create_all(ledger.engine)

    # ------------------------------------------------------------------ registry
    def add(self, annotator_id: str, tier: str = "L1", domains: Iterable[str] = (), languages: Iterable[str] = (),
            max_open_tasks: int = 50) -> dict:
        """Register a pseudonymous annotator (tier L1 until certified higher, unless given)."""
        if tier not in RANK:
            raise TaskError(f"tier '{tier}' unknown; use one of {list(TIERS)}")
        if not annotator_id or any(ch.isspace() for ch in annotator_id):
            raise TaskError(f"annotator id '{annotator_id}' must be a non-empty pseudonym without spaces")
        with self.ledger.engine.begin() as c:
            if c.execute(sa.select(annotators.c.annotator_id).where(annotators.c.annotator_id == annotator_id)).first():
                raise TaskError(f"annotator '{annotator_id}' already exists; see `factory annotators show {annotator_id}`")
            row = dict(annotator_id=annotator_id, tier=tier, domains=canonical(sorted(domains)),
                       languages=canonical(sorted(languages)), status="active", max_open_tasks=max_open_tasks,
                       created_at=now())
            c.execute(annotators.insert().values(**row))
            self._event(c, annotator_id, "added", f"registered at tier {tier}", {"tier": tier})
        return self.get(annotator_id)

    def get(self, annotator_id: str) -> dict:
        with self.ledger.reader.connect() as c:
            row = c.execute(sa.select(annotators).where(annotators.c.annotator_id == annotator_id)).mappings().first()
        if row is None:
            raise TaskError(f"annotator '{annotator_id}' is not registered; add them with "
                            f"`factory annotators add {annotator_id} --tier L1` (or L2, L3, expert)")
        d = dict(row)
        d["domains"], d["languages"] = json.loads(d["domains"]), json.loads(d["languages"])
        return d

    def list(self) -> pd.DataFrame:
        with self.ledger.reader.connect() as c:
            return pd.DataFrame(c.execute(sa.select(annotators).order_by(annotators.c.annotator_id)).mappings().all(),
                                columns=[col.name for col in annotators.c])

    def events(self, annotator_id: str | None = None) -> pd.DataFrame:
        q = sa.select(annotator_events).order_by(annotator_events.c.id)
        if annotator_id:
            q = q.where(annotator_events.c.annotator_id == annotator_id)
        with self.ledger.reader.connect() as c:
            return pd.DataFrame(c.execute(q).mappings().all(), columns=[col.name for col in annotator_events.c])

    def _event(self, c, annotator_id: str, kind: str, reason: str, data: dict | None = None) -> None:
        c.execute(annotator_events.insert().values(annotator_id=annotator_id, kind=kind, reason=reason,
                                                   data=canonical(data or {}), created_at=now()))

    def _set(self, annotator_id: str, kind: str, reason: str, data: dict | None = None, **values) -> None:
        with self.ledger.engine.begin() as c:
            if values:
                c.execute(annotators.update().where(annotators.c.annotator_id == annotator_id).values(**values))
            self._event(c, annotator_id, kind, reason, data)

    def suspend(self, annotator_id: str, reason: str) -> None:
        self.get(annotator_id)
        self._set(annotator_id, "suspended", reason, status="suspended")

    def reinstate(self, annotator_id: str, reason: str) -> None:
        self.get(annotator_id)
        self._set(annotator_id, "reinstated", reason, status="active")

    def promote(self, annotator_id: str, tier: str, reason: str) -> None:
        cur = self.get(annotator_id)
        if tier not in RANK:
            raise TaskError(f"tier '{tier}' unknown; use one of {list(TIERS)}")
        self._set(annotator_id, "promoted", reason, {"from": cur["tier"], "to": tier}, tier=tier)

    # ------------------------------------------------------------------ gold
    def add_gold(self, dataset: str, labels: dict[str, str], source: str = "expert") -> int:
        """Declare items with known answers (for qualification tests and hidden honeypots)."""
        have = set(self.gold(dataset)["item_id"])
        rows = [dict(dataset=dataset, item_id=i, label=str(lab), source=source, created_at=now())
                for i, lab in labels.items() if i not in have]
        if rows:
            with self.ledger.engine.begin() as c:
                c.execute(gold_items.insert(), rows)
        return len(rows)

    def gold(self, dataset: str) -> pd.DataFrame:
        with self.ledger.reader.connect() as c:
            return pd.DataFrame(c.execute(sa.select(gold_items).where(gold_items.c.dataset == dataset)).mappings().all(),
                                columns=[col.name for col in gold_items.c])

    # ------------------------------------------------------------------ certification and scores
    def gold_answers(self, dataset: str) -> pd.DataFrame:
        """Every human answer given on a gold item, with whether it was right."""
        gold = self.gold(dataset)
        if gold.empty:
            return pd.DataFrame(columns=["annotator", "item_id", "label", "gold", "correct", "task_kind"])
        dec = self.ledger.events(dataset, kind="human")
        dec = dec[dec["item_id"].isin(gold["item_id"])]
        out = dec.rename(columns={"actor": "annotator"}).merge(
            gold[["item_id", "label"]].rename(columns={"label": "gold"}), on="item_id")
        out["correct"] = out["label"] == out["gold"]
        out["task_kind"] = out["payload"].map(lambda p: json.loads(p).get("task_kind"))
        return out[["annotator", "item_id", "label", "gold", "correct", "task_kind"]]

    def grade(self, dataset: str, annotator_id: str, tier: str, policy: Policy) -> dict:
        """Grade a qualification test: gold accuracy (Wilson interval) against the tier's pass threshold."""
        cur = self.get(annotator_id)
        ans = self.gold_answers(dataset)
        ans = ans[(ans["annotator"] == annotator_id) & (ans["task_kind"] == "qualification")]
        if len(ans) < policy.test_size:
            raise TaskError(f"annotator '{annotator_id}' answered {len(ans)} of the {policy.test_size} "
                            f"qualification items of '{dataset}'; grade after the test is complete")
        k, n = int(ans["correct"].sum()), len(ans)
        lo, hi = wilson_interval(k, n)
        need = policy.pass_threshold[tier]
        passed = k / n >= need
        data = {"tier": tier, "correct": k, "answers": n, "accuracy": k / n, "wilson": [lo, hi], "threshold": need}
        if passed:
            new_tier = tier if RANK[tier] > RANK[cur["tier"]] else cur["tier"]
            self._set(annotator_id, "certified", f"passed the {tier} test of '{dataset}': {k}/{n} correct "
                      f"(≥ {need:.0%})", data, tier=new_tier)
        else:
            self._set(annotator_id, "failed_certification", f"failed the {tier} test of '{dataset}': {k}/{n} "
                      f"correct (< {need:.0%})", data)
        return data | {"passed": passed}

    def engine_reliability(self, dataset: str) -> pd.Series:
        """The label engine's reliability of each person (Dawid-Skene over every current human answer)."""
        dec = self.ledger.human_decisions(dataset)
        if dec.empty or dec["item_id"].nunique() < 2:
            return pd.Series(dtype=float)
        res = aggregate_full(dec.rename(columns={"actor": "worker_id"})[["item_id", "worker_id", "label"]],
                             method="auto")
        return res.workers["reliability"]

    def scores(self, dataset: str, reliability: pd.Series | None = None) -> pd.DataFrame:
        """Per annotator: gold accuracy with its Wilson interval, and the engine's reliability estimate."""
        if reliability is None:
            reliability = self.engine_reliability(dataset)
        ans = self.gold_answers(dataset)
        people = self.list()
        rows = []
        for a in people.itertuples(index=False):
            mine = ans[ans["annotator"] == a.annotator_id]
            k, n = int(mine["correct"].sum()), len(mine)
            lo, hi = wilson_interval(k, n) if n else (0.0, 1.0)
            rows.append(dict(annotator_id=a.annotator_id, tier=a.tier, status=a.status, gold_answers=n,
                             gold_accuracy=(k / n) if n else np.nan, gold_low=lo, gold_high=hi,
                             reliability=float(reliability.get(a.annotator_id, np.nan)) if reliability is not None
                             else np.nan))
        return pd.DataFrame(rows)

    def evaluate(self, dataset: str, policy: Policy, reliability: pd.Series | None = None) -> list[dict]:
        """Suspend annotators whose gold accuracy is surely below the floor; propose promotions above the bar.

        "Surely" means the whole Wilson interval: suspended when its upper bound is below
        `suspend_below`, proposed for promotion when its lower bound is above `promote_above`.
        """
        changes = []
        history = self.events()
        proposed = set(history.loc[history["kind"] == "promotion_proposed", "annotator_id"])
        # the decisions rest on gold answers only; skip the engine's reliability unless it was passed in
        gold_only = reliability if reliability is not None else pd.Series(dtype=float)
        for s in self.scores(dataset, gold_only).itertuples(index=False):
            if s.gold_answers < policy.min_gold_answers:
                continue
            if s.status == "active" and s.gold_high < policy.suspend_below:
                reason = (f"gold accuracy {s.gold_accuracy:.0%} on {s.gold_answers} answers, Wilson interval "
                          f"[{s.gold_low:.2f}, {s.gold_high:.2f}] entirely below {policy.suspend_below:.0%}")
                self.suspend(s.annotator_id, reason)
                changes.append({"annotator_id": s.annotator_id, "kind": "suspended", "reason": reason})
            elif (s.status == "active" and s.gold_low > policy.promote_above and s.tier != "expert"
                  and s.annotator_id not in proposed):
                nxt = TIERS[RANK[s.tier] + 1]
                reason = (f"gold accuracy {s.gold_accuracy:.0%} on {s.gold_answers} answers, Wilson lower bound "
                          f"{s.gold_low:.2f} above {policy.promote_above:.0%}: propose {s.tier} -> {nxt}")
                self._set(s.annotator_id, "promotion_proposed", reason, {"to": nxt})
                changes.append({"annotator_id": s.annotator_id, "kind": "promotion_proposed", "reason": reason})
        return changes

    # ------------------------------------------------------------------ dispatch rules
    def check_can_answer(self, annotator_id: str, task: dict, item_answered_by: Sequence[str] = (),
                         domain: str | None = None) -> dict:
        """Refuse an answer from a suspended, unqualified, unassigned annotator or on their own label."""
        return _check_person(self.get(annotator_id), task, item_answered_by, domain)


def _check_person(a: dict, task: dict, item_answered_by: Iterable[str] = (), domain: str | None = None) -> dict:
    """The rules on a registered person `a` (registry row) answering `task`; raises TaskRefused."""
    annotator_id = a["annotator_id"]
    if a["status"] != "active":
        raise TaskRefused(f"annotator '{annotator_id}' is suspended and cannot answer task '{task['task_id']}'; "
                          f"see `factory annotators show {annotator_id}`")
    need = task.get("required_tier") or "L1"
    if not tier_at_least(a["tier"], need):
        raise TaskRefused(f"task '{task['task_id']}' needs tier {need}; annotator '{annotator_id}' is {a['tier']}")
    if domain and a["domains"] and domain not in a["domains"] and need == "expert":
        raise TaskRefused(f"task '{task['task_id']}' needs an expert of domain '{domain}'; "
                          f"'{annotator_id}' covers {a['domains']}")
    assigned = task.get("assigned_to")
    if assigned and assigned != annotator_id:
        raise TaskRefused(f"task '{task['task_id']}' is assigned to someone else, not to '{annotator_id}'")
    if annotator_id in set(item_answered_by) and task.get("kind") in ("review", "verify", "arbitrate", "second"):
        raise TaskRefused(f"task '{task['task_id']}' reviews a label that '{annotator_id}' gave; nobody "
                          f"reviews their own label")
    return a


def ensure_registry_tables(ledger: Ledger) -> None:
    """Create the workforce tables on first use (embedded), once per ledger object."""
    if not ledger.__dict__.get("_workforce_tables"):
        wf_metadata.create_all(ledger.engine)
        ledger.__dict__["_workforce_tables"] = True


_ONE_PERSON = sa.select(annotators).where(annotators.c.annotator_id == sa.bindparam("who"))


def registry_rows(ledger: Ledger, annotator_ids: Iterable[str], *, conn=None) -> dict[str, dict]:
    """Registry rows (domains and languages decoded) of the given people who are registered, in one query
    (on `conn`, inside the caller's transaction, when given)."""
    ids = sorted(set(annotator_ids))
    if conn is None:
        ensure_registry_tables(ledger)
    else:  # the caller made sure of the tables before its transaction (SQLite's writer would wait for itself)
        assert ledger.__dict__.get("_workforce_tables"), "call ensure_registry_tables(ledger) before the transaction"
    # one person (every workbench request): a statement built once, no IN list to expand per call
    q = ((_ONE_PERSON, {"who": ids[0]}) if len(ids) == 1 else
         (sa.select(annotators).where(annotators.c.annotator_id.in_(ids)), {}))
    if not ids:
        rows = []
    elif conn is not None:
        rows = conn.execute(*q).mappings().all()
    else:
        with ledger.reader.connect() as c:
            rows = c.execute(*q).mappings().all()
    return {r["annotator_id"]: dict(r, domains=json.loads(r["domains"]), languages=json.loads(r["languages"]))
            for r in rows}


def _domains(person) -> list[str]:
    d = person["domains"] if isinstance(person, dict) else person.domains
    return json.loads(d) if isinstance(d, str) else list(d or [])


def can_take(person: dict | None, task: dict, *, seen: Iterable[str] = (), load: int = 0,
             registered_only: bool = False) -> bool:
    """The one dispatch rule, for push (`dispatch`) and pull (`next_task`): may this person be given this task?

    A registered person (registry row): active, tier at least the task's (an arbitration needs an
    expert), below their `max_open_tasks`, of the task's domain when it needs an expert, and not
    already on the item (blind overlap, nobody reviews their own label).  Someone not registered
    (None): L1 tasks only, never an arbitration or qualification, and not at all when the spec says
    `registered_only` — the same lines the gate (`answer_refusal`) holds at answer time.
    """
    need = "expert" if task.get("kind") == "arbitrate" else (task.get("required_tier") or "L1")
    if person is None:
        return not registered_only and need == "L1" and task.get("kind") not in ("arbitrate", "qualification")
    domain = task.get("domain")
    return (person["status"] == "active" and tier_at_least(person["tier"], need)
            and person["annotator_id"] not in set(seen) and load < person["max_open_tasks"]
            and (need != "expert" or not domain or not _domains(person) or domain in _domains(person)))


def pull_preference(task: dict) -> tuple:
    """Which of the tasks a person may take comes first: the one needing the highest tier, then queue order.

    The mirror of `dispatch`'s choice of the lowest sufficient tier for a task: work that needs
    a senior person goes to the senior person who asks, so experts stay on what only they can do.
    """
    need = "expert" if task.get("kind") == "arbitrate" else (task.get("required_tier") or "L1")
    return (-RANK[need], str(task.get("created_at")), str(task.get("task_id")))


def dispatch(tasks: pd.DataFrame, people: pd.DataFrame, answered_by: dict[str, set[str]],
             open_load: dict[str, int] | None = None, seed: int = 0) -> pd.Series:
    """Assign open tasks to qualified, available annotators with load balancing (push dispatch).

    `tasks` has task_id, item_id, kind, required_tier (and optionally domain); `people` is the
    registry; `answered_by` maps item_id to the annotators who already answered (or were assigned)
    that item, so overlap stays blind (one person per item) and nobody reviews their own label.
    Eligibility is `can_take` (the rule pull dispatch uses too).  Returns task_id -> annotator_id
    (tasks nobody can take are left out).
    """
    rng = np.random.default_rng(seed)
    load = dict(open_load or {})
    people_rows = people.to_dict("records")
    out: dict[str, str] = {}
    seen = {k: set(v) for k, v in answered_by.items()}
    order = rng.permutation(len(tasks))
    task_rows = tasks.to_dict("records")
    for i in order:
        t = task_rows[i]
        if t.get("domain") is not None and not isinstance(t.get("domain"), str):
            t = dict(t, domain=None)  # NaN from a frame without domains
        cands = [p for p in people_rows if can_take(p, t, seen=seen.get(t["item_id"], ()),
                                                    load=load.get(p["annotator_id"], 0))]
        if not cands:
            continue
        # the lowest sufficient tier first (experts stay free for what needs them), then the least loaded
        best = min(cands, key=lambda p: (RANK[p["tier"]], load.get(p["annotator_id"], 0), p["annotator_id"]))
        out[t["task_id"]] = best["annotator_id"]
        load[best["annotator_id"]] = load.get(best["annotator_id"], 0) + 1
        seen.setdefault(t["item_id"], set()).add(best["annotator_id"])
    return pd.Series(out, dtype=object)


def next_task(fx, annotator: str, *, dataset: str | None = None, exclude_kinds=None,
              lease_seconds: float = 600, spec_of=None, with_item: bool = False) -> dict | None:
    """Lease `annotator` their next task under the dispatch policy (`can_take`, `pull_preference`); None if none.

    The workbench's queue: the ledger walks open tasks in queue order, skipping what the person
    skipped or already answered; this policy keeps the tasks they may take (tier, domain,
    registration, per-person limit) and takes the one needing the highest tier first.
    """
    specs: dict = {}

    def registered_only(ds: str) -> bool:
        if ds not in specs:
            specs[ds] = (spec_of or fx.spec)(ds).workforce.registered_only
        return specs[ds]

    def policy(c) -> dict:
        # read in the lease transaction, on its connection: the person's row and how many tasks they hold
        person = registry_rows(fx.ledger, [annotator], conn=c).get(annotator)
        if person is not None and person["status"] != "active":
            raise TaskRefused(f"annotator '{annotator}' is suspended; see `factory annotators show {annotator}`")
        held = 0
        if person is not None:
            a = task_assignments
            held = c.execute(sa.select(sa.func.count()).select_from(a).where(
                a.c.assignee == annotator, a.c.lease_until >= now())).scalar_one()
        tiers = tuple(t for t in TIERS if RANK[t] <= RANK[person["tier"]]) if person is not None else ("L1",)
        # at their limit of held tasks a person only renews the lease they hold (may_add=False)
        return dict(tiers=tiers,
                    accept=lambda t: can_take(person, t, load=held, registered_only=registered_only(t["dataset"])),
                    # an L1 person (or someone not registered) is offered L1 tasks only: the preference would be
                    # queue order
                    prefer=pull_preference if len(tiers) > 1 else None,
                    may_add=person is None or held < person["max_open_tasks"])

    ensure_registry_tables(fx.ledger)  # before the transaction (SQLite's writer would wait for itself)
    return fx.ledger.next_task(annotator, dataset=dataset, exclude_kinds=exclude_kinds, lease_seconds=lease_seconds,
                               policy=policy, with_item=with_item)


def shown_kind_and_reasons(kind: str, reasons: Sequence[str]) -> tuple[str, list[str]]:
    """What the person answering sees of a task's kind and reasons: a hidden gold task looks like an audit.

    A honeypot that announced itself would measure nothing; every page, API payload and export
    an annotator sees goes through this.
    """
    if kind == "gold":
        return "audit", ["audit"]
    return kind, list(reasons)


def _lease_holder(ledger: Ledger, task_id: str) -> str | None:
    """Who holds an unexpired lease on the task (the workbench's assignment), if anyone."""
    a = ledger.assignment(task_id) if hasattr(ledger, "assignment") else None
    if a and a.get("lease_until", "") >= now():
        return a["assignee"]
    return None


def open_qualification(fx, dataset: str, annotator_id: str, tier: str, n: int, seed: int = 0) -> list[str]:
    """Open a qualification test: n gold items as tasks leased to `annotator_id` alone (no answer shown)."""
    wf = Workforce(fx.ledger)
    wf.get(annotator_id)
    gold = wf.gold(dataset)
    if len(gold) < n:
        raise TaskError(f"dataset '{dataset}' has {len(gold)} gold item(s); a qualification test needs {n} "
                        f"(add them with `factory gold add FILE --dataset {dataset}`)")
    pick = gold.sample(n=n, random_state=seed)["item_id"].tolist()
    rows = [task_row(dataset, "qualification", i, "qualification", [f"qualification test {tier} for {annotator_id}"],
                  tier="L1", round_=stable_round(annotator_id, tier)) for i in pick]
    fx.ledger.create_tasks(rows)
    ids = [fx.ledger.public_task_id(r["task_id"]) for r in rows]  # the keys became public ids
    far = "9999-12-31T00:00:00+00:00"
    with fx.ledger.engine.begin() as c:
        for tid in ids:
            if c.execute(sa.select(task_assignments.c.task_id).where(task_assignments.c.task_id == tid)).first():
                continue
            c.execute(task_assignments.insert().values(task_id=tid, assignee=annotator_id, assigned_at=now(),
                                                       lease_until=far, n_assignments=1))
    return ids


def answer_refusal(spec, person: dict | None, t: dict, annotator: str, *, item_answered_by: Iterable[str] = (),
                   rationale: str | None = None) -> TaskError | None:
    """The workforce rules for `annotator` answering task `t` (leases aside): the error to raise, or None.

    `person` is the registry row (None: not registered).  Refused (TaskRefused): a suspended or
    under-tier annotator, a review of one's own label, an arbitration or qualification by someone
    not registered, anyone not registered on a task above L1, and anyone not registered when the spec
    says `workforce.registered_only`.  An arbitration without a rationale is a TaskError.
    """
    need = t.get("required_tier") or "L1"
    if t["kind"] == "arbitrate":
        need = "expert"  # an arbitration is an expert's decision, whatever tier the task row says
    if person is not None:
        try:
            _check_person(person, dict(t, required_tier=need), item_answered_by, spec.workforce.domain)
        except TaskRefused as e:
            return e
    elif spec.workforce.registered_only or t["kind"] in ("arbitrate", "qualification") or need != "L1":
        why = ("an arbitration needs a registered expert" if t["kind"] == "arbitrate" else
               f"dataset '{t['dataset']}' accepts answers from registered annotators only" if
               spec.workforce.registered_only or t["kind"] == "qualification" else
               f"a task of tier {need} accepts answers from registered annotators only")
        tier = "expert" if t["kind"] == "arbitrate" else need  # a hint that works when pasted: --tier is required
        return TaskRefused(f"'{annotator}' is not in the annotator registry; {why} "
                           f"(`factory annotators add {annotator} --tier {tier}`)")
    if t["kind"] == "arbitrate" and (not rationale or not str(rationale).strip()):
        return TaskError(f"task '{t['task_id']}' is an expert arbitration: the decision needs a rationale "
                         f"(--rationale \"why this label\")")
    return None


def check_answer(fx, t: dict, annotator: str, *, rationale: str | None = None, leases_checked: bool = False) -> None:
    """Apply the workforce rules (`answer_refusal`) to `annotator` answering task `t`; raise (and log) when they refuse.

    Refusals of a registered annotator are logged as `refused_answer` events.  Without
    `leases_checked`, a task leased to someone else is refused too.  A check only: answers enter the
    ledger through `factory.gate.submit_answers`, which applies the same rules (and the lease first).
    """
    ledger = fx.ledger
    spec = fx.spec(t["dataset"])
    wf = Workforce(ledger)
    try:
        person = wf.get(annotator)
    except TaskError:
        person = None
    holder = None if leases_checked else _lease_holder(ledger, t["task_id"])
    err = None
    if holder and holder != annotator:
        err = TaskRefused(f"task '{t['task_id']}' is assigned to someone else, not to '{annotator}'")
    if err is None:
        ev = ledger.events(t["dataset"], item_id=t["item_id"], kind=["human", "correction"])
        others = set(ev.loc[ev["task_id"] != t["task_id"], "actor"])
        err = answer_refusal(spec, person, t, annotator, item_answered_by=others, rationale=rationale)
    if err is not None:
        if person is not None:
            with ledger.engine.begin() as c:
                wf._event(c, annotator, "refused_answer", str(err), {"task_id": t["task_id"]})
        raise err

"""Workbench load benchmark: 50 concurrent simulated annotators submit 5,000 answers through the real HTTP API.

Setup (seeded, synthetic): a factory root with one dataset of 5 classes, 5,000 short synthetic items
(one review task each, created directly in the ledger), 50 annotator users with API tokens.  The
server is `factory serve` started as a subprocess on 127.0.0.1 only (uvicorn, `--workers` processes,
default 1) over the embedded SQLite ledger (WAL).  The clients run in this process: one thread per
annotator with its own keep-alive connection (stdlib http.client: an httpx.AsyncClient pool was
profiled to be the bottleneck, 20 answers/s with both processes mostly idle), each looping
`GET /api/tasks/next` then `POST /api/tasks/{id}/answer` with a fresh submission_id.  1% of the
submissions are resent with the same submission_id to exercise idempotency (must answer 200).

Two runs, each on a fresh factory and server:
* paced: each annotator thinks ~Exp(mean 1 s) between answers (people read for several seconds, so
  this is already ~5x faster than a real team of 50; offered load ~45 answers/s);
* saturation: no think time, a closed loop; every annotator always has a request in flight, so by
  Little's law latency = 50 / throughput: this run measures the ceiling, not the latency people see.

Checks after the run (from the ledger, not from the client's bookkeeping): exactly 5,000 human
events, one per task, each by the annotator whose submission got 201; no duplicate event for a
resent submission; the hash chain verifies.

Reported: throughput (answers per second over the whole run), p50/p95/p99 latency of the answer
POST (the "submit latency" of the issue) and of GET next, HTTP status counts, CPU count.
Goal (issue 5): p95 submit latency <= 50 ms on a 2-core machine.

With ``--database-url postgresql+psycopg2://USER@HOST:5432/postgres`` the same runs go against PostgreSQL:
each creates its own database on that server, migrates it (`factory db upgrade`), points the server at
it with FACTORY_DATABASE_URL and drops it afterwards.

Run: ``python -m benchmarks.workbench --out bench-out [--answers 5000 --annotators 50 --workers 1]``
or ``factory bench workbench --out bench-out``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

NAME = "workbench"
CLASSES = ["business", "entertainment", "politics", "sports", "tech"]
WORDS = ("market shares bank film music election minister match goal league software chip phone "
         "profit actor vote striker network award budget court player data").split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_factory(root: Path, n_tasks: int, n_annotators: int, seed: int = 0) -> tuple[dict, dict]:
    """A factory root with `n_tasks` open review tasks and `n_annotators` users; returns (tokens, truth)."""
    import pandas as pd
    import yaml

    from factory.ingest import ingest
    from factory.pipeline import Factory
    from factory.users import UserStore

    rng = np.random.default_rng(seed)
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    spec = {"name": "load", "description": "synthetic load test", "license": "CC0-1.0",
            "classes": [{"name": c, "definition": f"about {c}"} for c in CLASSES],
            "guideline": {"version": "1.0", "text": "Pick the topic."}}
    (root / "datasets" / "load.yaml").write_text(yaml.safe_dump(spec))
    fx = Factory.at(root)
    texts = [f"item {i}: " + " ".join(rng.choice(WORDS, size=12)) for i in range(n_tasks)]
    csv = root / "load.csv"
    pd.DataFrame({"text": texts}).to_csv(csv, index=False)
    batch = ingest(csv, fx.spec("load"), fx.ledger).batch_id
    items = fx.ledger.items("load", batch_id=batch)
    truth = {}
    rows = []
    for i, r in enumerate(items.itertuples()):
        tid = f"t{i:06d}"
        truth[tid] = CLASSES[int(rng.integers(len(CLASSES)))]
        rows.append(dict(task_id=tid, dataset="load", batch_id=batch, item_id=r.item_id, kind="review",
                         reasons=["low_confidence"], suggestion=truth[tid], created_at=f"2026-01-01T00:00:00.{i:06d}"))
    fx.ledger.create_tasks(rows)
    store = UserStore.for_ledger(fx.ledger)
    tokens = {f"ann-{k:02d}": store.add(f"ann-{k:02d}", "annotator") for k in range(n_annotators)}
    fx.ledger.engine.dispose()
    fx.ledger.reader.dispose()
    return tokens, truth


def _annotator(name: str, token: str, port: int, truth: dict, stats: dict, stop_at: int, rng, think_s: float) -> None:
    """One simulated person: take the next task, answer it, think, repeat (own keep-alive connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        for attempt in (1, 2):
            try:
                conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
                r = conn.getresponse()
                data = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the server closed an idle keep-alive connection (uvicorn: after 5 s); reconnect and resend,
                # which is safe: GET next renews the same lease, an answer is idempotent by submission_id
                conn.close()
                if attempt == 2:
                    raise
                with stats["lock"]:
                    stats["reconnects"] += 1
                t0 = time.perf_counter()
        return r.status, data, (time.perf_counter() - t0) * 1000

    def count(key: str) -> None:
        with stats["lock"]:
            stats["status"][key] = stats["status"].get(key, 0) + 1

    if think_s:
        time.sleep(rng.uniform(0, think_s))  # people do not all start in the same millisecond
    while stats["answered"] < stop_at:
        # the load dataset's queue: a concurrent batch run (--with-batch-run) opens tasks of its own dataset,
        # which its simulated people answer
        at = time.perf_counter()
        status, data, ms = call("GET", "/api/tasks/next?dataset=load")
        stats["next_ms"].append(ms)
        stats["next_at"].append(at)
        count(f"next {status}")
        if status == 204:
            return
        if status != 200:
            stats["errors"].append(f"next: {status} {data[:200]!r}")
            return
        tid = json.loads(data)["task_id"]
        if tid not in truth:
            stats["errors"].append(f"next: offered {tid}, not a task of the load dataset")
            return
        body = {"label": truth[tid], "submission_id": uuid.uuid4().hex}
        at = time.perf_counter()
        status, data, ms = call("POST", f"/api/tasks/{tid}/answer", body)
        stats["submit_ms"].append(ms)
        stats["submit_at"].append(at)
        count(f"answer {status}")
        if status == 201 or (status == 200 and tid not in stats["accepted"]):  # 200: resent after a reconnect
            event_id = json.loads(data)["event_id"]
            with stats["lock"]:
                stats["answered"] += 1
                stats["accepted"][tid] = (name, event_id)
            if rng.random() < 0.01:  # a client retry: the same submission again must be a no-op
                status2, data2, _ = call("POST", f"/api/tasks/{tid}/answer", body)
                count(f"retry {status2}")
                if status2 != 200 or json.loads(data2)["event_id"] != event_id:
                    stats["errors"].append(f"retry of {tid} answered {status2}")
        else:
            stats["errors"].append(f"answer {tid}: {status} {data[:200]!r}")
        if think_s:  # reading the next item: exponential think time
            time.sleep(float(rng.exponential(think_s)))
    conn.close()


def _drive(port: int, tokens: dict, truth: dict, answers: int, seed: int, think_s: float = 0.0) -> dict:
    """Run one thread per annotator until `answers` answers are accepted (or the queue is empty)."""
    stats = {"answered": 0, "submit_ms": [], "next_ms": [], "submit_at": [], "next_at": [], "status": {}, "accepted": {}, "errors": [],
             "reconnects": 0, "lock": threading.Lock()}
    threads = [threading.Thread(target=_annotator, args=(n, tok, port, truth, stats, answers,
                                                         np.random.default_rng(seed + k), think_s), daemon=True)
               for k, (n, tok) in enumerate(tokens.items())]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["seconds"] = time.perf_counter() - t0
    return stats


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU seconds of a process, with `children` also of its live direct children (the server's
    uvicorn workers; Linux /proc), 0 where unavailable."""
    total = 0.0
    try:
        procs = [Path(f"/proc/{pid}/stat")] + ([p for p in Path("/proc").glob("[0-9]*/stat")
                                                if p.parent.name != str(pid)] if children else [])
    except OSError:
        return 0.0
    for path in procs:
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if path.parent.name == str(pid) or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _fresh_database(server_url: str, name: str) -> str:
    """Create an empty database `name` on the PostgreSQL server of `server_url`, migrated to the head; its URL."""
    import sqlalchemy as sa

    from factory.storage.db import upgrade

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    return url


def _drop_database(server_url: str, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _start_batch_run(env: dict, items: int) -> tuple[subprocess.Popen, Path]:
    """A real pipeline run (benchmarks.pipeline: every stage through Dagster) on the same ledger database."""
    out = Path(tempfile.mkdtemp(prefix="workbench-batch-"))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.pipeline", "--items", str(items), "--out", str(out)],
                            env={k: v for k, v in env.items() if k != "FACTORY_HOME"} | {"PGAPPNAME": BATCH_APP},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, out


# libpq's application name of each process's connections, so the session sampler tells them apart
SERVER_APP, BATCH_APP = "workbench-server", "workbench-batch"
SESSIONS_SQL = """SELECT pid, application_name, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''),
                         left(regexp_replace(query, '\\s+', ' ', 'g'), 90), pg_blocking_pids(pid)
                  FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"""


def _sample_sessions(url: str, stop: threading.Event, samples: list, every: float = 0.1) -> None:
    """Every `every` s until `stop`: each session of the database (pg_stat_activity), with what it waits on and,
    for a lock wait, who blocks it; appended to `samples` as (perf_counter, rows)."""
    import sqlalchemy as sa

    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            while not stop.is_set():
                samples.append((time.perf_counter(), [tuple(r) for r in c.exec_driver_sql(SESSIONS_SQL)]))
                stop.wait(every)
    finally:
        eng.dispose()


def _session_summary(samples: list, windows: dict[str, tuple[float, float]]) -> dict:
    """What the sampled sessions did, per time window and application: connections open (max), sessions active on
    average, the share of active samples waiting (by wait event), and every lock wait with its blocker."""
    out = {}
    at = dict(samples)
    for wname, (lo, hi) in windows.items():
        rows = [(t, r) for t, rs in samples if lo <= t < hi for r in rs]
        n = max(1, sum(1 for t, _ in samples if lo <= t < hi))
        by_app: dict = {}
        for t, (pid, app, state, wtype, wevent, query, blockers) in rows:
            a = by_app.setdefault(app or "other", {"conn_samples": 0, "active": 0, "idle_in_tx": 0, "waits": {},
                                                   "lock_waits": {}, "max_conns": {}, "pids": set()})
            a["conn_samples"] += 1
            a["pids"].add(pid)
            a["max_conns"][t] = a["max_conns"].get(t, 0) + 1
            if state == "idle in transaction":
                a["idle_in_tx"] += 1
            if state == "active":
                a["active"] += 1
                if wtype and wtype != "Client":
                    k = f"{wtype}:{wevent}"
                    a["waits"][k] = a["waits"].get(k, 0) + 1
                if wtype == "Lock":
                    blocker = next(((r[1], r[5]) for r in at[t] if r[0] in (blockers or [])), ("?", "?"))
                    k = f"{wevent}: {query[:60]} <- {blocker[0]}: {blocker[1][:60]}"
                    a["lock_waits"][k] = a["lock_waits"].get(k, 0) + 1
        out[wname] = {"samples": n, "apps": {app: {
            "connections_max": max(a["max_conns"].values()), "connections_seen": len(a["pids"]), "connections_mean": round(a["conn_samples"] / n, 1),
            "active_mean": round(a["active"] / n, 2), "idle_in_transaction_mean": round(a["idle_in_tx"] / n, 2),
            "wait_samples": dict(sorted(a["waits"].items(), key=lambda kv: -kv[1])[:8]),
            "lock_wait_samples": dict(sorted(a["lock_waits"].items(), key=lambda kv: -kv[1])[:8])}
            for app, a in by_app.items()}}
    return out


def _split(at: list[float], ms: list[float], windows: dict[str, tuple[float, float]]) -> dict:
    """p50/p95/p99 of the requests that started in each time window."""
    at_, ms_ = np.asarray(at), np.asarray(ms)
    out = {}
    for name, (lo, hi) in windows.items():
        v = ms_[(at_ >= lo) & (at_ < hi)]
        out[name] = {"n": int(v.size), **({f"p{q}": round(float(np.percentile(v, q)), 1) for q in (50, 95, 99)}
                                          if v.size else {})}
    return out


def _phase(answers: int, annotators: int, workers: int, think_s: float, seed: int, keep: bool,
           database_url: str | None = None, batch_items: int = 0) -> tuple[dict, dict]:
    """One load run on a fresh factory (and fresh database) and a fresh server; returns (result, raw latencies)."""
    from factory.pipeline import Factory

    root = Path(tempfile.mkdtemp(prefix="workbench-bench-"))
    env = dict(os.environ, FACTORY_HOME=str(root), PYTHONUNBUFFERED="1")
    env.pop("FACTORY_DATABASE_URL", None)
    db_name = None
    if database_url:  # PostgreSQL: a fresh database per run on that server, migrated, dropped afterwards
        db_name = f"workbench_bench_{os.getpid()}_{'paced' if think_s else 'saturation'}"
        env["FACTORY_DATABASE_URL"] = _fresh_database(database_url, db_name)
    saved = os.environ.get("FACTORY_DATABASE_URL")
    os.environ.pop("FACTORY_DATABASE_URL", None)
    if db_name:
        os.environ["FACTORY_DATABASE_URL"] = env["FACTORY_DATABASE_URL"]
    print(f"[workbench] building a factory with {answers:,} tasks and {annotators} annotators in {root} "
          f"({'PostgreSQL ' + db_name if db_name else 'SQLite'})", flush=True)
    tokens, truth = build_factory(root, answers, annotators, seed)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "factory.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--root", str(root), "--workers", str(workers)], env=env | {"PGAPPNAME": SERVER_APP},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.time() + 300  # a loaded machine imports slowly (the app, and each worker's copy)
        while True:
            try:
                if httpx.get(base + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                server.kill()  # its output ends only when it has stopped
                raise RuntimeError(f"the server did not start:\n{server.communicate()[0]}")
            time.sleep(0.2)
        mode = f"think time ~Exp(mean {think_s:g} s)" if think_s else "no think time (closed loop, saturation)"
        print(f"[workbench] server up on {base} ({workers} worker(s)); {annotators} annotators, {mode}", flush=True)
        samples: list = []
        stop_sampling = threading.Event()
        sampler = None
        if db_name:
            sampler = threading.Thread(target=_sample_sessions, args=(env["FACTORY_DATABASE_URL"], stop_sampling,
                                                                      samples), daemon=True)
            sampler.start()
        t_start = time.perf_counter()
        batch = _start_batch_run(env, batch_items) if batch_items else None
        batch_done: dict = {}
        if batch:
            print(f"[workbench] a {batch_items:,}-item batch runs through the pipeline at the same time", flush=True)

            def watch(proc=batch[0]):  # drain the batch's output and note when it ends (and the server's CPU then)
                batch_done["log"] = proc.communicate(timeout=900)[0]
                batch_done["at"] = time.perf_counter()
                batch_done["server_cpu"] = _cpu_seconds(server.pid, children=True)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        load0 = os.getloadavg()[0]
        cpu0 = (_cpu_seconds(server.pid, children=True), _cpu_seconds(os.getpid()))
        stats = _drive(port, tokens, truth, answers, seed, think_s)
        cpu1 = (_cpu_seconds(server.pid, children=True), _cpu_seconds(os.getpid()))
        load1 = os.getloadavg()[0]
        t_end = time.perf_counter()
        concurrent = None
        if batch:
            proc, bout = batch
            watcher.join(timeout=900)
            log = batch_done.get("log", "")
        stop_sampling.set()
        if sampler:
            sampler.join(timeout=10)
        if batch:
            done = json.loads((bout / "pipeline.json").read_text()) if (bout / "pipeline.json").exists() else {}
            concurrent = {"items": batch_items, "returncode": proc.returncode,
                          "factory_seconds": done.get("factory_seconds"), "seconds_total": done.get("seconds_total"),
                          "log_tail": log.splitlines()[-5:] if proc.returncode else [],
                          "ran_for_s": round(batch_done.get("at", t_end) - t_start, 1)}
            shutil.rmtree(bout, ignore_errors=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    # the ledger is the judge: count what was written, not what the clients believe
    fx = Factory.at(root)
    human = fx.ledger.events("load", kind="human")
    per_task = human.groupby("task_id").size()
    accepted = stats["accepted"]
    by_task = dict(zip(human["task_id"], zip(human["actor"], human["event_id"])))
    mismatched = sum(1 for tid, (who, eid) in accepted.items() if by_task.get(tid) != (who, eid))
    open_left = int((fx.ledger.tasks("load")["status"] == "open").sum())
    chain = fx.ledger.verify_chain("load")
    lost = len(accepted) - int(human["event_id"].isin({e for _, e in accepted.values()}).sum())
    wall = stats["seconds"]
    result = {
        "database": f"postgresql ({db_name})" if db_name else "sqlite (WAL)", "think_time_s": think_s, "answers_target": answers, "annotators": annotators, "server_workers": workers,
        "seconds": round(wall, 3), "accepted": len(accepted), "ledger_human_events": int(len(human)),
        "tasks_answered_twice": int((per_task > 1).sum()), "tasks_left_open": open_left,
        "lost_answers": lost, "mismatched_answers": mismatched, "chain_ok": bool(chain["ok"]),
        "throughput_answers_per_s": round(len(accepted) / wall, 1),
        "submit_ms": {"p50": round(_pct(stats["submit_ms"], 50), 2), "p95": round(_pct(stats["submit_ms"], 95), 2),
                      "p99": round(_pct(stats["submit_ms"], 99), 2), "max": round(max(stats["submit_ms"]), 2)},
        "next_ms": {"p50": round(_pct(stats["next_ms"], 50), 2), "p95": round(_pct(stats["next_ms"], 95), 2)},
        "server_cpu_share": round((cpu1[0] - cpu0[0]) / wall, 3), "client_cpu_share": round((cpu1[1] - cpu0[1]) / wall, 3),
        "load_average_1min": [round(load0, 2), round(load1, 2)],  # other processes on the machine compete
        "server_cpu_ms_per_answer": round(1000 * (cpu1[0] - cpu0[0]) / max(len(accepted), 1), 2),
        "http_status": stats["status"], "reconnects": stats["reconnects"], "errors": stats["errors"][:20],
        "n_errors": len(stats["errors"]),
        "concurrent_batch_run": concurrent,
    }
    # the tail by time window: while the batch ran and after it (load-insensitive evidence beside the totals)
    windows = {"all": (t_start, t_end + 1)}
    if batch_items:
        b_end = batch_done.get("at", t_end)
        windows.update({"batch_running": (t_start, b_end), "batch_done": (b_end, t_end + 1)})
        if "server_cpu" in batch_done:
            n_in = sum(1 for a in stats["submit_at"] if a < b_end)
            n_out = len(stats["submit_at"]) - n_in
            result["server_cpu_ms_per_answer_by_window"] = {
                "batch_running": round(1000 * (batch_done["server_cpu"] - cpu0[0]) / max(n_in, 1), 2),
                "batch_done": round(1000 * (cpu1[0] - batch_done["server_cpu"]) / max(n_out, 1), 2)}
    result["submit_ms_by_window"] = _split(stats["submit_at"], stats["submit_ms"], windows)
    result["next_ms_by_window"] = _split(stats["next_at"], stats["next_ms"], windows)
    if samples:
        result["sessions_by_window"] = _session_summary(samples, windows)
    result["no_lost_or_duplicated"] = (result["ledger_human_events"] == answers == result["accepted"]
                                       and not result["tasks_answered_twice"] and not lost and not mismatched
                                       and open_left == 0 and result["chain_ok"])
    if concurrent is not None:
        result["no_lost_or_duplicated"] = result["no_lost_or_duplicated"] and concurrent["returncode"] == 0
    fx.ledger.engine.dispose()
    fx.ledger.reader.dispose()
    if saved is None:
        os.environ.pop("FACTORY_DATABASE_URL", None)
    else:
        os.environ["FACTORY_DATABASE_URL"] = saved
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        if db_name:
            _drop_database(database_url, db_name)
    shown = ("throughput_answers_per_s", "submit_ms", "next_ms", "server_cpu_share", "client_cpu_share",
             "load_average_1min", "no_lost_or_duplicated", "submit_ms_by_window", "server_cpu_ms_per_answer_by_window")
    print(f"[workbench] {json.dumps({k: result.get(k) for k in shown})}", flush=True)
    return result, {"submit_ms": stats["submit_ms"], "next_ms": stats["next_ms"]}


def run(out: Path, data: Path | None = None, answers: int = 5000, annotators: int = 50, workers: int = 1,
        think_ms: float = 1000, saturation: bool = True, keep: bool = False, seed: int = 0,
        database_url: str | None = None, batch_items: int = 0, **opts) -> dict:
    """Paced run (annotators think ~`think_ms` between answers) and, if `saturation`, a closed-loop run without
    think time; write out/workbench.json and out/workbench.png; return the result dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    answers, annotators, workers = int(answers), int(annotators), int(workers)
    phases, raw = {}, {}
    phases["paced"], raw["paced"] = _phase(answers, annotators, workers, think_ms / 1000, seed, keep, database_url,
                                           batch_items=int(batch_items))
    if saturation:
        phases["saturation"], raw["saturation"] = _phase(answers, annotators, workers, 0.0, seed, keep, database_url)
    database = "PostgreSQL" if database_url else "SQLite (WAL)"
    result = {"cpus": os.cpu_count(), "database": database, "goal_p95_ms": 50.0, "phases": phases,
              "no_lost_or_duplicated": all(p["no_lost_or_duplicated"] for p in phases.values())}
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.2), squeeze=False)
    for a, (name, ph) in zip(ax[0], phases.items()):
        for k, label in (("submit_ms", "POST answer"), ("next_ms", "GET next")):
            v = np.sort(np.asarray(raw[name][k]))
            a.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
        a.axvline(50, color="red", ls="--", lw=1, label="goal: p95 <= 50 ms")
        a.axhline(0.95, color="grey", ls=":", lw=1)
        a.set_xscale("log")
        a.set_xlabel("latency (ms, log scale)")
        a.set_ylabel("share of requests")
        think = f"think ~{ph['think_time_s']:g} s" if ph["think_time_s"] else "no think time"
        a.set_title(f"{name}: {annotators} annotators, {think}\n{ph['throughput_answers_per_s']} answers/s, "
                    f"submit p50 {ph['submit_ms']['p50']:.0f} / p95 {ph['submit_ms']['p95']:.0f} ms", fontsize=10)
        a.legend(fontsize=8)
    loads = [x for ph in phases.values() for x in ph["load_average_1min"]]
    fig.suptitle(f"workbench API, {database} ledger, {workers} uvicorn worker(s), {os.cpu_count()} CPUs "
                 f"(machine load average {min(loads):.1f}-{max(loads):.1f} during the runs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=110)
    plt.close(fig)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal and whether met) rows for a Markdown table."""
    rows = [("ledger database", result.get("database", "SQLite (WAL)"), ""),
            ("no lost or duplicated answer", str(result["no_lost_or_duplicated"]),
             "must hold: " + ("met" if result["no_lost_or_duplicated"] else "MISSED"))]
    for name, ph in result["phases"].items():
        think = f"think ~{ph['think_time_s']:g} s" if ph["think_time_s"] else "no think time"
        p95 = ph["submit_ms"]["p95"]
        rows += [
            (f"{name} ({ph['annotators']} annotators, {think})", f"{ph['ledger_human_events']:,} answers in "
             f"{ph['seconds']:.0f} s = {ph['throughput_answers_per_s']} answers/s", ""),
            (f"{name}: submit latency p50 / p95", f"{ph['submit_ms']['p50']:.1f} / {p95:.1f} ms",
             f"p95 <= 50 ms: {'met' if p95 <= 50 else 'MISSED'}"),
            (f"{name}: next latency p50 / p95", f"{ph['next_ms']['p50']:.1f} / {ph['next_ms']['p95']:.1f} ms", ""),
        ]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for workbench.json and workbench.png")
    ap.add_argument("--data", type=Path, default=None, help="unused (synthetic data)")
    ap.add_argument("--answers", type=int, default=5000)
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--think-ms", type=float, default=1000, help="mean think time of the paced run")
    ap.add_argument("--no-saturation", action="store_true", help="skip the closed-loop run without think time")
    ap.add_argument("--keep", action="store_true", help="keep the temporary factory roots (and databases)")
    ap.add_argument("--database-url", default=None,
                    help="a PostgreSQL server (postgresql+psycopg2://user@host:5432/postgres) to run against instead "
                         "of SQLite: each run creates, migrates and drops its own database there")
    ap.add_argument("--with-batch-run", type=int, default=0, metavar="ITEMS",
                    help="during the paced run, also run a batch of ITEMS items through the whole pipeline "
                         "(benchmarks.pipeline) on the same ledger database")
    args = ap.parse_args(argv)
    result = run(args.out, args.data, answers=args.answers, annotators=args.annotators, workers=args.workers,
                 think_ms=args.think_ms, saturation=not args.no_saturation, keep=args.keep,
                 database_url=args.database_url, batch_items=args.with_batch_run)
    for row in summary_rows(result):
        print(" | ".join(row))


if __name__ == "__main__":
    main()

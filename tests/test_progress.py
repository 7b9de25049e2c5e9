"""Progress of long work: counts and rates on stderr for a person at a terminal, coarse lines in Dagster's
log, nothing when not on a terminal or with --json (factory.progress and its wiring)."""
from __future__ import annotations

import io
import json
import re
import sys
import types

import dagster as dg
import pandas as pd
import pytest
from click.testing import CliRunner

from factory import progress as P
from factory.cli import main
from factory.simulate import SimulatedPool
from tests.conftest import write_csv

BAR = re.compile(r"\d+%\|")  # a tqdm bar with a known total: "ingest: validate: 100%|██████| 80/80 [...]"


@pytest.fixture(autouse=True)
def _no_choice_left(monkeypatch):
    """Each test decides for itself: no FACTORY_PROGRESS from the caller, no choice left by another test."""
    monkeypatch.delenv(P.ENV, raising=False)
    P.reset()
    yield
    P.reset()


def _lines():
    lines: list[str] = []
    return lines, P.LogLines(lines.append)


# ----------------------------------------------------------------------------- the reporters
def test_the_default_reports_nothing_and_costs_nothing():
    data = [1, 2, 3]
    assert P.NULL.track(data, "x") is data  # the iterable itself: no wrapper on the hot path
    with P.NULL.work("x", 3) as s:
        P.NULL.note("phase")
    assert s.n == 3
    from factory.pipeline import Factory

    assert Factory.at().progress is P.NULL


def test_bars_show_counts_and_rates_and_logs_get_two_lines_per_step():
    buf = io.StringIO()
    lines, log = _lines()
    rep = P.tee(P.Bars(buf), log)
    out = [x for x in rep.track(["a", "b", "c"], "train labelers", weight=40, label=str)]
    assert out == ["a", "b", "c"]
    with rep.work("fuse", 120):
        pass
    bars = buf.getvalue()
    assert "train labelers: 100%" in bars and "120/120" in bars and "items/s" in bars and ", c]" in bars
    assert "fuse: 100%" in bars
    assert lines[0] == "train labelers: started (120 items)"
    assert re.fullmatch(r"train labelers: done 120/120 items in \d+\.\d s(, [\d,]+ items/s)?", lines[1])
    assert len(lines) == 4  # never one line per item


def test_a_step_that_stops_early_leaves_no_bar_and_says_so_in_the_log():
    buf = io.StringIO()
    lines, log = _lines()
    rep = P.tee(P.Bars(buf), log)
    with pytest.raises(RuntimeError):
        with rep.step("final labels"):
            raise RuntimeError("waiting for people")
    assert buf.getvalue().endswith("\r")  # the bar line was cleared, not left behind
    assert lines[-1].startswith("final labels: stopped after 0 items")


def test_a_phase_note_names_what_a_long_step_does_now():
    buf = io.StringIO()
    rep = P.Bars(buf)
    with rep.step("release", unit="items") as s:
        rep.note("certify 80 labels")
        s.update(80)
    assert "certify 80 labels" in buf.getvalue()


def test_when_bars_are_shown(monkeypatch):
    assert not P.enabled()  # pytest's stderr is no terminal
    monkeypatch.setattr(P, "_isatty", lambda stream: True)
    assert P.enabled() and not P.enabled(json=True)
    monkeypatch.setenv(P.ENV, "0")
    assert not P.enabled()
    monkeypatch.setenv(P.ENV, "1")
    assert P.enabled(json=True)
    P.configure(False)  # --no-progress beats the environment
    assert not P.enabled() and P.bars() is P.NULL
    P.configure(True)
    assert isinstance(P.bars(auto=False), P.Bars)
    P.reset()
    monkeypatch.delenv(P.ENV)
    assert isinstance(P.bars(), P.Bars) and P.bars(auto=False) is P.NULL  # a Dagster run outside `factory`: no bars


def test_printed_lines_go_above_the_bars_on_a_terminal(monkeypatch):
    monkeypatch.setattr(P, "_isatty", lambda stream: True)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    rep = P.Bars(err)
    for i in rep.track(range(2), "bench", unit="benchmarks"):
        assert sys.stdout is not out  # routed through tqdm while a bar is drawn
        print(f"line {i}")
    assert sys.stdout is out and out.getvalue() == "line 0\nline 1\n"


def test_the_command_line_keeps_the_terminal_it_started_on():
    """A Dagster step run in-process points file descriptor 2 at its compute log: bars keep a duplicate of the
    terminal's descriptor taken when the command started."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        pytest.skip("stderr has no file descriptor here")
    P.configure(True)
    assert P._stream is not sys.stderr and P._stream.fileno() != fd
    P.reset()
    assert P._stream is None


# ----------------------------------------------------------------------------- the command line
@pytest.fixture
def cli(root):
    runner = CliRunner()

    def invoke(*args, env=None, code=0):
        res = runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=False)
        assert res.exit_code == code, res.output
        assert not BAR.search(res.stdout), res.stdout  # bars never on stdout
        return res
    return invoke


def _steps(stderr: str) -> dict[str, str]:
    """The last frame of every bar on stderr, by its description."""
    frames = [f.strip() for f in re.split(r"[\r\n]", stderr) if f.strip()]
    return {f.split(":")[0] if not f.startswith(("ingest:", "calibration:")) else ":".join(f.split(":")[:2]): f
            for f in frames}


@pytest.mark.slow
def test_a_run_shows_every_long_step_with_counts_and_dagster_logs_them(cli, root, fx, bbc_small, truth, tmp_path):
    spec_path = root / "datasets" / "news.yaml"
    spec_path.write_text(spec_path.read_text().replace("audit_rate: 0.05", "audit_rate: 0.5\n  min_accuracy: 0.6"))
    src = write_csv(tmp_path / "b.csv", bbc_small["text"][:80])
    res = cli("--progress", "ingest", src, "--dataset", "news")
    s = _steps(res.stderr)
    assert "80 rows" in s["ingest: read"]
    assert "80/80" in s["ingest: validate"] and "rows/s" in s["ingest: validate"]
    assert "80/80" in s["ingest: write"]
    batch = fx.ledger.batches("news").iloc[0]["batch_id"]

    res = cli("run", "--dataset", "news", "--batch", batch, env={P.ENV: "1"})  # seed tasks: people first
    s = _steps(res.stderr)
    assert "80/80" in s["check raw items"] and "40 tasks" in s["initial tasks"]
    pool = SimulatedPool(truth)
    pool.answer_open_tasks(fx.ledger, fx.spec("news"))
    res = cli("run", "--dataset", "news", "--batch", batch, env={P.ENV: "1"})
    s = _steps(res.stderr)
    n_seed = 40
    assert f"{3 * n_seed}/{3 * n_seed}" in s["train labelers"]       # three labelers x the seed labels
    assert "240/240" in s["predict"] and "items/s" in s["predict"]    # three labelers x 80 items
    assert "240/240" in s["record model events"]
    assert f"{3 * n_seed}/{3 * n_seed}" in s["calibration: cross-fit labelers"]
    assert "80 items" in s["fuse"] and "80 items" in s["route"]
    for _ in range(5):  # second opinions and arbitrations may be opened by finalise
        pool.answer_open_tasks(fx.ledger, fx.spec("news"))
        res = cli("--progress", "run", "--dataset", "news", "--batch", batch)
        if "finalise: ok" in res.stdout:
            break
    assert "80 items" in _steps(res.stderr)["final labels"] and "rows" in _steps(res.stderr)["check final labels"]
    res = cli("--progress", "run", "--dataset", "news", "--stage", "release")
    assert "release: ok" in res.stdout
    s = _steps(res.stderr)
    n = fx.ledger.releases("news").iloc[0]["n_items"]
    assert f"{n} items" in s["release"] and "check labels against the ledger" in s["release"]
    for phase in ("collect final labels", f"certify {n} labels", "write files"):  # each phase shows as it starts
        assert phase in res.stderr
    res = cli("--progress", "verify", "--dataset", "news")
    assert "events" in _steps(res.stderr)["verify ledger"]

    # inside Dagster the same steps are coarse lines of the run's log: start, then count and rate
    instance = dg.DagsterInstance.get()
    logged = [e.user_message for r in instance.get_runs() for e in instance.all_logs(r.run_id)]
    for line in ("check raw items: done 80/80 rows", "initial tasks: done 40 tasks", "train labelers: done 120/120 items", "predict: done 240/240 items", "fuse: done 80 items",
                 "route: done 80 items", "final labels: done 80 items", f"release: done {n} items"):
        assert any(m.startswith(line) for m in logged), line
    assert not any("predict" in m and "item_" in m for m in logged)  # coarse: no line per item


def test_quiet_without_a_terminal_and_when_told(cli, tmp_path, bbc_small):
    res = cli("ingest", write_csv(tmp_path / "a.csv", bbc_small["text"][:20]), "--dataset", "news")
    assert res.stderr == ""  # CliRunner's stderr is no terminal
    res = cli("--no-progress", "ingest", write_csv(tmp_path / "b.csv", bbc_small["text"][20:40]), "--dataset", "news",
              env={P.ENV: "1"})
    assert res.stderr == ""
    res = cli("ingest", write_csv(tmp_path / "c.csv", bbc_small["text"][40:60]), "--dataset", "news",
              env={P.ENV: "1"})
    s = _steps(res.stderr)
    assert "20 rows" in s["ingest: read"] and "20/20" in s["ingest: validate"] and "20/20" in s["ingest: write"]


def test_a_folder_is_read_file_by_file(cli, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(5):
        (folder / f"t{i}.txt").write_text(f"text number {i} about markets and shares")
    res = cli("--progress", "ingest", folder, "--dataset", "news")
    assert "5 files" in _steps(res.stderr)["ingest: read"] and "5/5" in _steps(res.stderr)["ingest: validate"]


def test_json_output_draws_no_bar_even_on_a_terminal(cli, monkeypatch, tmp_path, bbc_small):
    cli("ingest", write_csv(tmp_path / "a.csv", bbc_small["text"][:20]), "--dataset", "news")
    monkeypatch.setattr(P, "_isatty", lambda stream: True)  # a person at a terminal
    res = cli("verify", "--dataset", "news")
    assert "verify ledger" in res.stderr
    res = cli("verify", "--dataset", "news", "--json")
    assert json.loads(res.stdout)["ok"] and res.stderr == ""
    res = cli("--progress", "verify", "--dataset", "news", "--json")  # asked for: bars on stderr, JSON intact
    assert json.loads(res.stdout)["ok"] and "verify ledger" in res.stderr


def test_bench_shows_each_benchmark(cli, monkeypatch, tmp_path):
    fake = types.SimpleNamespace(run=lambda out, data=None, **o: {"x": 1}, summary_rows=lambda r: [("m", 1, "-")])
    monkeypatch.setitem(sys.modules, "benchmarks.spans_speed", fake)
    res = cli("--progress", "bench", "spans_speed", "--out", tmp_path / "bench")
    assert "1/1" in _steps(res.stderr)["bench"] and "benchmarks" in res.stderr


# ----------------------------------------------------------------------------- benchmark loops and the sensor
@pytest.fixture
def logged(monkeypatch):
    """Every benchmark module's bars() replaced by a log collector."""
    lines, log = _lines()

    def use(module):
        monkeypatch.setattr(module, "bars", lambda *a, **k: log)
    return lines, use


@pytest.mark.parametrize("workers", [1, 2])  # in this process, and in a process pool (forked: the stub goes too)
def test_replay_counts_its_seeds(logged, monkeypatch, workers):
    from benchmarks import replay as rp

    lines, use = logged
    use(rp)
    monkeypatch.setattr(rp, "dawid_skene_target", lambda answers, truth: 1.0)
    rec = [{"budget": b, "answers_used": 1, "accuracy": 1.0, "ece": 0.0} for b in rp.BUDGETS]
    monkeypatch.setattr(rp, "run_seed", lambda *a, **k: {"records": rec, "rounds": [], "stopped_at": None})
    answers = pd.DataFrame({"item_id": ["i1"], "worker_id": ["w"], "label": ["a"]})
    rp.replay(pd.DataFrame({"item_id": ["i1"]}), "none", answers, pd.Series(["a"], index=["i1"]), dict(rp.DEFAULTS),
              seeds=3, workers=workers, label="toy")
    assert any(m.startswith("toy: seeds: done 3/3 seeds") for m in lines), lines


def test_guarantee_counts_its_seeds(logged, monkeypatch, tmp_path):
    from benchmarks import guarantee as g
    from benchmarks import replay as rp

    lines, use = logged
    use(g)
    monkeypatch.setattr(rp, "load_folder", lambda p: (pd.DataFrame(), "pair", pd.DataFrame(), pd.Series(dtype=str)))
    monkeypatch.setattr(g, "_human_majority", lambda answers: pd.Series(dtype=str))
    monkeypatch.setattr(g, "run_seed", lambda *a: [])
    with pytest.raises(KeyError):  # no rows to summarise: the loop is what this test is about
        g.run(tmp_path / "out", data=tmp_path, seeds=2)
    assert "guarantee: seeds: done 2/2 seeds" in " ".join(lines), lines


def test_generalise_counts_its_sets(logged, tmp_path):
    from benchmarks import generalise as ge

    lines, use = logged
    use(ge)
    try:
        ge.run(tmp_path / "out", data=None, sets=["product", "dog"])  # no crowd folder: both skipped at once
    except Exception:  # noqa: BLE001 - nothing to plot; the loop ran
        pass
    assert any(m.startswith("generalise: sets: done 2/2 sets") for m in lines), lines


def test_aggregation_counts_its_sets_and_seeds(logged, monkeypatch, tmp_path):
    from benchmarks import aggregation as ag

    lines, use = logged
    use(ag)
    monkeypatch.setattr(ag, "evaluate_set", lambda data, name, skip_slow=False: {"factory": 1.0, "crowdkit": {}})
    monkeypatch.setattr(ag, "sparse_synthetic", lambda: {})
    try:
        ag.run(tmp_path / "out", data=tmp_path)
    except Exception:  # noqa: BLE001 - the plot of stubbed results may fail; the loop ran
        pass
    assert any(m.startswith(f"aggregation: sets: done {len(ag.SETS)}/{len(ag.SETS)} sets") for m in lines), lines


def test_sparse_synthetic_counts_its_seeds(logged, monkeypatch):
    from benchmarks import aggregation as ag

    lines, use = logged
    use(ag)
    import factory.simulate as sim

    def stop(seed, **k):
        raise StopIteration("the loop started")
    monkeypatch.setattr(sim, "sparse_crowd", stop)
    # crowd-kit is a bench extra (CI installs the test extra only); the loop stops before it is used
    import sys
    import types

    fake = types.ModuleType("crowdkit.aggregation")
    fake.DawidSkene = fake.MajorityVote = object
    monkeypatch.setitem(sys.modules, "crowdkit", types.ModuleType("crowdkit"))
    monkeypatch.setitem(sys.modules, "crowdkit.aggregation", fake)
    with pytest.raises(StopIteration):
        ag.sparse_synthetic(seeds=2)
    assert lines[0] == "sparse synthetic crowds: started (2 seeds)", lines


def test_scale_writes_its_answers_with_a_bar(monkeypatch, tmp_path):
    from benchmarks import scale

    buf = io.StringIO()
    monkeypatch.setattr(P, "bars", lambda *a, **k: P.Bars(buf))
    scale.write_synthetic(tmp_path / "a.parquet", 30_000, progress=scale._progress("writing a.parquet"))
    assert "writing a.parquet: 100%" in buf.getvalue() and "30000/30000" in buf.getvalue()


def test_the_inbox_sensor_logs_its_ingest(root, fx, bbc_small):
    from assets.sensors import inbox_dir, scan_inbox

    inbox = inbox_dir(root, "news")
    inbox.mkdir(parents=True)
    write_csv(inbox / "part1.csv", bbc_small["text"][:30])
    lines: list[str] = []
    log = types.SimpleNamespace(info=lines.append, warning=lines.append)
    accepted, _ = scan_inbox(fx, "news", {}, log)
    assert len(accepted) == 1
    assert any(m.startswith("ingest: validate: done 30/30 rows") for m in lines), lines

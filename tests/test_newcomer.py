"""A newcomer's whole day through the command line, with their own CSV and their own ids.

init -> edit the spec -> ingest a CSV with its own ids -> run -> list and answer tasks by those ids -> run ->
release -> trace by the user's id -> load the release with Hugging Face `datasets` and `mlcroissant`.  Every
hint the factory prints on the way, and every command in the README's code blocks, must parse against the
real click tree: a hint that fails when pasted is a bug.  The person answering is **simulated** (answers the
true BBC topic: a perfect annotator), which is allowed in tests; truth only decides what that person types.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import click
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from factory.cli import main
from tests.conftest import write_csv

README = Path(__file__).parents[1] / "README.md"
HINT = re.compile(r"(?<![\w/.-])factory (?=[a-z])")


def parse(cmdline: str) -> None:
    """Resolve `factory ...` through the click tree and parse every option and argument; UsageError if not."""
    args = shlex.split(cmdline)
    assert args[0] == "factory", cmdline
    cmd: click.Command = main
    ctx = cmd.make_context("factory", args[1:], resilient_parsing=False)
    rest = ctx.protected_args + ctx.args if hasattr(ctx, "protected_args") else ctx.args
    while isinstance(cmd, click.Group) and rest:
        name, sub, rest = cmd.resolve_command(ctx, rest)
        ctx = sub.make_context(name, list(rest), parent=ctx)
        cmd = sub
        rest = (getattr(ctx, "protected_args", []) + ctx.args) if isinstance(cmd, click.Group) else []
    if isinstance(cmd, click.Group):
        raise click.UsageError(f"'{cmdline}' names a command group, not a command")


def unparsable(cmds) -> dict[str, str]:
    """The command lines that do not parse, with click's message (a file that does not exist here is fine)."""
    bad = {}
    for c in cmds:
        try:
            parse(c)
        except click.BadParameter as e:
            if "does not exist" not in e.format_message():
                bad[c] = e.format_message()
        except click.ClickException as e:
            bad[c] = e.format_message()
    return bad


def hints_in(text: str) -> list[str]:
    """Every `factory ...` command line a user could paste from some output."""
    out = []
    for line in text.splitlines():
        starts = [m.start() for m in HINT.finditer(line)] + [len(line)]
        for a, b in zip(starts, starts[1:]):
            cmd = re.split(r"[`'\"()#]|,\s|;\s|\s+(?:or|then|and)\b", line[a:b])[0]
            out.append(cmd.strip().rstrip(".,;:"))
    return out


def readme_commands() -> list[str]:
    """`factory ...` lines of the README's shell blocks (comments and env prefixes stripped, continuations joined)."""
    text = README.read_text()
    cmds = []
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)
            line = re.sub(r"^\.venv/bin/", "", line)
            for part in re.split(r"\s*&&\s*", line):
                if part.startswith("factory "):
                    cmds.append(part)
    return cmds


def test_every_command_in_the_readme_parses():
    cmds = readme_commands()
    assert len(cmds) >= 20, cmds  # the README's flow, people, production and release sections
    assert not unparsable(cmds)


def test_the_parser_refuses_what_a_user_could_not_paste():
    # the checks above can fail: a wrong option, a missing argument, a group without a command
    wrong = ["factory tasks answer T1 --annotator", "factory run --datset reviews", "factory tasks",
             "factory release diff 1.0.0"]
    assert set(unparsable(wrong + ["factory verify-release no/such/folder"])) == set(wrong)
    assert hints_in("next: factory tasks list --dataset reviews, then factory run --dataset reviews") == [
        "factory tasks list --dataset reviews", "factory run --dataset reviews"]


@pytest.fixture
def cli(root):
    runner = CliRunner()
    said: list[str] = []

    def invoke(*args, ok=True):
        res = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        said.append(res.output)
        assert "Traceback" not in res.output, res.output
        if ok:
            assert res.exit_code == 0, res.output
        elif ok is False:
            assert res.exit_code != 0, res.output  # a refused command exits non-zero
        return res
    invoke.said = said
    return invoke


def test_a_newcomers_day_from_their_own_csv_to_a_release_that_loads_everywhere(cli, root, tmp_path, bbc_small,
                                                                               monkeypatch):
    datasets = pytest.importorskip("datasets") if os.environ.get("CI") != "true" else __import__("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    classes = sorted(bbc_small["label"].unique())

    # init writes the template; the newcomer edits the classes, names their id column and a smaller seed
    cli("init", "news_topics")
    spec_path = root / "datasets" / "news_topics.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["classes"] = [{"name": c, "definition": f"The article is about {c}."} for c in classes]
    spec["task"]["id_column"] = "article_id"
    spec["seed"]["size"] = 40
    spec_path.write_text(yaml.safe_dump(spec))
    assert "valid" in cli("validate", "--dataset", "news_topics").output

    ids = [f"bbc-{i:05d}" for i in range(len(bbc_small))]
    truth = dict(zip(ids, bbc_small["label"]))
    src = write_csv(tmp_path / "articles.csv", bbc_small["text"], {"article_id": ids})
    cli("ingest", src, "--dataset", "news_topics")
    cli("run", "--dataset", "news_topics")

    # answer by the user's ids, from the full JSON listing, until the batch is final; each round a different
    # person (second opinions need one); when the factory refuses someone, paste the hint it printed
    answered = 0
    for rnd in range(1, 9):
        recs = json.loads(cli("tasks", "list", "--dataset", "news_topics", "--json").output)
        if not recs:
            break
        assert all(r["external_id"] in truth for r in recs)
        person = f"ann-{rnd}"
        one, rest = recs[0], recs[1:]
        first = [one["external_id"], truth[one["external_id"]], "--annotator", person]
        res = cli("tasks", "answer", *first, ok=None)
        if res.exit_code:
            hint = [h for h in hints_in(res.output) if h.startswith("factory annotators add")]
            assert hint, res.output
            cli(*shlex.split(hint[0])[1:])
            cli("tasks", "answer", *first)
        if rest:
            pd.DataFrame({"item_id": [r["external_id"] for r in rest], "annotator": person,
                          "label": [truth[r["external_id"]] for r in rest]}).to_csv(tmp_path / "a.csv", index=False)
            cli("tasks", "import", tmp_path / "a.csv")
        answered += len(recs)
        cli("run", "--dataset", "news_topics")
    assert answered >= 40 and not json.loads(cli("tasks", "list", "--dataset", "news_topics", "--json").output)
    status = json.loads(cli("status", "--dataset", "news_topics", "--json").output)
    assert status["finished"], status

    res = cli("run", "--dataset", "news_topics", "--stage", "release", ok=None)
    rel = root / "releases" / "news_topics" / "1.0.0"
    if res.exit_code != 0:  # refused: honest only if it says why and wrote nothing
        assert res.exit_code == 3 and "1.0.0" in res.output and not rel.exists(), res.output
        pytest.fail(f"a perfect simulated annotator's release was refused:\n{res.output}")
    assert rel.is_dir()

    # trace by the user's own id
    ext = ids[0]
    story = json.loads(cli("trace", ext, "--dataset", "news_topics", "--json").output)
    assert story["external_id"] == ext and story["events"][-1]["kind"] == "final"

    # the release loads with the usual clients, the user's ids and the classes intact
    ds = datasets.load_dataset(str(rel), cache_dir=str(tmp_path / "hf"))
    table = pd.read_parquet(rel / "labels.parquet")
    assert sum(len(s) for s in ds.values()) == len(table) > 0
    split = next(iter(ds))
    assert ds[split].features["label"].names == classes
    assert set(ds[split]["external_id"]) <= set(ids)
    import mlcroissant as mlc

    names = [r["classes/name"] for r in mlc.Dataset(jsonld=str(rel / "croissant.json")).records("classes")]
    assert [n.decode() if isinstance(n, bytes) else n for n in names] == classes

    # refused commands exit non-zero, with no traceback (checked by the fixture)
    cli("trace", "bbc-99999", "--dataset", "news_topics", ok=False)
    cli("tasks", "answer", ids[1], "sport", "--annotator", "ann-1", ok=False)  # no open task any more
    cli("run", "--dataset", "news_topic", ok=False)

    # every hint the factory printed on the way parses when pasted
    hints = sorted({h for out in cli.said for h in hints_in(out)})
    assert any(h.startswith("factory tasks list") for h in hints), hints  # the run's next step was printed
    assert not unparsable(hints)

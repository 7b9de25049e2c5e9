"""How the suite distributes itself (pyproject addopts `-n auto --dist loadfile`, tests/conftest.py's worker count)."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import MAX_WORKERS, pytest_xdist_auto_num_workers

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_the_bare_pytest_distributes_whole_files_and_the_test_extra_brings_xdist():
    opts = PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]
    assert opts[opts.index("-n") + 1] == "auto" and opts[opts.index("--dist") + 1] == "loadfile"
    assert any(d.startswith("pytest-xdist") for d in PYPROJECT["project"]["optional-dependencies"]["test"])


def test_one_named_file_runs_in_process_and_the_suite_uses_the_cores_up_to_the_cap():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    expected = min(cores, MAX_WORKERS) if cores > 1 else 0
    assert pytest_xdist_auto_num_workers(SimpleNamespace(args=["tests/test_spec.py"])) == 0
    assert pytest_xdist_auto_num_workers(SimpleNamespace(args=["tests/test_spec.py::test_x"])) == 0
    assert pytest_xdist_auto_num_workers(SimpleNamespace(args=["tests/test_spec.py", "tests/test_ingest.py"])) == expected
    assert pytest_xdist_auto_num_workers(SimpleNamespace(args=[])) == expected
    assert pytest_xdist_auto_num_workers(SimpleNamespace(args=["tests"])) == expected

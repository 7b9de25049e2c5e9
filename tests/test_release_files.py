import json

import pandas as pd
import pytest

from factory.errors import ReleaseError
from factory.release import next_version, split_for, verify_release_files


def test_version_bumps():
    none = {"added": 0, "removed": 0, "relabelled": 0, "split_moves": 0}
    assert next_version(None, dict(none, added=5), False) == ("1.0.0", "first release")
    assert next_version("1.2.3", dict(none, added=5), False)[0] == "1.3.0"
    assert next_version("1.2.3", dict(none, relabelled=1, added=5), False)[0] == "2.0.0"
    assert next_version("1.2.3", dict(none, removed=1), False)[0] == "2.0.0"
    assert next_version("1.2.3", none, False)[0] == "1.2.4"
    with pytest.raises(ReleaseError, match="nothing new since release 1.2.3"):
        next_version("1.2.3", none, True)


def test_splits_are_deterministic_and_follow_ratios():
    ratios = {"train": 0.8, "validation": 0.1, "test": 0.1}
    ids = [f"it_{i:020x}" for i in range(5000)]
    s = pd.Series([split_for(i, ratios) for i in ids])
    assert [split_for(i, ratios) for i in ids[:50]] == list(s[:50])
    share = s.value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02


def _folder(tmp_path):
    import hashlib
    d = tmp_path / "1.0.0"
    d.mkdir()
    (d / "labels.parquet").write_bytes(b"data")
    (d / "manifest.json").write_text(json.dumps({"dataset": "x", "version": "1.0.0", "items": 1}))
    lines = [f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}" for n in ("labels.parquet", "manifest.json")]
    (d / "manifest-sha256.txt").write_text("\n".join(lines) + "\n")
    return d


def test_verify_release_files_finds_tampered_missing_and_extra_files(tmp_path):
    d = _folder(tmp_path)
    assert verify_release_files(d) == []
    (d / "labels.parquet").write_bytes(b"DATA")
    (d / "extra.txt").write_text("x")
    problems = verify_release_files(d)
    assert any(p.startswith("labels.parquet: sha256 differs") for p in problems)
    assert any(p.startswith("extra.txt: not listed") for p in problems)
    (d / "manifest.json").unlink()
    assert any(p.startswith("manifest.json: listed in the manifest but missing") for p in verify_release_files(d))

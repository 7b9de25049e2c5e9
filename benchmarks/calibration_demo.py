"""Calibration of the fused confidence per batch of a finished demo, scored against the demo's truth.

    factory demo --root /tmp/demo --json > /dev/null
    PYTHONPATH=. python benchmarks/calibration_demo.py /tmp/demo

Per batch: what the calibrator was fit on (the ledger's `confidence_calibration` check), the fused
labels' accuracy, the mean raw and calibrated confidence, ECE of each, and accuracy per calibrated bin.
"""
from __future__ import annotations

import json
import sys

import pandas as pd

from assets.demo import DATASET
from factory.datasets import load_bbc_news
from factory.engine import expected_calibration_error as ece
from factory.ingest import item_id_for
from factory.pipeline import Factory


def main(root: str) -> None:
    news = load_bbc_news(seed=0)
    truth = {item_id_for(t): lab for t, lab in zip(news["text"], news["label"])}
    fx = Factory.at(root)
    checks = fx.ledger.latest_checks(DATASET)
    for b in fx.ledger.batches(DATASET)["batch_id"]:
        f = pd.read_parquet(fx.paths.table("fused_labels", DATASET, b))
        ok = (f["label"] == f["item_id"].map(truth)).to_numpy()
        row = checks[(checks["asset"] == "confidence_calibration") & (checks["batch_id"] == b)]
        info = json.loads(row.iloc[-1]["details"]) if len(row) else {}
        print(f"batch {b}: {len(f)} items, calibrator fit on {info.get('n_verified')} verified ({info.get('method')})")
        print(f"  accuracy {ok.mean():.3f}  mean raw {f['raw_confidence'].mean():.3f}  mean calibrated "
              f"{f['confidence'].mean():.3f}  ECE raw {ece(f['raw_confidence'], ok):.3f}  "
              f"ECE calibrated {ece(f['confidence'], ok):.3f}")
        f["ok"] = ok
        f["bin"] = pd.cut(f["confidence"], [0, .5, .6, .7, .8, .85, .9, .95, 1])
        print(f.groupby("bin", observed=True).agg(n=("ok", "size"), accuracy=("ok", "mean"),
                                                  confidence=("confidence", "mean")).round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1])

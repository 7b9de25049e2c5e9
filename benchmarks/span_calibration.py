"""Calibration of span confidences on the crowd NER set: ECE before and after, cross-fitted over documents.

``factory bench span_calibration --data ../shared/bench/crowd/ner --out DIR`` writes
``DIR/span_calibration.json``.

- raw: the fusion's own numbers, fitted on all answers (``aggregate_spans(answers, tokens=...)``):
  the sentence confidence of :func:`factory.engine.span_routing.raw_sentence_confidence` and the span
  posteriors;
- calibrated: :func:`factory.engine.span_routing.fit_span_calibration` fitted on one half of the
  documents (its own refits, people's answers held out; no truth), applied to the other half's raw
  numbers, and the other way round (``benchmarks.spans.folds(docs, 2)``).

Scored against the truth (the only use of it): sentence confidence vs "the fused span set equals the
gold set exactly", span posterior vs "the span is a gold span"; ECE with 15 equal-width bins
(:func:`factory.engine.calibration.expected_calibration_error`), plus mean confidence vs accuracy.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from factory.engine.calibration import expected_calibration_error
from factory.engine.span_routing import fit_span_calibration, raw_sentence_confidence
from factory.engine.spans import aggregate_spans

NAME = "span_calibration"


def run(out: Path, data: Path | None = None, **_opts) -> dict:
    from benchmarks.span_replay import TYPES, load

    if data is None:
        data = Path(__file__).resolve().parents[2] / "shared" / "bench" / "crowd" / "ner"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    d = load(Path(data))
    ans, tok, truth, part = d["answers"], d["tokens"], d["truth_sets"], d["part"]
    full = aggregate_spans(ans, tokens=tok, types=TYPES)
    conf = raw_sentence_confidence(full)
    fused = {s: frozenset() for s in conf.index}
    for s, a, b, t in zip(full.spans["sentence_id"], full.spans["start"], full.spans["end"], full.spans["type"]):
        fused[s] = fused[s] | {(int(a), int(b), str(t))}
    right = np.array([fused[s] == truth[s] for s in conf.index], dtype=float)
    sp_sid = full.spans["sentence_id"].astype(str).to_numpy()
    hit = np.array([(int(a), int(b), str(t)) in truth[s] for s, a, b, t in
                    zip(sp_sid, full.spans["start"], full.spans["end"], full.spans["type"])], dtype=float)
    raw_s, raw_q = conf["raw"].to_numpy(float), full.spans["probability"].to_numpy(float)
    cal_s, cal_q = np.zeros_like(raw_s), np.zeros_like(raw_q)
    fits = []
    for k in (0, 1):
        ids = set(part.index[part == k])
        a_k = ans[ans["sentence_id"].isin(ids)]
        tok_k = tok[tok["sentence_id"].isin(ids)]
        cal = fit_span_calibration(a_k, lambda a, tok_k=tok_k: aggregate_spans(a, tokens=tok_k, types=TYPES))
        fits.append({"fitted_on_part": k, "source": cal.source, "sentences": cal.n_sentences, "spans": cal.n_spans,
                     "sentence_map": cal.sentence.method, "span_map": cal.span.method})
        other_s = ~conf.index.isin(ids)
        other_q = ~np.isin(sp_sid, list(ids))
        cal_s[other_s] = np.clip(cal.sentence.apply(raw_s[other_s]), 0, 1)
        cal_q[other_q] = np.clip(cal.span.apply(raw_q[other_q]), 0, 1)

    def block(p, y):
        return {"ece": round(expected_calibration_error(np.clip(p, 0, 1), y), 4), "mean_confidence": round(float(p.mean()), 4),
                "accuracy": round(float(y.mean()), 4), "n": int(len(y))}

    result = {
        "data": str(data),
        "command": f"factory bench span_calibration --data {data} --out {out}",
        "sentence": {"raw": block(raw_s, right), "calibrated": block(cal_s, right)},
        "span": {"raw": block(raw_q, hit), "calibrated": block(cal_q, hit)},
        "fits": fits,
        "seconds": round(time.time() - t0, 1),
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("sentence", "span")}, indent=2), flush=True)
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    return [(f"NER {w} confidence ECE raw -> calibrated", f"{result[w]['raw']['ece']:.3f} -> "
             f"{result[w]['calibrated']['ece']:.3f}", "lower") for w in ("sentence", "span")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--data", type=Path, default=None)
    a = ap.parse_args(argv)
    run(a.out, a.data)


if __name__ == "__main__":
    main()

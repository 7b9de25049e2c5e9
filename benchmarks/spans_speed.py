"""Speed of factory.aggregate_spans: 100,000 synthetic sentence-answers, wall clock and CPU time.

Synthetic data (seeded): ``answers / 5`` sentences of 4-30 tokens (mean about 14, like CoNLL-2003
news), each with 5 answers from 50 workers; true spans of 1-3 tokens over 4 types; a worker's
tag is its own noisy copy of the truth (token noise 5-30%, a random tag half of the time, O the
other half) and a fifth of the workers extend every span by one token (systematic boundary error).
The token text is passed too (random word ids), so the timing includes the text emitter when the
defaults switch it on.  The time covers encoding the string ids, the whole variational EM with its
forward-backward passes, decoding and the output tables; it is the best of ``repeats`` runs, and the
process CPU time of that run is reported beside it (the machine is shared with other jobs).

Goal: 100,000 sentence-answers in <= 10 s on the 2-core machine.

Run: ``factory bench spans_speed --out DIR [--answers 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from factory.engine.spans import DEFAULTS, aggregate_spans

NAME = "spans_speed"
TYPES = ("PER", "ORG", "LOC", "MISC")


def synthetic(n_answers: int = 100_000, per_sentence: int = 5, n_workers: int = 50, seed: int = 0) -> tuple:
    """(answers, tokens) of a seeded synthetic BIO crowd; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_sent = max(n_answers // per_sentence, 1)
    lengths = rng.integers(4, 31, size=n_sent) // np.where(rng.random(n_sent) < 0.5, 1, 2) + 2
    n_tok = int(lengths.sum())
    sent = np.repeat(np.arange(n_sent), lengths)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tpos = np.arange(n_tok) - start[sent]
    # true tags: a span starts with prob 0.12 at a token whose predecessor is O; length 1-3
    tags = np.zeros(n_tok, dtype=np.int64)  # 0 = O, 1 + 2x = B, 2 + 2x = I
    begins = np.flatnonzero(rng.random(n_tok) < 0.12)
    types = rng.integers(0, len(TYPES), size=len(begins))
    ln = rng.integers(1, 4, size=len(begins))
    for off in range(3):  # write B then I tokens; a later span simply overwrites an earlier one
        pos = begins + off
        ok = (off < ln) & (pos < n_tok)
        ok[ok] &= sent[pos[ok]] == sent[begins[ok]]
        tags[pos[ok]] = np.where(off == 0, 1 + 2 * types[ok], 2 + 2 * types[ok])
    # repair I after O / other type (overwrites can break BIO)
    prev = np.concatenate([[0], tags[:-1]])
    prev[tpos == 0] = 0
    bad = (tags > 0) & (tags % 2 == 0) & ((prev == 0) | ((prev - 1) // 2 != (tags - 1) // 2))
    tags[bad] -= 1
    noise = rng.uniform(0.05, 0.3, size=n_workers)
    extend = rng.random(n_workers) < 0.2
    # distinct workers per sentence: a random offset and stride modulo n_workers
    base = rng.integers(0, n_workers, size=n_sent)
    workers = (base[:, None] + np.arange(per_sentence)[None, :] * (n_workers // per_sentence)) % n_workers
    a_sent = np.repeat(np.arange(n_sent), per_sentence)
    a_worker = workers.ravel()
    rep = np.repeat(np.arange(n_sent * per_sentence), lengths[a_sent])  # answer of each answer-token
    tok = start[a_sent][rep] + (np.arange(len(rep)) - np.repeat(np.cumsum(lengths[a_sent]) - lengths[a_sent], lengths[a_sent]))
    w = a_worker[rep]
    lab = tags[tok].copy()
    # boundary workers: an O right after a span's last token becomes I of that type
    nxt_o = (lab == 0) & (tpos[tok] > 0)
    prev_tag = np.where(tpos[tok] > 0, tags[np.maximum(tok - 1, 0)], 0)
    lab = np.where(extend[w] & nxt_o & (prev_tag > 0), 2 + 2 * ((prev_tag - 1) // 2), lab)
    flip = rng.random(len(lab)) < noise[w]
    rand_tag = np.where(rng.random(len(lab)) < 0.5, 0, rng.integers(1, 1 + 2 * len(TYPES), size=len(lab)))
    lab = np.where(flip, rand_tag, lab)
    names = np.array(["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"], dtype=object)
    sid = np.char.add("s", np.char.zfill(np.arange(n_sent).astype(str), 6)).astype(object)
    answers = pd.DataFrame({
        "sentence_id": sid[sent[tok]],
        "worker_id": np.char.add("w", np.char.zfill(w.astype(str), 3)).astype(object),
        "token_index": tpos[tok],
        "tag": names[lab],
    })
    words = np.where(tags > 0, rng.integers(0, 2000, size=n_tok), rng.integers(2000, 20000, size=n_tok))
    tokens = pd.DataFrame({"sentence_id": sid[sent], "token_index": tpos,
                           "token": np.char.add("t", words.astype(str)).astype(object)})
    return answers, tokens


def run(out: Path, data: Path | None = None, answers: int = 100_000, repeats: int = 3, **opts) -> dict:
    """Time aggregate_spans on `answers` synthetic sentence-answers; write out/spans_speed.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ans, tokens = synthetic(answers)
    runs = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        r = aggregate_spans(ans, tokens=tokens)
        runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                     "iterations": r.iterations, "converged": r.converged})
    best = min(runs, key=lambda x: x["wall_s"])
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    result = {
        "sentence_answers": answers,
        "sentences": int(ans["sentence_id"].nunique()),
        "answer_rows": len(ans),
        "best": best,
        "runs": runs,
        "cpus": os.cpu_count(),
        "load_average": load,
        "defaults": {k: (list(v) if isinstance(v, tuple) else v) for k, v in DEFAULTS.items()},
        "goal": "<= 10 s wall for 100,000 sentence-answers on the 2-core machine",
    }
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=1))
    print(f"{answers} sentence-answers ({len(ans)} token rows): best wall {best['wall_s']:.2f} s, "
          f"CPU {best['cpu_s']:.2f} s, {best['iterations']} iterations; load average {load}")
    return result


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(metric, value, goal and whether met) rows for a Markdown table."""
    b = result["best"]
    ok = result["sentence_answers"] < 100_000 or b["wall_s"] <= 10
    return [(f"aggregate_spans on {result['sentence_answers']:,} sentence-answers",
             f"{b['wall_s']:.2f} s wall, {b['cpu_s']:.2f} s CPU ({b['iterations']} EM iterations)",
             f"<= 10 s: {'met' if ok else 'MISSED'}")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--answers", type=int, default=100_000)
    args = ap.parse_args(argv)
    run(args.out, answers=args.answers)


if __name__ == "__main__":
    main()

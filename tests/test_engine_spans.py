"""factory.aggregate_spans on synthetic BIO crowds whose noise is stated in each generator."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import factory
from factory.engine import spans as sp
from factory.engine.spans import aggregate_spans, bio_spans, repair_bio

TYPES = ("PER", "LOC", "ORG")


def _true_tags(rng: np.random.Generator, n_sent: int) -> list[list[str]]:
    """Sentences of 6-18 tokens; each token starts an entity with prob 0.15 (1-3 tokens, random type)."""
    out = []
    for _ in range(n_sent):
        n = int(rng.integers(6, 19))
        tags, t = ["O"] * n, 0
        while t < n:
            if rng.random() < 0.15:
                typ = TYPES[rng.integers(len(TYPES))]
                ln = int(min(rng.integers(1, 4), n - t))
                tags[t] = f"B-{typ}"
                for u in range(t + 1, t + ln):
                    tags[u] = f"I-{typ}"
                t += ln + 1  # an O after every entity, so spans never touch
            else:
                t += 1
        out.append(tags)
    return out


def _noisy(rng: np.random.Generator, tags: list[str], flip: float) -> list[str]:
    """Each token independently: with prob `flip` replaced by a random tag (O half the time)."""
    out = []
    all_tags = ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"]
    for t in tags:
        if rng.random() < flip:
            t = "O" if rng.random() < 0.5 else all_tags[rng.integers(1, len(all_tags))]
        out.append(t)
    return out


def _extend_right(tags: list[str]) -> list[str]:
    """Systematic boundary error: every span also takes the token after it (if that one is O)."""
    out = list(tags)
    for s, e, typ in bio_spans(tags):
        if e + 1 < len(tags) and tags[e + 1] == "O":
            out[e + 1] = f"I-{typ}"
    return out


def _crowd(seed: int, n_sent: int = 300, per_sentence: int = 3, good_flip: float = 0.12,
           n_good: int = 4, n_boundary: int = 2) -> tuple[pd.DataFrame, dict]:
    """answers (sentence_id, worker_id, token_index, tag) and truth {sentence_id: tags}.

    Workers g0..: token noise `good_flip`; workers b0..: perfect types but every span extended one
    token to the right, plus 3% token noise.  Each sentence gets `per_sentence` distinct workers."""
    rng = np.random.default_rng(seed)
    truth = {f"s{i:04d}": t for i, t in enumerate(_true_tags(rng, n_sent))}
    workers = [f"g{i}" for i in range(n_good)] + [f"b{i}" for i in range(n_boundary)]
    rows = []
    for sid, tags in truth.items():
        for w in rng.choice(workers, size=per_sentence, replace=False):
            ans = _noisy(rng, _extend_right(tags), 0.03) if w.startswith("b") else _noisy(rng, tags, good_flip)
            rows += [(sid, w, i, t) for i, t in enumerate(ans)]
    return pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"]), truth


def _f1(pred: pd.DataFrame, truth: dict) -> float:
    seqs = pred.sort_values(["sentence_id", "token_index"]).groupby("sentence_id")["tag"].agg(list)
    tp = n_pred = n_gold = 0
    for sid, gold in truth.items():
        g, p = set(bio_spans(gold)), set(bio_spans(repair_bio(seqs[sid])))
        tp += len(g & p)
        n_pred += len(p)
        n_gold += len(g)
    prec, rec = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return 2 * prec * rec / max(prec + rec, 1e-12)


def _majority(answers: pd.DataFrame) -> pd.DataFrame:
    """Token majority vote (ties to the alphabetically first tag), the baseline to beat."""
    counts = answers.groupby(["sentence_id", "token_index", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["sentence_id", "token_index", "n", "tag"], ascending=[True, True, False, True])
    return counts.drop_duplicates(["sentence_id", "token_index"])[["sentence_id", "token_index", "tag"]]


def _is_valid_bio(tags: list[str]) -> bool:
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


# ----------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("decode", ["viterbi", "marginal"])
def test_output_is_valid_bio_with_probabilities(decode):
    answers, truth = _crowd(seed=1, n_sent=150, good_flip=0.3)
    r = aggregate_spans(answers, decode=decode)
    assert factory.aggregate_spans is aggregate_spans
    tags = r.tags
    assert list(tags.columns[:4]) == ["sentence_id", "token_index", "tag", "probability"]
    assert len(tags) == sum(len(t) for t in truth.values())
    for sid, seq in tags.groupby("sentence_id")["tag"]:
        assert _is_valid_bio(list(seq)), sid
    prob_cols = [c for c in tags.columns if c.startswith("prob_")]
    assert sorted(prob_cols) == sorted(f"prob_{t}" for t in r.tag_names)
    P = tags[prob_cols].to_numpy()
    assert ((P >= 0) & (P <= 1)).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-9)
    assert tags["probability"].between(0, 1).all()
    # the probability column is the posterior of the tag that was output
    picked = tags.apply(lambda row: row[f"prob_{row['tag']}"], axis=1)
    np.testing.assert_allclose(tags["probability"], picked)
    # spans table = the spans read from the output tags, each with a posterior in [0, 1]
    assert r.spans["probability"].between(0, 1).all()
    from_tags = {(sid, s, e, t) for sid, seq in tags.groupby("sentence_id")["tag"] for s, e, t in bio_spans(list(seq))}
    assert set(map(tuple, r.spans[["sentence_id", "start", "end", "type"]].itertuples(index=False))) == from_tags


def test_span_posterior_is_exact():
    """The span probabilities equal brute-force enumeration over all tag sequences of the HMM."""
    answers = pd.DataFrame({"sentence_id": ["a"] * 4 + ["b"] * 3, "worker_id": "w",
                            "token_index": [0, 1, 2, 3, 0, 1, 2], "tag": ["B-X", "I-X", "O", "B-X", "O", "B-X", "I-X"]})
    d = sp._encode(answers, None, None, "seq", False)
    K = len(d.tag_names)
    rng = np.random.default_rng(0)
    valid = sp._valid_transitions(d.types)
    trans = np.where(valid, rng.uniform(0.1, 1.0, size=valid.shape), 0.0)
    logemit = rng.normal(size=(d.A.shape[0], K))
    gamma, alpha, beta, emit, scale, _, _ = sp._forward_backward(d, logemit, trans)
    sm = d.tm_of_sm
    for sent_i, length in enumerate(d.lengths):
        toks = sm[d.sm_start[sent_i]:d.sm_start[sent_i + 1]]
        weights = {}
        for seq in itertools.product(range(K), repeat=int(length)):
            w = trans[K, seq[0]] * np.exp(logemit[toks[0], seq[0]])
            for t in range(1, int(length)):
                w *= trans[seq[t - 1], seq[t]] * np.exp(logemit[toks[t], seq[t]])
            weights[seq] = w
        Z = sum(weights.values())
        marg = np.zeros((int(length), K))
        for seq, w in weights.items():
            marg[np.arange(int(length)), seq] += w / Z
        np.testing.assert_allclose(gamma[toks], marg, atol=1e-10)
        # every possible span (start, end, type): exact probability vs enumeration
        for s in range(int(length)):
            for e in range(s, int(length)):
                codes = np.zeros(int(length), dtype=np.int64)
                codes[s], codes[s + 1:e + 1] = 1, 2
                full_sm = np.zeros(d.A.shape[0], dtype=np.int64)
                full_sm[d.sm_start[sent_i]:d.sm_start[sent_i + 1]] = codes
                table = sp._span_table(d, full_sm, alpha[sm], beta[sm], emit[sm], scale[sm], trans)
                row = table[(table["sentence_id"] == d.sentence_ids[sent_i]) & (table["start"] == s)]
                brute = sum(w for seq, w in weights.items()
                            if seq[s] == 1 and all(c == 2 for c in seq[s + 1:e + 1])
                            and (e + 1 == length or seq[e + 1] != 2)) / Z
                assert abs(float(row["probability"].iloc[0]) - brute) < 1e-10, (sent_i, s, e)


def test_no_entity_answers_are_valid():
    answers = pd.DataFrame({"sentence_id": ["s1"] * 6, "worker_id": ["a"] * 3 + ["b"] * 3,
                            "token_index": [0, 1, 2] * 2, "tag": ["O"] * 6})
    r = aggregate_spans(answers)
    assert list(r.tags["tag"]) == ["O", "O", "O"]
    assert r.spans.empty
    assert list(r.spans.columns) == ["sentence_id", "start", "end", "type", "probability"]
    assert r.tag_names == ["O"]
    # with types given, the all-O crowd still yields O everywhere
    r = aggregate_spans(answers, types=["PER"])
    assert list(r.tags["tag"]) == ["O", "O", "O"]


def test_bad_tag_names_the_row():
    answers = pd.DataFrame({"sentence_id": ["s1"] * 4, "worker_id": ["a"] * 4,
                            "token_index": [0, 1, 2, 3], "tag": ["O", "B-PER", "O", "B_LOC"]})
    with pytest.raises(ValueError, match=r"row 3 .*sentence_id='s1'.*worker_id='a'.*token_index=3.*'B_LOC'"):
        aggregate_spans(answers)
    with pytest.raises(ValueError, match=r"row 1 has tag 'B-PER', whose type is not in types"):
        aggregate_spans(answers.iloc[:2], types=["LOC"])
    dup = pd.concat([answers.iloc[:2], answers.iloc[1:2]], ignore_index=True)
    with pytest.raises(ValueError, match=r"row 2 repeats sentence_id='s1', worker_id='a', token_index=1"):
        aggregate_spans(dup)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['tag'\]"):
        aggregate_spans(answers.drop(columns="tag"))


# ----------------------------------------------------------------------------- quality


def test_beats_token_majority_with_systematic_boundary_workers():
    """Two of six workers extend every span by one token; a sentence gets 3 workers, so whenever
    both boundary workers answer it, majority vote takes their boundary."""
    answers, truth = _crowd(seed=2)
    f_mv = _f1(_majority(answers), truth)
    f_fused = _f1(aggregate_spans(answers).tags, truth)
    assert f_fused > f_mv + 0.05, (f_fused, f_mv)


def test_sequential_annotator_model_learns_boundary_errors():
    """Pins the sequential annotator model: conditioning a worker's tag on their previous tag is what
    reads the extended-span workers back; the plain confusion model does measurably worse."""
    answers, truth = _crowd(seed=3)
    f_seq = _f1(aggregate_spans(answers, annotator="seq").tags, truth)
    f_conf = _f1(aggregate_spans(answers, annotator="confusion").tags, truth)
    assert f_seq > f_conf + 0.02, (f_seq, f_conf)


def test_holds_on_unseen_sentences():
    """Defaults were never chosen on synthetic data: fresh sentences and fresh noise (other seeds,
    other noise level) still beat majority vote by a wide margin."""
    for seed, flip in ((11, 0.1), (12, 0.2)):
        answers, truth = _crowd(seed=seed, n_sent=200, good_flip=flip)
        f_mv = _f1(_majority(answers), truth)
        f_fused = _f1(aggregate_spans(answers).tags, truth)
        assert f_fused > f_mv + 0.1, (seed, f_fused, f_mv)


def test_transition_model_bridges_an_unanswered_token():
    """Pins the learned transitions: every true span here is exactly two tokens, so after a
    unanimous B-X the token nobody tagged (tokens= says it exists) must be I-X.  With transitions
    left at their prior the model cannot know that."""
    rows, tokens = [], []
    for i in range(200):
        sid = f"s{i:03d}"
        tags = ["O", "B-PER", "I-PER", "O", "O"] if i % 2 else ["O", "O", "B-LOC", "I-LOC", "O"]
        for w in ("a", "b", "c"):
            rows += [(sid, w, t, g) for t, g in enumerate(tags)]
        tokens += [(sid, t, "x") for t in range(5)]
    answers = pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"])
    probe = [("p0", w, t, g) for w in ("a", "b", "c") for t, g in ((0, "O"), (1, "B-PER"), (3, "O"))]
    answers = pd.concat([answers, pd.DataFrame(probe, columns=answers.columns)], ignore_index=True)
    tokens += [("p0", t, "x") for t in range(4)]
    r = aggregate_spans(answers, tokens=pd.DataFrame(tokens, columns=["sentence_id", "token_index", "token"]))
    gap = r.tags[(r.tags["sentence_id"] == "p0") & (r.tags["token_index"] == 2)].iloc[0]
    assert gap["tag"] == "I-PER" and gap["probability"] > 0.9, gap.to_dict()
    assert r.transitions.loc["B-PER", "I-PER"] > 0.9


def test_model_labeler_enters_as_an_annotator():
    """A model is just one more worker: a good model answering every sentence gets a high learned
    accuracy and lifts the fusion; a bad one gets a low accuracy."""
    answers, truth = _crowd(seed=4, n_sent=200, good_flip=0.25)
    rng = np.random.default_rng(5)
    good_model = [(sid, "model:crf", i, t) for sid, tags in truth.items() for i, t in enumerate(_noisy(rng, tags, 0.05))]
    bad_model = [(sid, "model:bad", i, t) for sid, tags in truth.items() for i, t in enumerate(_noisy(rng, tags, 0.6))]
    both = pd.concat([answers, pd.DataFrame(good_model + bad_model, columns=answers.columns)], ignore_index=True)
    r = aggregate_spans(both)
    acc = r.workers.set_index("worker_id")["accuracy"]
    assert acc["model:crf"] > 0.9 > acc["model:bad"]
    assert _f1(r.tags, truth) > _f1(aggregate_spans(answers).tags, truth)


def test_text_emitter_breaks_a_tie_with_the_words_history():
    """Pins the token-text emitter: 'Paris' is LOC in 100 unanimous sentences; in the probe two equally
    reliable workers split on it (B-LOC vs O).  With the text the word's history decides (LOC);
    without it the tie falls to the chain's prior, which favours O."""
    rows, tokens = [], []
    for i in range(100):
        sid = f"s{i:03d}"
        words = ["we", "went", "to", "Paris", "today"] if i % 2 else ["the", "cat", "sat", "down", "here"]
        tags = ["O", "O", "O", "B-LOC", "O"] if i % 2 else ["O"] * 5
        rows += [(sid, w, t, g) for w in ("a", "b") for t, g in enumerate(tags)]
        tokens += [(sid, t, x) for t, x in enumerate(words)]
    rows += [("p0", "a", t, g) for t, g in enumerate(["O", "O", "B-LOC", "O"])]
    rows += [("p0", "b", t, g) for t, g in enumerate(["O", "O", "O", "O"])]
    tokens += [("p0", t, x) for t, x in enumerate(["she", "likes", "Paris", "too"])]
    answers = pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"])
    tokens = pd.DataFrame(tokens, columns=["sentence_id", "token_index", "token"])

    def probe(**opts):
        t = aggregate_spans(answers, tokens=tokens, **opts).tags
        return t[(t["sentence_id"] == "p0") & (t["token_index"] == 2)].iloc[0]

    with_text, without = probe(text_weight=0.5), probe(text_weight=0.0)
    assert with_text["tag"] == "B-LOC" and without["tag"] == "O", (with_text.to_dict(), without.to_dict())
    assert probe()["tag"] == "B-LOC"  # the defaults read the text when tokens carry it


def test_uninformative_text_does_not_hurt():
    """Pins the text emitter's form (the token left out, odds relative to the tag prior): random words
    as text must leave the fusion about where the crowd alone puts it, not echo each token's own
    posterior back at it."""
    answers, truth = _crowd(seed=21, n_sent=200, good_flip=0.1)
    rng = np.random.default_rng(22)
    tokens = pd.DataFrame([(sid, i, f"w{rng.integers(3000)}") for sid, tags in truth.items() for i in range(len(tags))],
                          columns=["sentence_id", "token_index", "token"])
    f_crowd = _f1(aggregate_spans(answers).tags, truth)
    f_random_text = _f1(aggregate_spans(answers, tokens=tokens).tags, truth)
    assert f_random_text > f_crowd - 0.02, (f_random_text, f_crowd)


def test_the_fusion_learns_its_parameters_only_from_types_somebody_gave():
    """Pins ``support_mask``: 'Paris' is LOC in 100 sentences (worker c misses it half the time); in 100
    probe sentences it opens the sentence and only c answered, all O.  Unmasked, the EM explains c's O as
    a missed LOC and learns that sentences often start with B-LOC (nobody said so); with the mask the
    parameters are estimated with each token's type restricted to one some answer gave there (or O), so
    the start transition stays where the answers put it.  On the crowd NER set the unmasked drift put
    B-MISC on first tokens nobody tagged (benchmarks/RESULTS-spans.md)."""
    rows, tokens = [], []
    for i in range(100):
        sid = f"s{i:03d}"
        tags = ["O", "O", "O", "B-LOC", "O"]
        rows += [(sid, w, t, g) for w in ("a", "b") for t, g in enumerate(tags)]
        rows += [(sid, "c", t, g if i % 2 else "O") for t, g in enumerate(tags)]
        tokens += [(sid, t, x) for t, x in enumerate(["we", "went", "to", "Paris", "today"])]
        rows += [(f"p{i:03d}", "c", t, "O") for t in range(3)]
        tokens += [(f"p{i:03d}", t, x) for t, x in enumerate(["Paris", "is", "nice"])]
    answers = pd.DataFrame(rows, columns=["sentence_id", "worker_id", "token_index", "tag"])
    tokens = pd.DataFrame(tokens, columns=["sentence_id", "token_index", "token"])
    unmasked = aggregate_spans(answers, tokens=tokens, support_mask=False).transitions.loc["<start>", "B-LOC"]
    masked = aggregate_spans(answers, tokens=tokens).transitions.loc["<start>", "B-LOC"]
    assert unmasked > 0.3, unmasked  # the case is real: without the mask the EM invents sentence-initial LOCs
    assert masked < 0.05, masked

"""Span aggregation: fuse several people's (and models') BIO tag sequences into one valid span set.

The model is a Bayesian hidden Markov model in the family of HMM-Crowd (Nguyen et al., ACL 2017)
and BSC-seq (Simpson & Gurevych, EMNLP 2019):

- the true tags ``z_1..z_T`` of a sentence form a Markov chain over ``O, B-X, I-X`` with a start
  row; transitions that break BIO (``O -> I-X``, ``B-X -> I-Y``, start ``-> I-X``) have probability 0,
  the others a Dirichlet(``transition_alpha``) prior;
- each annotator ``w`` emits its tag ``c_t`` from a confusion distribution that depends on the true
  tag and, with ``annotator="seq"`` (BSC-seq's sequential annotator model), on the annotator's own
  previous tag ``c_{t-1}``: ``p(c_t = l | z_t = k, c_{t-1} = m)``.  Conditioning on the previous tag
  is what lets the model learn *systematic boundary errors* (a worker who always starts a name one
  token late, or never tags the second token of ``New York``) and read them back.
  ``annotator="confusion"`` drops the dependence (HMM-Crowd's per-worker confusion matrix);
- confusion rows have a Dirichlet prior that leans to the diagonal (``diag_alpha`` on the answered
  tag = true tag, ``off_alpha`` elsewhere), plus ``pool_strength`` pseudo-answers drawn from the
  pooled confusion of all annotators (a hierarchical prior: a sparse annotator's rare rows borrow
  from the crowd instead of from the flat prior);
- optionally (``tokens`` given and ``text_weight > 0``) the token text enters as one more emitter:
  per-tag multinomials over the lower-cased word and over its shape (``Xx``, ``XX``, ``x``, ``d``,
  ``.``), learned from the crowd posteriors alone (HMM-Crowd's word emissions), scaled by
  ``text_weight``.

Inference is mean-field variational Bayes (as BSC-seq): the E-step runs forward-backward over the
true tags with the expected log-parameters ``E[log theta] = digamma(a) - digamma(sum a)``; the M-step
adds expected counts to the priors.  Model labelers are just more annotators, so their reliability
is learned the same way as a person's.  Nothing here reads truth: the fit is unsupervised and works
on sentences nobody has scored.

Vectorisation: every (worker, previous tag, tag) is a column of one sparse matrix ``A`` (tokens x
columns), so all annotators' emissions are one product ``A @ E[log theta]`` and all confusion counts
one product ``A.T @ posteriors``.  Forward-backward runs over all sentences at once: sentences are
sorted by length, longest first, and tokens are laid out time-major, so step ``t`` touches the first
``n_t`` sentences (a contiguous slice) and the Python loop has ``max length`` steps, not one per
sentence.

Decoding (``decode``): ``"viterbi"`` finds the most probable valid tag sequence (the zero
transitions make it valid BIO by construction); ``"marginal"`` takes each token's most probable tag
and repairs ``I-X`` that does not follow ``B-X``/``I-X`` into ``B-X``.  Every output span carries its
exact posterior probability ``p(z_i = B-X, z_{i+1..j} = I-X, z_{j+1} != I-X | answers)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import digamma

from factory.engine.aggregate import _single_thread_blas

# Fixed defaults, chosen by nested 5-fold cross-validation over documents (benchmarks/spans.py):
# per fold, the setting of least maximum regret over the other four folds of the crowd NER set and
# four synthetic crowds (small, noise 0.1-0.4, systematic boundary workers); 3 of 5 folds chose
# diag 20 / off 0.5 / text 0.5 (the others text 0.7, and diag 10 / text 0.3).  NER alone preferred a
# flatter prior (diag 5, off 2) that fell to majority-vote level on the noisiest synthetic crowd.
# log-odds against an entity type nobody gave on a token (support_mask): effectively zero, yet finite so
# the span table's cumulative log sums stay finite
SUPPORT_LOG_PENALTY = -30.0

DEFAULTS: dict[str, Any] = {
    "annotator": "seq",  # "seq" (BSC-seq: tag depends on true tag and own previous tag) or "confusion"
    "diag_alpha": 20.0,  # Dirichlet pseudo-count on a confusion row's diagonal (answered tag = true tag)
    "off_alpha": 0.5,  # ... and on each other cell
    # pseudo-answers per confusion row drawn from the crowd's pooled confusion (not in the CV grid:
    # 0, 1, 5, 20 moved NER strict F1 by < 0.002 in a first look, 5 kept)
    "pool_strength": 5.0,
    "support_mask": True,  # a token's fused entity type must be one somebody gave on it (or O); see _fit
    "transition_alpha": 1.0,  # Dirichlet pseudo-count per valid transition
    "text_weight": 0.5,  # weight of the token-text emitter (needs tokens=); 0 = crowd only
    "text_alpha": 1.0,  # pseudo-tokens at the tag prior behind each word's (or shape's) tag odds
    "text_features": ("word", "shape"),  # which token views the text emitter reads
    # "odds": log p(tag | word elsewhere) - log p(tag) (see _text_log_emission); "multinomial": the
    # textbook per-tag word multinomials of HMM-Crowd (Nguyen et al. 2017), kept for that baseline
    "text_model": "odds",
    "decode": "viterbi",  # "viterbi" (most probable valid sequence) or "marginal" (+ BIO repair)
    "max_iter": 50,
    "tol": 1e-5,  # stop when token posteriors move less than this on average in one iteration
}
_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class SpanAggregation:
    """What ``aggregate_spans`` returns.

    ``tags``: one row per token, ``sentence_id, token_index, tag, probability`` (the posterior of the
    output tag) and ``prob_<tag>`` per tag (they sum to 1 per token).  ``spans``: one row per output
    span, ``sentence_id, start, end, type, probability`` with ``end`` inclusive (the convention of
    ``answers_spans.csv``) and ``probability`` the span's exact posterior.  ``workers``: ``worker_id,
    n_tokens, accuracy`` (expected share of the worker's tags that equal the true tag) and
    ``entity_recall`` (expected share of true entity tokens the worker tagged with the right tag).
    """

    tags: pd.DataFrame
    spans: pd.DataFrame
    workers: pd.DataFrame
    tag_names: list
    transitions: pd.DataFrame
    iterations: int
    converged: bool
    log_likelihood: float
    options: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- tags


def _tag_names(types: list) -> list:
    names = ["O"]
    for t in types:
        names += [f"B-{t}", f"I-{t}"]
    return names


def _valid_transitions(types: list) -> np.ndarray:
    """(K+1, K) boolean: row K is the start state.  I-X may only follow B-X or I-X."""
    K = 1 + 2 * len(types)
    ok = np.ones((K + 1, K), dtype=bool)
    for x in range(len(types)):
        i_x = 2 + 2 * x
        ok[:, i_x] = False
        ok[i_x - 1, i_x] = True  # B-X -> I-X
        ok[i_x, i_x] = True  # I-X -> I-X
    return ok


def repair_bio(tags: Iterable[str]) -> list[str]:
    """Turn an I-X that does not follow B-X/I-X into B-X (conlleval's reading of the same spans)."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out


def bio_spans(tags: Iterable[str]) -> list[tuple[int, int, str]]:
    """Spans ``(start, end_inclusive, type)`` read from tags as conlleval reads them."""
    spans, start, typ = [], None, None
    tags = list(tags)
    for i, t in enumerate(tags + ["O"]):
        begins = t.startswith("B-") or (t.startswith("I-") and t[2:] != typ)
        if start is not None and (t == "O" or begins):
            spans.append((start, i - 1, typ))
            start, typ = None, None
        if begins:
            start, typ = i, t[2:]
    return spans


# ----------------------------------------------------------------------------- input


@dataclass
class _Data:
    tag_names: list
    types: list
    sentence_ids: pd.Index
    worker_ids: pd.Index
    lengths: np.ndarray  # per sentence (in sentence_ids order)
    order: np.ndarray  # sentence indices sorted by length, longest first
    offsets: np.ndarray  # time-major offset of step t (length max_len + 1)
    n_active: np.ndarray  # sentences active at step t
    tm_of_sm: np.ndarray  # time-major position of each sentence-major token
    sm_start: np.ndarray  # sentence-major offset of each sentence (length n_sent + 1)
    A: sparse.csr_matrix  # time-major tokens x (worker, prev, tag) columns
    n_prev: int
    ans_pos: np.ndarray  # time-major position of each answer row
    ans_worker: np.ndarray
    ans_tag: np.ndarray
    F: sparse.csr_matrix | None  # time-major tokens x text feature values
    feature_groups: np.ndarray | None  # group id (0 word, 1 shape) per feature column
    text_codes: np.ndarray | None = None  # (views, tokens): F column of each time-major token, -1 if none


def _py(v: Any) -> Any:
    """A numpy scalar as the plain Python value, so error messages read `3`, not `np.int64(3)`."""
    return v.item() if isinstance(v, np.generic) else v


def _word_shape(words: pd.Series) -> pd.Series:
    s = words.astype(str)
    shape = s.str.replace(r"[A-Z]", "X", regex=True).str.replace(r"[a-z]", "x", regex=True)
    shape = shape.str.replace(r"[0-9]", "d", regex=True).str.replace(r"[^Xxd]", ".", regex=True)
    return shape.str.replace(r"(.)\1+", r"\1", regex=True)


def _encode(answers: pd.DataFrame, tokens: pd.DataFrame | None, types: Iterable[str] | None, n_prev_mode: str,
            want_text: bool, text_features: Iterable[str] = ()) -> _Data:
    if not isinstance(answers, pd.DataFrame):
        raise TypeError(f"answers must be a pandas DataFrame, got {type(answers).__name__}")
    need = ["sentence_id", "worker_id", "token_index", "tag"]
    missing = [c for c in need if c not in answers.columns]
    if missing:
        raise ValueError(f"answers: missing column(s) {missing}; expected {', '.join(need)}")
    ans = answers[need].reset_index(drop=True)
    for col in ("sentence_id", "worker_id", "token_index", "tag"):
        bad = np.flatnonzero(ans[col].isna().to_numpy())
        if len(bad):
            raise ValueError(f"answers: {col} is missing in row {int(bad[0])} ({len(bad)} rows in all); every row needs one")
    tag_str = ans["tag"].astype(str)
    uniq = pd.unique(tag_str)
    bad_tags = [t for t in uniq if not _TAG_RE.match(t)]
    if bad_tags:
        row = int(np.flatnonzero(tag_str.isin(bad_tags).to_numpy())[0])
        r = {k: _py(v) for k, v in ans.iloc[row].items()}
        raise ValueError(
            f"answers: row {row} (sentence_id={r['sentence_id']!r}, worker_id={r['worker_id']!r}, "
            f"token_index={r['token_index']!r}) has tag {tag_str.iloc[row]!r}, which is not BIO; "
            "use O, B-<type> or I-<type>")
    seen_types = sorted({t[2:] for t in uniq if t != "O"})
    if types is None:
        types = seen_types
    else:
        types = list(types)
        extra = [t for t in seen_types if t not in types]
        if extra:
            row = int(np.flatnonzero(tag_str.str[2:].isin(extra).to_numpy() & (tag_str != "O").to_numpy())[0])
            raise ValueError(f"answers: row {row} has tag {tag_str.iloc[row]!r}, whose type is not in types {types!r}")
    tag_names = _tag_names(types)
    K = len(tag_names)
    tag_code = pd.Index(tag_names).get_indexer(tag_str)
    tok = pd.to_numeric(ans["token_index"], errors="coerce")
    bad = np.flatnonzero((tok.isna() | (tok < 0) | (tok != np.floor(tok))).to_numpy())
    if len(bad):
        raise ValueError(f"answers: row {int(bad[0])} has token_index {ans['token_index'].iloc[bad[0]]!r}; "
                         "token_index must be an integer >= 0")
    tok = tok.to_numpy().astype(np.int64)

    sent_vals = ans["sentence_id"]
    if tokens is not None:
        for c in ("sentence_id", "token_index"):
            if c not in tokens.columns:
                raise ValueError(f"tokens: missing column {c!r}; expected sentence_id, token_index, token")
        sent_vals = pd.concat([sent_vals, tokens["sentence_id"]], ignore_index=True)
    sent_codes, sentence_ids = pd.factorize(sent_vals, sort=True)
    s_ans = sent_codes[: len(ans)]
    w_codes, worker_ids = pd.factorize(ans["worker_id"], sort=True)
    n_sent, n_work = len(sentence_ids), len(worker_ids)

    # a worker answers a token once
    key = (s_ans.astype(np.int64) * (tok.max() + 1 if len(tok) else 1) + tok) * max(n_work, 1) + w_codes
    dup = pd.Series(key).duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        r = {k: _py(v) for k, v in ans.iloc[row].items()}
        raise ValueError(f"answers: row {row} repeats sentence_id={r['sentence_id']!r}, worker_id={r['worker_id']!r}, "
                         f"token_index={int(tok[row])}; a worker tags each token once")

    lengths = np.zeros(n_sent, dtype=np.int64)
    if len(tok):
        np.maximum.at(lengths, s_ans, tok + 1)
    if tokens is not None and len(tokens):
        t_tok = pd.to_numeric(tokens["token_index"], errors="coerce").to_numpy()
        if np.isnan(t_tok).any() or (t_tok < 0).any():
            row = int(np.flatnonzero(np.isnan(t_tok) | (t_tok < 0))[0])
            raise ValueError(f"tokens: row {row} has token_index {tokens['token_index'].iloc[row]!r}; must be an integer >= 0")
        t_tok = t_tok.astype(np.int64)
        np.maximum.at(lengths, sent_codes[len(ans):], t_tok + 1)

    order = np.argsort(-lengths, kind="stable")
    rank = np.empty(n_sent, dtype=np.int64)
    rank[order] = np.arange(n_sent)
    max_len = int(lengths.max()) if n_sent else 0
    # n_active[t] = number of sentences longer than t: they are the first n_active[t] in `order`
    n_active = n_sent - np.searchsorted(np.sort(lengths), np.arange(max_len), side="right")
    offsets = np.concatenate([[0], np.cumsum(n_active)]).astype(np.int64)
    sm_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_tok = int(sm_start[-1])
    # time-major position of every sentence-major token
    sm_sent = np.repeat(np.arange(n_sent), lengths)
    sm_t = np.arange(n_tok) - sm_start[sm_sent]
    tm_of_sm = offsets[sm_t] + rank[sm_sent] if n_tok else np.zeros(0, np.int64)

    pos = offsets[tok] + rank[s_ans] if len(tok) else np.zeros(0, np.int64)
    # previous tag of the same worker on the previous token (K = start / not answered)
    n_prev = K + 1 if n_prev_mode == "seq" else 1
    if n_prev_mode == "seq":
        prev_key = (s_ans.astype(np.int64) * (tok.max() + 2 if len(tok) else 1) + tok) * max(n_work, 1) + w_codes
        look = (s_ans.astype(np.int64) * (tok.max() + 2 if len(tok) else 1) + tok - 1) * max(n_work, 1) + w_codes
        idx = pd.Index(prev_key).get_indexer(look)
        prev = np.where(idx >= 0, tag_code[np.maximum(idx, 0)], K)
        prev[tok == 0] = K
    else:
        prev = np.zeros(len(tok), dtype=np.int64)
    col = (w_codes.astype(np.int64) * n_prev + prev) * K + tag_code
    A = sparse.csr_matrix((np.ones(len(col)), (pos, col)), shape=(n_tok, n_work * n_prev * K))

    F, groups, text_codes = None, None, None
    if want_text and tokens is not None and "token" in tokens.columns and len(tokens):
        t_sent = sent_codes[len(ans):]
        t_pos = offsets[t_tok] + rank[t_sent]
        words = tokens["token"].astype(str).reset_index(drop=True)
        # views are computed on the distinct words only (a regex per token is seconds at 1M tokens)
        word_codes, distinct = pd.factorize(words)
        distinct = pd.Series(distinct.astype(str))
        views = {"word": lambda w: w.str.lower(), "shape": _word_shape, "exact": lambda w: w}
        rows, cols, groups, width = [], [], [], 0
        for g, name in enumerate(text_features):
            if name not in views:
                raise ValueError(f"text_features: unknown view {name!r}; known: {sorted(views)}")
            view_codes, vals = pd.factorize(views[name](distinct))
            codes = view_codes[word_codes]
            rows.append(t_pos)
            cols.append(codes + width)
            groups.append(np.full(len(vals), g, np.int64))
            width += len(vals)
        text_codes = np.full((len(cols), n_tok), -1, dtype=np.int64)
        for g, (r_, c_) in enumerate(zip(rows, cols)):
            text_codes[g, r_] = c_
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        F = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_tok, width))
        groups = np.concatenate(groups)
    return _Data(tag_names, list(types), sentence_ids, worker_ids, lengths, order, offsets, n_active, tm_of_sm,
                 sm_start, A, n_prev, pos, w_codes, tag_code, F, groups, text_codes)


# ----------------------------------------------------------------------------- inference


def _forward_backward(d: _Data, logemit: np.ndarray, trans: np.ndarray) -> tuple:
    """Scaled forward-backward over all sentences at once (time-major layout).

    Returns (gamma, alpha_hat, beta_hat, emit, scale, transition_counts, log_likelihood): ``emit``
    is exp(logemit - rowmax), ``scale`` the per-token normaliser c_t, so that
    p(z_t | x) = alpha_hat * beta_hat and log p(x) = sum(log c) + sum(rowmax)."""
    K = trans.shape[1]
    n = logemit.shape[0]
    rowmax = logemit.max(axis=1) if n else np.zeros(0)
    emit = np.exp(logemit - rowmax[:, None])
    alpha = np.empty((n, K))
    beta = np.empty((n, K))
    scale = np.empty(n)
    A, start = trans[:K], trans[K]
    off, na = d.offsets, d.n_active
    T = len(na)
    if T == 0:
        return np.zeros((0, K)), alpha, beta, emit, scale, np.zeros_like(trans), 0.0
    # row sums as products with a ones vector: numpy's axis-1 reduction over rows of ~9 values is
    # several times slower than one BLAS matrix-vector product; results are written in place
    ones = np.ones(K)
    s0, e0 = off[0], off[0] + na[0]
    a = alpha[s0:e0]
    np.multiply(start[None, :], emit[s0:e0], out=a)
    c = a @ ones
    a /= c[:, None]
    scale[s0:e0] = c
    for t in range(1, T):
        s, m = off[t], na[t]
        p = off[t - 1]
        a = alpha[s:s + m]
        np.matmul(alpha[p:p + m], A, out=a)
        a *= emit[s:s + m]
        c = a @ ones
        a /= c[:, None]
        scale[s:s + m] = c
    pair = np.zeros((K, K))
    beta[off[T - 1]:off[T - 1] + na[T - 1]] = 1.0
    for t in range(T - 2, -1, -1):
        s, m = off[t], na[t]
        nxt, mn = off[t + 1], na[t + 1]
        w = emit[nxt:nxt + mn] * beta[nxt:nxt + mn]
        w /= scale[nxt:nxt + mn, None]
        np.matmul(w, A.T, out=beta[s:s + mn])
        beta[s + mn:s + m] = 1.0
        pair += alpha[s:s + mn].T @ w  # times A once at the end: A is the same at every step
    counts = np.zeros_like(trans)
    counts[:K] = pair * A
    gamma = alpha * beta
    gamma /= (gamma @ ones)[:, None]
    counts[K] = gamma[s0:e0].sum(axis=0)
    loglik = float(np.log(scale).sum() + rowmax.sum())
    return gamma, alpha, beta, emit, scale, counts, loglik


def _expected_log_dirichlet(post: np.ndarray, axis: int) -> np.ndarray:
    return digamma(post) - digamma(post.sum(axis=axis, keepdims=True))


def _viterbi(d: _Data, logemit: np.ndarray, log_trans: np.ndarray) -> np.ndarray:
    """Most probable tag sequence of every sentence (time-major codes)."""
    K = log_trans.shape[1]
    n = logemit.shape[0]
    off, na = d.offsets, d.n_active
    T = len(na)
    best = np.zeros(n, dtype=np.int64)
    if T == 0:
        return best
    LA, start = log_trans[:K], log_trans[K]
    back = np.zeros((n, K), dtype=np.int16)
    delta = start[None, :] + logemit[off[0]:off[0] + na[0]]
    deltas = [delta]
    for t in range(1, T):
        s, m = off[t], na[t]
        cand = deltas[-1][:m, :, None] + LA[None, :, :]  # (m, prev, cur)
        arg = cand.argmax(axis=1)
        back[s:s + m] = arg
        deltas.append(np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :] + logemit[s:s + m])
    # backtrack: a sentence ending at step t starts from its own argmax there
    cur = np.zeros(na[0], dtype=np.int64)
    for t in range(T - 1, -1, -1):
        s, m = off[t], na[t]
        m_next = na[t + 1] if t + 1 < T else 0
        if m > m_next:  # sentences whose last token is at step t
            cur[m_next:m] = deltas[t][m_next:m].argmax(axis=1)
        best[s:s + m] = cur[:m]
        if t > 0:
            cur[:m] = back[s:s + m][np.arange(m), cur[:m]]
    return best


def _marginal_decode(gamma_sm: np.ndarray, d: _Data) -> np.ndarray:
    """Each token's most probable tag, then I-X not after B-X/I-X becomes B-X (vectorised)."""
    codes = gamma_sm.argmax(axis=1)
    if not len(codes):
        return codes
    is_i = (codes > 0) & (codes % 2 == 0)
    first = np.zeros(len(codes), dtype=bool)
    first[d.sm_start[:-1][d.lengths > 0]] = True
    prev = np.concatenate([[0], codes[:-1]])
    prev[first] = 0
    prev_type = np.where(prev > 0, (prev - 1) // 2, -1)
    bad = is_i & (prev_type != (codes - 1) // 2)
    # a repair can make the next I-X valid again: codes change only I->B of the same type, so the
    # type of the previous token never changes and one pass suffices
    codes = codes.copy()
    codes[bad] -= 1
    return codes


def _span_table(d: _Data, codes_sm: np.ndarray, alpha_sm, beta_sm, emit_sm, scale_sm, trans) -> pd.DataFrame:
    """Decoded spans with their exact posterior probability (see the module docstring)."""
    K = len(d.tag_names)
    n = len(codes_sm)
    sent = np.repeat(np.arange(len(d.lengths)), d.lengths)
    tpos = np.arange(n) - d.sm_start[sent] if n else np.zeros(0, np.int64)
    is_b = (codes_sm > 0) & (codes_sm % 2 == 1)
    starts = np.flatnonzero(is_b)
    if not len(starts):
        return pd.DataFrame({"sentence_id": pd.Series([], dtype=object), "start": np.zeros(0, np.int64),
                             "end": np.zeros(0, np.int64), "type": pd.Series([], dtype=object), "probability": np.zeros(0)})
    # end of each span: last consecutive I of the same type in the same sentence
    nxt_is_i = np.zeros(n, dtype=bool)
    same_sent = np.zeros(n, dtype=bool)
    same_sent[:-1] = sent[1:] == sent[:-1]
    nxt_is_i[:-1] = (codes_sm[1:] == codes_sm[:-1] + 1) | ((codes_sm[1:] == codes_sm[:-1]) & (codes_sm[:-1] % 2 == 0) & (codes_sm[:-1] > 0))
    cont = nxt_is_i & same_sent  # token i+1 continues the span at i
    stop = np.flatnonzero(~cont)
    ends = stop[np.searchsorted(stop, starts)]
    x = (codes_sm[starts] - 1) // 2
    b_code, i_code = 1 + 2 * x, 2 + 2 * x
    A = trans[:K]
    with np.errstate(divide="ignore"):
        # per token and type: log of A[I-X -> I-X] e_t(I-X) / c_t
        i_codes = np.arange(2, K, 2)
        g = np.log(A[i_codes, i_codes][None, :] * emit_sm[:, i_codes] / scale_sm[:, None])
        cg = np.vstack([np.zeros((1, g.shape[1])), np.cumsum(g, axis=0)])
        logp = np.log(alpha_sm[starts, b_code])
        multi = ends > starts
        first_cont = starts + 1
        fc = np.minimum(first_cont, n - 1)
        step1 = np.log(A[b_code, i_code] * emit_sm[fc, i_code] / scale_sm[fc])
        rest = cg[ends + 1, x] - cg[np.minimum(starts + 2, ends + 1), x]
        logp = logp + np.where(multi, step1 + rest, 0.0)
        last_code = np.where(multi, i_code, b_code)
        at_end = tpos[ends] == d.lengths[sent[ends]] - 1
        nj = np.minimum(ends + 1, n - 1)
        tail = beta_sm[ends, last_code] - np.where(
            at_end, 0.0, A[last_code, i_code] * emit_sm[nj, i_code] * beta_sm[nj, i_code] / scale_sm[nj])
        logp = logp + np.log(np.maximum(tail, 0.0))
    prob = np.clip(np.exp(logp), 0.0, 1.0)
    types = np.asarray(d.types, dtype=object)
    return pd.DataFrame({
        "sentence_id": d.sentence_ids.to_numpy()[sent[starts]],
        "start": tpos[starts].astype(np.int64),
        "end": tpos[ends].astype(np.int64),
        "type": types[x],
        "probability": prob,
    })


def aggregate_spans(
    answers: pd.DataFrame,
    tokens: pd.DataFrame | None = None,
    types: Iterable[str] | None = None,
    **opts: Any,
) -> SpanAggregation:
    """Fuse BIO tag answers (``sentence_id, worker_id, token_index, tag``) into valid spans with posteriors.

    ``tokens`` (``sentence_id, token_index[, token]``) fixes sentence lengths (tokens nobody tagged
    get the model's prior) and, with ``text_weight > 0``, feeds the word emitter.  ``types`` fixes
    the entity types (default: those seen in the answers).  Options and their defaults: ``DEFAULTS``.
    A sentence answer with no entity is all ``O`` rows; it is a valid answer.
    """
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"aggregate_spans: unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **opts}
    if o["annotator"] not in ("seq", "confusion"):
        raise ValueError(f"annotator must be 'seq' or 'confusion', got {o['annotator']!r}")
    if o["text_model"] not in ("odds", "multinomial"):
        raise ValueError(f"text_model must be 'odds' or 'multinomial', got {o['text_model']!r}")
    if o["decode"] not in ("viterbi", "marginal"):
        raise ValueError(f"decode must be 'viterbi' or 'marginal', got {o['decode']!r}")
    d = _encode(answers, tokens, types, o["annotator"], float(o["text_weight"]) > 0, tuple(o["text_features"]))
    # our BLAS calls are (n, 9) x (9, 9) products: a second BLAS thread only adds sync cost and, on a
    # shared machine, spins (the same reason as in aggregate.py)
    with _single_thread_blas():
        return _fit(d, o)


def _text_log_emission(d: _Data, counts: np.ndarray, gamma: np.ndarray, alpha: float) -> np.ndarray:
    """log p(word view | tag) per token, up to a term that is the same for every tag, summed over views.

    Written as ``log p(tag | word) - log p(tag)`` (Bayes' rule; ``p(word)`` drops out), where
    ``p(tag | word)`` counts the word's posterior tags *elsewhere* (the token itself left out)
    shrunk towards the tag prior with ``alpha`` pseudo-tokens.  So a word seen nowhere else is
    neutral.  Two simpler forms failed on a synthetic crowd with random words as text: per-tag
    multinomials with the token's own count let a word seen once echo its current posterior, and
    even without it a symmetric Dirichlet made every rare word ~9x likelier under a rare entity tag
    than under O (strict F1 0.98 -> 0.85 and 0.90)."""
    out = np.zeros_like(gamma)
    for g in range(d.text_codes.shape[0]):
        codes = d.text_codes[g]
        has = codes >= 0
        in_view = d.feature_groups == g
        total = counts[in_view].sum(axis=0)
        prior = total / max(float(total.sum()), 1e-300)
        own = gamma[has]
        elsewhere = np.maximum(counts[codes[has]] - own, 0.0)  # the word's tag counts without this token
        p_tag_given_word = (elsewhere + alpha * prior[None, :]) / (elsewhere.sum(axis=1, keepdims=True) + alpha)
        out[has] += np.log(np.maximum(p_tag_given_word, 1e-300)) - np.log(np.maximum(prior, 1e-300))[None, :]
    return out


def _fit(d: _Data, o: dict) -> SpanAggregation:
    """The variational EM, decoding and output tables of ``aggregate_spans``."""
    K = len(d.tag_names)
    n_tok = d.A.shape[0]
    n_work, P = len(d.worker_ids), d.n_prev
    valid = _valid_transitions(d.types)

    prior = np.full((K, K), float(o["off_alpha"]))  # [true, answered]
    np.fill_diagonal(prior, float(o["diag_alpha"]))

    # initial posteriors: vote shares per token (a token nobody tagged starts uniform)
    votes = np.zeros((n_tok, K))
    np.add.at(votes, (d.ans_pos, d.ans_tag), 1.0)
    votes += 1e-3
    gamma = votes / votes.sum(axis=1, keepdims=True)
    support = None
    if o.get("support_mask"):
        given = votes > 0.5
        typ = np.array([t.split("-", 1)[1] if "-" in t else "" for t in d.tag_names])
        support = np.zeros_like(given)
        for ty in set(typ):
            cols_t = typ == ty
            support[:, cols_t] = given[:, cols_t].any(axis=1, keepdims=True)
        support[:, typ == ""] = True
        support[~given.any(axis=1)] = True
        support_pen = np.where(support, 0.0, SUPPORT_LOG_PENALTY)
    trans_counts = np.zeros((K + 1, K))
    # transition counts of the vote shares' argmax path (a cheap start for the chain)
    iterations, converged, loglik = 0, False, float("nan")
    AT = d.A.T.tocsr()
    FT = d.F.T.tocsr() if d.F is not None else None
    first_step = True
    for iterations in range(1, int(o["max_iter"]) + 1):
        # ---- M-step: Dirichlet posteriors -> expected log-parameters
        counts = (AT @ gamma).reshape(n_work, P, K, K)  # [worker, prev, answered, true]
        counts = counts.transpose(0, 1, 3, 2)  # [worker, prev, true, answered]
        post = counts + prior[None, None]
        if float(o["pool_strength"]) > 0:
            pooled = counts.sum(axis=0) + prior[None]  # [prev, true, answered]
            pooled /= pooled.sum(axis=2, keepdims=True)
            post = post + float(o["pool_strength"]) * pooled[None]
        elog = _expected_log_dirichlet(post, axis=3)  # [worker, prev, true, answered]
        cols = elog.transpose(0, 1, 3, 2).reshape(n_work * P * K, K)  # column (w, prev, answered) -> true
        logemit = d.A @ cols
        if FT is not None:
            if o["text_model"] == "odds":
                text = _text_log_emission(d, FT @ gamma, gamma, float(o["text_alpha"]))
            else:  # variational naive-Bayes multinomials, the token's own count included
                fc = FT @ gamma + float(o["text_alpha"])
                n_views = int(d.feature_groups.max()) + 1
                gsum = np.vstack([fc[d.feature_groups == g].sum(axis=0) for g in range(n_views)])
                text = d.F @ (digamma(fc) - digamma(gsum[d.feature_groups]))
            logemit = logemit + float(o["text_weight"]) * text
        if support is not None:
            logemit = logemit + support_pen
        if first_step:
            # transitions from the vote shares' pairwise products are unknown before the first
            # forward-backward: start from the prior alone
            tpost = np.where(valid, float(o["transition_alpha"]), 0.0)
            first_step = False
        else:
            tpost = np.where(valid, trans_counts + float(o["transition_alpha"]), 0.0)
        with np.errstate(divide="ignore"):
            log_trans = np.where(valid, digamma(np.where(valid, tpost, 1.0)) - digamma(tpost.sum(axis=1, keepdims=True)), -np.inf)
        trans = np.exp(log_trans)
        # ---- E-step
        new_gamma, alpha, beta, emit, scale, trans_counts, loglik = _forward_backward(d, logemit, trans)
        # mean, not max: a handful of tokens keep drifting for dozens of iterations after the spans
        # have settled (on the crowd NER set strict F1 moved < 0.001 after iteration 20)
        delta = float(np.abs(new_gamma - gamma).mean()) if n_tok else 0.0
        gamma = new_gamma
        if delta < float(o["tol"]):
            converged = True
            break

    if support is not None:
        # the mask holds the parameters' estimation; the outputs (marginals, decoding, span posteriors) are
        # read without it, so a lone answer's possible misses stay visible to routing
        logemit = logemit - support_pen
        gamma, alpha, beta, emit, scale, _, loglik = _forward_backward(d, logemit, trans)
    # outputs in sentence-major order
    sm = d.tm_of_sm
    gamma_sm = gamma[sm]
    if o["decode"] == "viterbi":
        codes_sm = _viterbi(d, logemit, log_trans)[sm]
    else:
        codes_sm = _marginal_decode(gamma_sm, d)
    sent = np.repeat(np.arange(len(d.lengths)), d.lengths)
    tpos = np.arange(n_tok) - d.sm_start[sent] if n_tok else np.zeros(0, np.int64)
    names = np.asarray(d.tag_names, dtype=object)
    tags = pd.DataFrame({
        "sentence_id": d.sentence_ids.to_numpy()[sent],
        "token_index": tpos.astype(np.int64),
        "tag": names[codes_sm],
        "probability": gamma_sm[np.arange(n_tok), codes_sm] if n_tok else np.zeros(0),
    })
    for k, name in enumerate(d.tag_names):
        tags[f"prob_{name}"] = gamma_sm[:, k]
    spans = _span_table(d, codes_sm, alpha[sm], beta[sm], emit[sm], scale[sm], trans)

    # worker reliability: expected agreement of their tags with the true tags
    agree = gamma[d.ans_pos, d.ans_tag]
    n_w = np.bincount(d.ans_worker, minlength=n_work)
    ent_mass = 1.0 - gamma[d.ans_pos, 0]
    workers = pd.DataFrame({
        "worker_id": d.worker_ids.to_numpy(),
        "n_tokens": n_w,
        "accuracy": np.bincount(d.ans_worker, weights=agree, minlength=n_work) / np.maximum(n_w, 1),
        "entity_recall": np.bincount(d.ans_worker, weights=np.where(d.ans_tag > 0, agree, 0.0), minlength=n_work)
        / np.maximum(np.bincount(d.ans_worker, weights=ent_mass, minlength=n_work), 1e-12),
    })
    row_names = d.tag_names + ["<start>"]
    transitions = pd.DataFrame(trans / np.maximum(trans.sum(axis=1, keepdims=True), 1e-300), index=row_names, columns=d.tag_names)
    return SpanAggregation(tags=tags, spans=spans, workers=workers, tag_names=d.tag_names, transitions=transitions,
                           iterations=iterations, converged=converged, log_likelihood=loglik, options=o)

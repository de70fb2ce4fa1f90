"""Sequence lengths like those of SQuAD v1.1 dev features, for benchmarks and load tests that want a
real length mix without the data (perf_varseqlen.py --squad-lengths, serving.load_test)."""

from __future__ import annotations

import numpy as np

SQUAD_WINDOW = 384
# Feature length = 3 + question + passage tokens, capped at the window.  Passage wordpieces are
# log-normal (median 160, σ 0.45) and questions ~N(13, 4) tokens: mean fill 0.50 of 384.
SQUAD_PASSAGE_MEDIAN = 160.0
SQUAD_PASSAGE_SIGMA = 0.45
SQUAD_QUESTION_MEAN, SQUAD_QUESTION_STD = 13.0, 4.0


def squad_like_lengths(count: int, max_length: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` sequence lengths of SQuAD v1.1-like features, in 1..max_length (scaled from 384)."""
    questions = np.clip(np.round(rng.normal(SQUAD_QUESTION_MEAN, SQUAD_QUESTION_STD, count)), 4, 64)
    passages = np.round(rng.lognormal(np.log(SQUAD_PASSAGE_MEDIAN), SQUAD_PASSAGE_SIGMA, count))
    window_lengths = np.minimum(SQUAD_WINDOW, 3 + questions + passages)
    return np.clip(np.round(window_lengths * max_length / SQUAD_WINDOW), 1, max_length).astype(np.int64)

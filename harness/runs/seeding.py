"""Derive independent, reproducible seeds for each random stream of a trial.

A trial's seed is expanded with numpy's SeedSequence into separate streams for model
initialisation, training data and evaluation data, so the evaluation set never shares a
generator state with training data, and is the same for every model at a given (task, T, seed).
"""

from __future__ import annotations

import numpy as np

INIT, TRAIN_DATA, EVAL_DATA = 0, 1, 2
STREAMS = {"init": INIT, "train": TRAIN_DATA, "eval": EVAL_DATA}


def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for ``stream`` of trial seed ``seed``; distinct streams never collide in practice."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)

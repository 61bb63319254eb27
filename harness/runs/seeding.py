"""Derive independent, reproducible seeds for each random stream of a trial.

A trial's seed is expanded with numpy's SeedSequence into separate streams: model initialisation,
training data, the test set (the reported score), the validation set (early stopping and model
selection) and the batch on which gradient flow is measured. No two streams share a generator
state, and every data stream depends only on (task, T, seed), so the validation and test sets
are the same for every model. The test stream keeps the number the single held-out set of
harness 0.1 used, so reported scores stay comparable with runs made by it.
"""

from __future__ import annotations

import numpy as np

INIT, TRAIN_DATA, TEST_DATA, VALIDATION_DATA, GRADIENT_DATA = 0, 1, 2, 3, 4


def derive_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for ``stream`` of trial seed ``seed``; distinct streams never collide in practice."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)

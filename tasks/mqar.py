"""Multi-query associative recall, MQAR (Arora et al. 2023, "Zoology"; docs/tasks.md#mqar).

D key-value pairs (default 4), keys distinct and drawn from ``keys`` symbols (default 8), values
drawn independently from ``values`` symbols (default 8); then T - 1 blank steps; then the D keys
again in a random order, as queries, at each of which the target is the value that followed that
key. Symbols: 0 blank, 1..keys the keys, keys + 1..keys + values the values (one-hot); outputs:
``values`` classes. Sequence length T + 3D - 1. The pair written last and asked first is held
exactly T steps (from its value to its query); in general a pair is held T + 2(D - 1 - i) + r steps,
pair i of the list asked r-th, between T and T + 3(D - 1). The random query order means
the answer must be found by its key: no rule by position (a delay line) finds it. Loss and score
(accuracy) over the D queries only; chance 1/values, memoryless loss ln(values).
"""

from __future__ import annotations

import torch
from harness.tasks._answers import TailAnswers, check_count, one_hot, random_subset

from harness.errors import HarnessError
from harness.task_api import Batch

BLANK = 0


class MultiQueryRecall(TailAnswers):
    name = "mqar"
    input_size = 17
    output_size = 8
    default_lengths = (8, 16, 32, 64)
    #: At T = 8 after 3,000 steps (seed 0) the LSTM stays near the bag-of-values plateau at lr 1e-3
    #: and 3e-3 (0.408, 0.406) and solves it at 1e-2 (0.993, stopped at 2,500), as does the GRU
    #: (0.981) (docs/tasks.md#mqar).
    default_lr = 1e-2
    default_steps = 3000

    def __init__(self, length: int, pairs: int = 4, keys: int = 8, values: int = 8) -> None:
        super().__init__(length)
        self.answers = check_count(self.name, "pairs", pairs, 1)
        self.keys = check_count(self.name, "keys", keys, 1)
        self.values = check_count(self.name, "values", values, 2)
        if self.keys < self.answers:
            raise HarnessError(f"task 'mqar': keys must be at least pairs (keys are distinct within a sequence), "
                               f"got keys={keys}, pairs={pairs}")
        self.input_size = 1 + self.keys + self.values  # the sizes follow the options
        self.output_size = self.values

    @property
    def pairs(self) -> int:
        """D, the number of key-value pairs (and of queries)."""
        return self.answers

    @property
    def sequence_length(self) -> int:
        return self.length + 3 * self.pairs - 1

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device, d = generator.device, self.pairs
        keys = random_subset(batch_size, self.keys, d, generator) + 1
        values = torch.randint(0, self.values, (batch_size, d), generator=generator, device=device)
        order = random_subset(batch_size, d, d, generator)  # query r asks pair order[:, r]
        symbols = torch.full((batch_size, self.sequence_length), BLANK, dtype=torch.long, device=device)
        symbols[:, 0:2 * d:2] = keys
        symbols[:, 1:2 * d:2] = values + 1 + self.keys
        symbols[:, -d:] = keys.gather(1, order)
        targets = torch.zeros_like(symbols)
        targets[:, -d:] = values.gather(1, order)
        mask = torch.zeros_like(symbols, dtype=torch.bool)
        mask[:, -d:] = True
        return Batch(one_hot(symbols, self.input_size), targets, mask)

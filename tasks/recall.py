"""Long-gap recall (SPEC §2, Hochreiter & Schmidhuber 1997 exp. 2).

One-hot alphabet of 17 symbols: keys 0-7, distractors 8-15, query 16. Input: a key, T
distractors, the query (length T + 2). Target: the key, scored at the query (the last step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.task_api import Batch, Task

NUM_KEYS, NUM_DISTRACTORS = 8, 8
QUERY = NUM_KEYS + NUM_DISTRACTORS


class LongGapRecall(Task):
    name = "recall"
    input_size = NUM_KEYS + NUM_DISTRACTORS + 1
    output_size = NUM_KEYS
    readout = "last"

    @property
    def sequence_length(self) -> int:
        return self.length + 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        keys = torch.randint(0, NUM_KEYS, (batch_size,), generator=generator, device=device)
        distractors = torch.randint(NUM_KEYS, QUERY, (batch_size, self.length), generator=generator,
                                    device=device)
        query = torch.full((batch_size, 1), QUERY, dtype=torch.long, device=device)
        symbols = torch.cat([keys[:, None], distractors, query], dim=1)
        return Batch(F.one_hot(symbols, self.input_size).float(), keys)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch.targets)

    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return (outputs.argmax(-1) == batch.targets).float().mean()

    @property
    def chance_score(self) -> float:
        return 1.0 / NUM_KEYS

    @property
    def memoryless_loss(self) -> float:
        return math.log(NUM_KEYS)

    def memoryless_outputs(self, batch: Batch) -> torch.Tensor:
        return torch.zeros(len(batch), self.output_size, device=batch.inputs.device)

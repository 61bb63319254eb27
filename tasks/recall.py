"""Long-gap recall (Hochreiter & Schmidhuber 1997, experiment 2: "I grew up in France … I speak
fluent French").

One-hot alphabet of 17 symbols: keys 0-7, distractors 8-15, query 16. With ``key_position="start"``
(the default) a sequence is a key, T distractors and the query (length T + 2); the target, scored
at the query (the last step), is the key. With ``key_position="middle"`` it is T distractors, the
key, T distractors and the query (length 2T + 2): a model reading forwards carries the key over
T + 1 steps as before, and a model reading backwards, whose final state sits at the first step,
carries it over T steps. The default layout puts the key at distance 0 from that final state, so a
bidirectional model solves it at any T by construction (``bidirectional_shortcut``); the middle
layout measures both directions fairly. Chance score 1/8 and memoryless loss ln 8 in both layouts:
at the query a model without memory has seen only the query symbol.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.task_api import Batch, Task

NUM_KEYS, NUM_DISTRACTORS = 8, 8
QUERY = NUM_KEYS + NUM_DISTRACTORS
KEY_POSITIONS = ("start", "middle")


class LongGapRecall(Task):
    name = "recall"
    input_size = NUM_KEYS + NUM_DISTRACTORS + 1
    output_size = NUM_KEYS
    readout = "last"

    def __init__(self, length: int, key_position: str = "start") -> None:
        super().__init__(length)
        if key_position not in KEY_POSITIONS:
            raise HarnessError(f"task 'recall': key_position must be one of {', '.join(KEY_POSITIONS)}, "
                               f"got {key_position!r}")
        self.key_position = key_position
        self.bidirectional_shortcut = key_position == "start"

    @property
    def key_index(self) -> int:
        """Position of the key in the sequence."""
        return 0 if self.key_position == "start" else self.length

    @property
    def sequence_length(self) -> int:
        return self.length + 2 if self.key_position == "start" else 2 * self.length + 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        keys = torch.randint(0, NUM_KEYS, (batch_size,), generator=generator, device=device)
        distractors = torch.randint(NUM_KEYS, QUERY, (batch_size, self.sequence_length - 2), generator=generator,
                                    device=device)
        query = torch.full((batch_size, 1), QUERY, dtype=torch.long, device=device)
        split = self.key_index
        symbols = torch.cat([distractors[:, :split], keys[:, None], distractors[:, split:], query], dim=1)
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

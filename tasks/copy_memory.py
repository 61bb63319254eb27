"""Copy memory (Hochreiter & Schmidhuber 1997; the definition of Arjovsky, Shah & Bengio 2016;
docs/tasks.md#copy).

Symbols: 0 blank, 1-8 data, 9 delimiter, one-hot (10 input features). Outputs have 9 classes,
0-8: the delimiter never appears in a target, so a tenth class would only add a logit that
must learn to stay low. Loss: cross-entropy over all T + 20 positions; score: accuracy over the
10 answer positions only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.task_api import Batch, Task

BLANK, DELIMITER, NUM_DATA, NUM_COPIED = 0, 9, 8, 10


class CopyMemory(Task):
    name = "copy"
    input_size = 10
    output_size = 9
    readout = "sequence"

    @property
    def sequence_length(self) -> int:
        return self.length + 2 * NUM_COPIED

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        data = torch.randint(1, NUM_DATA + 1, (batch_size, NUM_COPIED), generator=generator, device=device)
        symbols = torch.zeros(batch_size, self.sequence_length, dtype=torch.long, device=device)
        symbols[:, :NUM_COPIED] = data
        symbols[:, NUM_COPIED + self.length - 1] = DELIMITER
        targets = torch.zeros_like(symbols)
        targets[:, -NUM_COPIED:] = data
        mask = torch.zeros_like(symbols, dtype=torch.bool)
        mask[:, -NUM_COPIED:] = True
        return Batch(F.one_hot(symbols, self.input_size).float(), targets, mask)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, self.output_size), batch.targets.reshape(-1))

    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        answers = outputs[:, -NUM_COPIED:].argmax(-1)
        return (answers == batch.targets[:, -NUM_COPIED:]).float().mean()

    @property
    def chance_score(self) -> float:
        return 1.0 / NUM_DATA

    @property
    def memoryless_loss(self) -> float:
        return NUM_COPIED * math.log(NUM_DATA) / self.sequence_length

    def memoryless_outputs(self, batch: Batch) -> torch.Tensor:
        """Certain blank before the answer, uniform over the 8 data symbols during it."""
        outputs = torch.full((len(batch), self.sequence_length, self.output_size), -1e9,
                             device=batch.inputs.device)
        outputs[:, :-NUM_COPIED, BLANK] = 0.0
        outputs[:, -NUM_COPIED:, 1:] = 0.0
        return outputs

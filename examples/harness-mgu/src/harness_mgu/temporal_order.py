"""The temporal-order problem (Hochreiter & Schmidhuber 1997, "Long short-term memory", exp. 6a).

Symbols, one-hot (8 input features): distractors a, b, c, d (0-3), the relevant symbols X (4)
and Y (5), the start symbol E (6) and the trigger B (7). A sequence of length ``T + 2`` is
``E``, a body of ``T`` symbols, then ``B``. The body is drawn uniformly from the distractors,
except at two positions that hold X or Y (each drawn uniformly and independently):

- the first at body index ``i1`` uniform in ``[T // 10, T // 5]``,
- the second at body index ``i2`` uniform in ``[T // 2, 3 T // 5]``.

The target, read at the trigger (the last step), is the order class: XX → 0, XY → 1, YX → 2,
YY → 3. Loss: cross-entropy there; score: accuracy.

Dependency length: the first relevant symbol lies ``T − i1`` steps before the trigger, that is
between ``T − T // 5`` and ``T − T // 10`` (80-90 at T = 100); the second between
``T − 3 T // 5`` and ``T − T // 2`` (40-50 at T = 100). At T = 100 this is the paper's layout
(t1 in 10-20, t2 in 50-60) with a fixed length of 102 instead of a random length of 100-110,
so that sequences batch without padding. ``T >= 2`` keeps the two windows disjoint.

Chance score 1/4 and memoryless loss ln 4: the four classes are equally likely, and at the
trigger a model with no memory has seen only the trigger.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.task_api import Batch, Task

NUM_DISTRACTORS = 4
X, Y, START, TRIGGER = 4, 5, 6, 7
NUM_CLASSES = 4  # XX, XY, YX, YY


class TemporalOrder(Task):
    name = "temporal_order"
    input_size = 8
    output_size = NUM_CLASSES
    readout = "last"
    default_lengths = (5, 10, 20, 40)  # a first-run sweep, as the built-ins'; the paper's is T = 100
    min_length = 2

    @property
    def sequence_length(self) -> int:
        return self.length + 2

    @property
    def first_window(self) -> tuple[int, int]:
        """Inclusive range of sequence positions (E is position 0) of the first relevant symbol."""
        return 1 + self.length // 10, 1 + self.length // 5

    @property
    def second_window(self) -> tuple[int, int]:
        """Inclusive range of sequence positions of the second relevant symbol."""
        return 1 + self.length // 2, 1 + (3 * self.length) // 5

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        device = generator.device
        symbols = torch.randint(0, NUM_DISTRACTORS, (batch_size, self.sequence_length),
                                generator=generator, device=device)
        symbols[:, 0] = START
        symbols[:, -1] = TRIGGER
        rows = torch.arange(batch_size, device=device)
        order = []
        for low, high in (self.first_window, self.second_window):
            position = torch.randint(low, high + 1, (batch_size,), generator=generator, device=device)
            is_y = torch.randint(0, 2, (batch_size,), generator=generator, device=device)
            symbols[rows, position] = X + is_y
            order.append(is_y)
        targets = 2 * order[0] + order[1]
        return Batch(F.one_hot(symbols, self.input_size).float(), targets)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs, batch.targets)

    def score(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return (outputs.argmax(-1) == batch.targets).float().mean()

    @property
    def chance_score(self) -> float:
        return 1.0 / NUM_CLASSES

    @property
    def memoryless_loss(self) -> float:
        return math.log(NUM_CLASSES)

    def memoryless_outputs(self, batch: Batch) -> torch.Tensor:
        """Equal logits for the four classes: the trigger alone says nothing about the order."""
        return torch.zeros(len(batch), self.output_size, device=batch.inputs.device)

"""The arithmetic floor of a training step: its matrix products, timed as a few large GEMMs.

A recurrent model applies its weight matrices at every position of every sequence. For a matrix of
``R`` rows and ``C`` columns and ``N = batch × length`` positions, one training step needs three
products of ``2·N·R·C`` flops each: the forward ``Y = X Wᵀ``, and backwards ``dX = dY W`` and
``dW = dYᵀ X``. A layer with G gate blocks of H units and input I (``W_ih`` of G·H × I and ``W_hh``
of G·H × H) thus needs ``6·N·(I + H)·G·H`` flops, however its loop is written. The floor is the time
those products take as large single GEMMs on the same threads: what the step would cost if the
per-step overhead of a recurrence were gone. It is a lower bound, not a plan (a recurrence cannot
run its ``W_hh`` products as one GEMM).

The products are derived from the model's parameters alone, so a third-party model gets a floor
without declaring anything:

- a 2-D parameter counts as a matrix applied at every position when its row count is a multiple of
  the hidden size (G gate blocks of H rows, the layout of ``torch.nn.LSTM``/GRU/RNN and of
  :class:`harness.cells.GatedCell`) or it is the weight of an ``nn.Linear``;
- any other parameter (a 1-D bias, or a 2-D stack of per-unit vectors such as diagonal "peep" weights,
  3 × H) is taken as element-wise and has no product in the floor;
- matrices with the same row count add into the same pre-activations (``W_ih x + W_hh h``), so they
  are timed as one GEMM over their concatenated columns (the cheapest way to do those flops);
- a model with no such matrix (e.g. a purely diagonal recurrence) has no floor: "n/a" and why.

A model that uses a matrix more than once per step (the MGU example applies part of ``W_hh`` twice)
is held to the floor of using it once: the floor counts what the parameters imply, not what a
particular implementation does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

#: Operands of one timed GEMM triple are kept under this size; above it a slice of the positions
#: is timed and the time scaled linearly in the positions (GEMM time is linear in N at these sizes).
MAX_OPERAND_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Products:
    """The matrices of a model that a training step multiplies at every position."""

    shapes: tuple[tuple[int, int], ...]  # (rows, concatenated columns), one GEMM triple each
    counted: tuple[str, ...]  # the parameters in the floor
    skipped: tuple[str, ...]  # 2-D parameters taken as element-wise

    @property
    def note(self) -> str:
        """Empty, or what a reader of the floor should know (parameters left out, or why none)."""
        if not self.shapes:
            return ("n/a: no 2-D parameter with a multiple of H rows (no matrix products; "
                    "e.g. a diagonal recurrence)")
        return f"element-wise, not in the floor: {', '.join(self.skipped)}" if self.skipped else ""

    def flops(self, positions: int) -> int:
        """Flops of the forward and the two backward products over ``positions`` = batch × length."""
        return 6 * positions * sum(rows * cols for rows, cols in self.shapes)


def find_products(model: nn.Module, hidden_size: int) -> Products:
    """The matrices of ``model`` (a model core, without the task head) applied at every position."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    columns: dict[int, int] = {}
    counted, skipped = [], []
    for name, param in model.named_parameters():
        if param.dim() != 2 or not param.requires_grad:
            continue
        rows, cols = param.shape
        label = f"{name} {rows}x{cols}"
        if id(param) in linear or (rows >= hidden_size and rows % hidden_size == 0):
            columns[rows] = columns.get(rows, 0) + cols
            counted.append(label)
        else:
            skipped.append(label)
    return Products(tuple(sorted(columns.items(), reverse=True)), tuple(counted), tuple(skipped))


class GemmTimer:
    """Times the three GEMMs of a training step for each (rows, columns) shape at ``positions``."""

    def __init__(self, positions: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        if positions < 1:
            raise ValueError(f"positions must be at least 1, got {positions}")
        self.positions = positions
        self.dtype = dtype
        self.device = torch.device(device)
        self.times: dict[tuple[int, int], list[float]] = {}  # wall-clock seconds per round
        self.cpu_times: dict[tuple[int, int], list[float]] = {}  # CPU seconds of this process per round

    def time_shape(self, rows: int, cols: int) -> float:
        """Seconds of ``Y = X Wᵀ``, ``dX = dY W``, ``dWᵀ = Xᵀ dY`` for ``positions`` rows of X (recorded)."""
        from harness.runs.environment import synchronize

        itemsize = torch.empty((), dtype=self.dtype).element_size()
        per_position = (2 * cols + 2 * rows) * itemsize  # X, dX, Y, dY
        chunk = max(1, min(self.positions, MAX_OPERAND_BYTES // per_position))
        dtype, device = self.dtype, self.device
        x, dx = (torch.randn(chunk, cols, dtype=dtype, device=device),
                 torch.empty(chunk, cols, dtype=dtype, device=device))
        y, dy = (torch.empty(chunk, rows, dtype=dtype, device=device),
                 torch.randn(chunk, rows, dtype=dtype, device=device))
        w, dw_t = (torch.randn(rows, cols, dtype=dtype, device=device),
                   torch.empty(cols, rows, dtype=dtype, device=device))
        synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        torch.mm(x, w.t(), out=y)
        torch.mm(dy, w, out=dx)
        torch.mm(x.t(), dy, out=dw_t)  # dWᵀ: the fast operand order when X is narrow (see harness.cells)
        synchronize(self.device)
        scale = self.positions / chunk
        seconds = (time.perf_counter() - start) * scale
        self.times.setdefault((rows, cols), []).append(seconds)
        self.cpu_times.setdefault((rows, cols), []).append((time.process_time() - cpu) * scale)
        return seconds

    def time_round(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Time every distinct shape once (a round of the benchmark)."""
        for rows, cols in dict.fromkeys(shapes):
            self.time_shape(rows, cols)

    def clear(self) -> None:
        self.times.clear()
        self.cpu_times.clear()

    def floor_seconds(self, products: Products, cpu: bool = False) -> list[float]:
        """Per timed round, the floor of ``products``: the sum of its shapes' times in that round
        (wall-clock, or with ``cpu`` the CPU time of this process)."""
        times = self.cpu_times if cpu else self.times
        if not products.shapes:
            return []
        rounds = min(len(times.get(shape, [])) for shape in products.shapes)
        return [sum(times[shape][i] for shape in products.shapes) for i in range(rounds)]

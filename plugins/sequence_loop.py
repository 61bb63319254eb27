"""The shared cell loop with a whole-sequence kernel: the built-in cells that have one (peephole LSTM,
CIFG, sLSTM) run a whole sequence in one C call on the CPU, forward and backward
(:func:`harness.plugins.kernels.sequence`), and the cell loop everywhere else."""

from __future__ import annotations

import torch
from harness.plugins import kernels

from harness.cells import CellLoop, GatedCell


class SequenceLoop(CellLoop):
    """The shared cell loop, but a whole sequence in one kernel call where the fused kernels can run it.

    The kernel computes the same equations as ``cell.step`` over the whole sequence from a zero state
    (tests/test_sequence_kernels.py and tests/test_modern_models.py compare them); anywhere else (another
    device or dtype, kernels unavailable, TorchScript, or ``keep_states`` set) the loop of
    :class:`CellLoop` runs: the cell's fused step, or, for a cell without one (the sLSTM), the graph loop
    or the eager step."""

    def __init__(self, cell: GatedCell, kind: str) -> None:
        super().__init__(cell)
        self.kind = kind  # the kernel's cell name (harness.plugins.kernels.sequence_ops.CELLS)
        #: ``False`` runs the cell loop even where the kernel could run (benchmarks time both).
        self.sequence_kernel = True

    @property
    def implementation(self) -> str:
        """``"fused-cpu"`` where the whole-sequence kernel runs for the cell's parameters, else what
        :class:`CellLoop` runs (see its ``implementation``)."""
        if self.sequence_kernel and not self.keep_states:
            found = kernels.implementation(self.cell.weight_ih.device, self.cell.weight_ih.dtype)
            if found == "fused-cpu":
                return found
        return super().implementation

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cell = self.cell
        peepholes = getattr(cell, "peephole_weights", None) if getattr(cell, "peepholes", False) else None
        params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, *(() if peepholes is None else
                                                                               (peepholes,)))
        if not self.sequence_kernel or self.keep_states or not kernels.usable(inputs, *params):
            return super().forward(inputs)
        features = kernels.sequence(self.kind, inputs, cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh,
                                    peepholes)
        return features, features[:, -1]

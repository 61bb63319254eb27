"""rnn, lstm, gru and bilstm: ``torch.nn``'s modules and equations, whole-sequence kernels on the CPU.

Every model keeps its ``torch.nn`` module (parameters, initialisation), but on the CPU in
float32/float64 its forward pass runs the whole-sequence kernels of :mod:`harness.plugins.kernels`
(torch's own CPU path takes one step at a time for the rnn and GRU; for the LSTM oneDNN's kernel was
slower than the peephole kernel with zero peepholes, docs/performance.md); elsewhere, or where the
kernels cannot be loaded, the module itself. ``implementation`` says which.
"""

from __future__ import annotations

import torch
from harness.plugins.initialisation import check_init, chrono_t_max, set_gate_biases
from torch import nn

_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
#: Gate blocks in torch.nn's layout: LSTM i, f, g, o; GRU r, z, n (z plays the forget role).
_GATES = {"lstm": {"input": 0, "forget": 1}, "gru": {"update": 1}}
#: The whole-sequence kernel of each kind (the LSTM is the peephole cell with zero peepholes).
_SEQUENCE_KERNELS = {"rnn": "rnn", "gru": "gru", "lstm": "peephole"}


class FusedRecurrent(nn.Module):
    """A fused torch.nn RNN/LSTM/GRU (optionally bidirectional) behind the harness model contract."""

    def __init__(self, kind: str, input_size: int, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, forget_bias: float | None = None, init: str = "default",
                 t_max: int | None = None) -> None:
        super().__init__()
        self.rnn = _MODULES[kind](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                  bidirectional=bidirectional)
        self.kernel: str | None = _SEQUENCE_KERNELS[kind]  # None: always the torch.nn module
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.output_size = hidden_size * (2 if bidirectional else 1)
        check_init(init)
        if kind in _GATES and (init == "chrono" or forget_bias is not None):
            for name, bias_ih in self.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    bias_hh = getattr(self.rnn, name.replace("bias_ih", "bias_hh"))
                    set_gate_biases(bias_ih, bias_hh, hidden_size, _GATES[kind], init, forget_bias or 0.0, t_max)

    @property
    def implementation(self) -> str:
        """``"fused-cpu"`` where the forward pass runs this plugin's whole-sequence kernel, else
        ``"torch.nn: <why not>"`` (the torch.nn module runs)."""
        if self.kernel is None:
            return "torch.nn"
        from harness.plugins import kernels  # imported on first use: importing this module loads nothing

        reason = kernels.unsupported(self.rnn.weight_ih_l0.device, self.rnn.weight_ih_l0.dtype)
        return "fused-cpu" if reason is None else f"torch.nn: {reason}"

    def _kernel_forward(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Every layer's whole sequence (both directions) through the kernel, or None where it cannot run here."""
        if self.kernel is None:
            return None
        from harness.plugins import kernels

        params = list(self.rnn.parameters())
        if not kernels.usable(inputs, *params):
            return None
        features = inputs
        for layer in range(self.rnn.num_layers):
            directions = []
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                weights = [getattr(self.rnn, f"{name}_l{layer}{suffix}")
                           for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh")]
                if suffix:  # the backward direction reads the sequence reversed
                    directions.append(kernels.sequence(self.kernel, features.flip(1), *weights).flip(1))
                else:
                    directions.append(kernels.sequence(self.kernel, features, *weights))
            features = directions[0] if len(directions) == 1 else torch.cat(directions, 2)
        return features

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._kernel_forward(inputs)
        if features is None:
            features, _ = self.rnn(inputs)
        if not self.bidirectional:
            return features, features[:, -1]
        # The backward direction's final state is at position 0: it has read the whole reversed sequence.
        hidden = self.hidden_size
        return features, torch.cat([features[:, -1, :hidden], features[:, 0, hidden:]], dim=-1)


def build_rnn(input_size: int, hidden_size: int = 128, num_layers: int = 1) -> FusedRecurrent:
    return FusedRecurrent("rnn", input_size, hidden_size, num_layers)


def build_lstm(input_size: int, hidden_size: int = 128, num_layers: int = 1, forget_bias: float = 1.0,
               init: str = "default", chrono_max: int | None = None, chrono_scale: float = 1.0,
               length: int | None = None) -> FusedRecurrent:
    """``init="chrono"`` sets the gate biases for dependencies up to ``chrono_max`` (default: the
    trial's length T) and ignores ``forget_bias``."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return FusedRecurrent("lstm", input_size, hidden_size, num_layers, forget_bias=forget_bias, init=init,
                          t_max=t_max)


def build_gru(input_size: int, hidden_size: int = 128, num_layers: int = 1, init: str = "default",
              chrono_max: int | None = None, chrono_scale: float = 1.0,
              length: int | None = None) -> FusedRecurrent:
    """``init="default"`` keeps PyTorch's initialisation; ``chrono`` sets the update gate's bias."""
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return FusedRecurrent("gru", input_size, hidden_size, num_layers, init=init, t_max=t_max)


def build_bilstm(input_size: int, hidden_size: int = 128, num_layers: int = 1, forget_bias: float = 1.0,
                 init: str = "default", chrono_max: int | None = None, chrono_scale: float = 1.0,
                 length: int | None = None) -> FusedRecurrent:
    t_max = chrono_t_max(chrono_max, chrono_scale, length)
    return FusedRecurrent("lstm", input_size, hidden_size, num_layers, bidirectional=True,
                          forget_bias=forget_bias, init=init, t_max=t_max)

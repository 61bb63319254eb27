"""rnn, lstm, gru and bilstm on the fused ``torch.nn`` recurrent modules."""

from __future__ import annotations

import torch
from torch import nn

_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class FusedRecurrent(nn.Module):
    """A fused torch.nn RNN/LSTM/GRU (optionally bidirectional) behind the harness model contract."""

    def __init__(self, kind: str, input_size: int, hidden_size: int = 128, num_layers: int = 1,
                 bidirectional: bool = False, forget_bias: float | None = None) -> None:
        super().__init__()
        self.rnn = _MODULES[kind](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                                  bidirectional=bidirectional)
        self.hidden_size = hidden_size
        self.bidirectional = bidirectional
        self.output_size = hidden_size * (2 if bidirectional else 1)
        if forget_bias is not None:
            set_lstm_forget_bias(self.rnn, forget_bias)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, _ = self.rnn(inputs)
        if not self.bidirectional:
            return features, features[:, -1]
        # The backward direction's final state is at position 0: it has read the whole reversed sequence.
        hidden = self.hidden_size
        return features, torch.cat([features[:, -1, :hidden], features[:, 0, hidden:]], dim=-1)


def set_lstm_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Make the total forget-gate bias (b_if + b_hf) equal ``value`` in every layer and direction."""
    hidden = lstm.hidden_size
    forget = slice(hidden, 2 * hidden)  # gate order i, f, g, o
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("bias_ih"):
                param[forget] = value
            elif name.startswith("bias_hh"):
                param[forget] = 0.0


def build_rnn(input_size: int, hidden_size: int = 128, num_layers: int = 1) -> FusedRecurrent:
    return FusedRecurrent("rnn", input_size, hidden_size, num_layers)


def build_lstm(input_size: int, hidden_size: int = 128, num_layers: int = 1,
               forget_bias: float = 1.0) -> FusedRecurrent:
    return FusedRecurrent("lstm", input_size, hidden_size, num_layers, forget_bias=forget_bias)


def build_gru(input_size: int, hidden_size: int = 128, num_layers: int = 1) -> FusedRecurrent:
    return FusedRecurrent("gru", input_size, hidden_size, num_layers)


def build_bilstm(input_size: int, hidden_size: int = 128, num_layers: int = 1,
                 forget_bias: float = 1.0) -> FusedRecurrent:
    return FusedRecurrent("lstm", input_size, hidden_size, num_layers, bidirectional=True,
                          forget_bias=forget_bias)

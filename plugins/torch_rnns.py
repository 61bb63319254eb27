"""Built-in plugin: the models whose equations match fused ``torch.nn`` modules (cuDNN/oneDNN)."""

from harness import hookimpl

_IMPL = "harness.plugins.torch_rnn_models"


@hookimpl
def register_models(register):
    register("rnn", f"{_IMPL}:build_rnn",
             description="Vanilla tanh RNN (torch.nn.RNN): h_t = tanh(W_ih x_t + b_ih + W_hh h_t-1 + b_hh).")
    register("lstm", f"{_IMPL}:build_lstm", defaults={"forget_bias": 1.0},
             description="LSTM (torch.nn.LSTM), forget-gate bias initialised to a total of 1.")
    register("gru", f"{_IMPL}:build_gru",
             description="GRU (torch.nn.GRU), reset gate applied after the recurrent product.")
    register("bilstm", f"{_IMPL}:build_bilstm", defaults={"forget_bias": 1.0},
             description="Bidirectional LSTM, H units per direction; summary = [forward final ; backward final].")

"""Built-in plugin: the models whose equations and parameters are ``torch.nn``'s (rnn, lstm, gru, bilstm).

On the CPU they run the whole-sequence kernels of :mod:`harness.plugins.kernels`; elsewhere the
``torch.nn`` modules (cuDNN on a GPU).
"""

from harness import hookimpl

_IMPL = "harness.plugins.torch_rnn_models"


@hookimpl
def register_models(register):
    # order and style: position and look in every table and figure (tab10 colours, one marker each)
    register("rnn", f"{_IMPL}:build_rnn", order=10, style={"color": "#d62728", "marker": "o"},
             default_sweep=True,
             description="Vanilla tanh RNN (torch.nn.RNN): h_t = tanh(W_ih x_t + b_ih + W_hh h_t-1 + b_hh).")
    register("lstm", f"{_IMPL}:build_lstm", order=20, style={"color": "#1f77b4", "marker": "s"},
             default_sweep=True, reference=True,
             description="LSTM (torch.nn.LSTM), forget-gate bias initialised to a total of 1.")
    register("gru", f"{_IMPL}:build_gru", order=30, style={"color": "#ff7f0e", "marker": "^"},
             default_sweep=True,
             description="GRU (torch.nn.GRU), reset gate applied after the recurrent product.")
    register("bilstm", f"{_IMPL}:build_bilstm", order=60, style={"color": "#8c564b", "marker": "P"},
             description="Bidirectional LSTM, H units per direction; summary = [forward final ; backward final].")

"""Built-in plugin: recurrent models of the 2018–2024 literature beside the classics.

minGRU, minLSTM, LRU and a Mamba (S6) block compute a linear recurrence in the state and offer a
parallel scan and a step-by-step loop (the ``mode`` option: how, not what, they compute); sLSTM
runs on the shared cell loop; IndRNN is its own short loop. Nothing is imported until a model is
built. Equations, initialisations and measurements: docs/models.md.
"""

from harness import hookimpl

_P = "harness.plugins"
# Colours from ColorBrewer's Dark2, outside tab10 (the classics) and the fallback palette of
# harness.analysis.style (unregistered models), so no two models share a colour.


@hookimpl
def register_models(register):
    register("mingru", f"{_P}.min_rnns:build_mingru", order=70, style={"color": "#e7298a", "marker": "X"},
             implementation_options=("mode",),
             description="minGRU (Feng et al. 2024): gates from x_t only, h_t = (1-z_t) h_t-1 + z_t g(W_h x_t); "
                         "parallel scan or loop.")
    register("minlstm", f"{_P}.min_rnns:build_minlstm", order=72, style={"color": "#1b9e77", "marker": "*"},
             implementation_options=("mode",),
             description="minLSTM (Feng et al. 2024): normalised forget/input gates from x_t only; "
                         "parallel scan or loop.")
    register("lru", f"{_P}.lru:build_lru", order=74, style={"color": "#e6ab02", "marker": "h"},
             implementation_options=("mode",),
             description="Linear Recurrent Unit (Orvieto et al. 2023): complex diagonal recurrence, ring "
                         "initialisation, gamma normalisation; parallel scan or loop.")
    register("mamba", f"{_P}.selective_ssm:build_selective_ssm", aliases=("s6", "selective_ssm"), order=76,
             style={"color": "#7570b3", "marker": "p"}, implementation_options=("mode",),
             description="Mamba block with a selective state space layer S6 (Gu & Dao 2023): input-dependent "
                         "delta, B, C; parallel scan or loop.")
    register("slstm", f"{_P}.slstm:build_slstm", order=78, style={"color": "#a6761d", "marker": "d"},
             description="sLSTM from xLSTM (Beck et al. 2024): exponential input gate, normaliser and "
                         "stabiliser states; one head.")
    register("indrnn", f"{_P}.indrnn:build_indrnn", order=80, style={"color": "#66a61e", "marker": "<"},
             description="IndRNN (Li et al. 2018): h_t = ReLU(W x_t + u * h_t-1 + b), |u| <= 2^(1/T).")

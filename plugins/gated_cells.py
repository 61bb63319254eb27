"""Built-in plugin: the peephole LSTM and CIFG, written on the shared cell loop.

``torch.nn`` has no module for these LSTM variants, so their cells run on
:class:`harness.cells.CellLoop` with the fused CPU kernels of :mod:`harness.plugins.kernels` for
their pointwise step (eager equations elsewhere); the module imports nothing until a model is built.
"""

from harness import hookimpl

_IMPL = "harness.plugins.gated_cell_models"


@hookimpl
def register_models(register):
    register("peephole", f"{_IMPL}:build_peephole", order=40, style={"color": "#2ca02c", "marker": "D"},
             description="LSTM with diagonal peepholes p_i, p_f on c_t-1 and p_o on c_t (Gers & Schmidhuber 2000).")
    register("cifg", f"{_IMPL}:build_cifg", aliases=("coupled",), order=50,
             style={"color": "#9467bd", "marker": "v"},
             description="Coupled input-forget gate LSTM: f = 1 - i, three gates (Greff et al. 2017).")

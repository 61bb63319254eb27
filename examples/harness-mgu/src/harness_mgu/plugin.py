"""The hook module named by the ``harness`` entry point: registrations only, nothing heavy imported.

Lazy ``"module:attr"`` targets keep ``harness models``, ``harness tasks`` and ``harness --help``
fast: torch and the implementation modules are imported only when a sweep builds the model or
the task.
"""

from harness import hookimpl


@hookimpl
def register_models(register):
    register("mgu", "harness_mgu.mgu:build_mgu", defaults={"gate_bias": -1.0},
             description="Minimal gated unit: one gate f both resets the candidate and mixes it in "
                         "(Zhou et al. 2016).")


@hookimpl
def register_tasks(register):
    register("temporal_order", "harness_mgu.temporal_order:TemporalOrder",
             description="Temporal order: classify the order of two symbols X/Y, 0.8-0.9T and 0.4-0.5T "
                         "steps back among distractors (Hochreiter & Schmidhuber 1997, exp. 6a).")

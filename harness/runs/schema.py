"""Column names of the files a run writes; reports and figures read the same names.

``results.csv`` has one row per trial, ``curves.csv`` one row per evaluation of a trial. Both
load with ``pandas.read_csv`` without options. The columns of the trial settings come from
:mod:`harness.runs.settings`, so a new setting gets its column without an edit here.
"""

from harness.runs.settings import result_columns

TRIAL_KEY = ("model", "task", "length", "seed")
KEY_COLUMNS = (*TRIAL_KEY, "config_id")  # config_id: hash of the trial's settings and options

OUTCOME_COLUMNS = (
    "status",            # ok | diverged | error
    "score",             # test score in [0, 1] at the last evaluation (the reported number)
    "loss",              # test loss at the last evaluation
    "val_score",         # validation score at the last evaluation (early stopping, model selection)
    "val_loss",
    "best_val_score",    # best validation score seen during training
    "chance_score",
    "memoryless_loss",
    "task_criterion",    # the task's default horizon criterion, e.g. normalised:0.9 or loss:0.1
    "solved",            # test score >= threshold
    "steps_to_solve",    # evaluation step at which the validation score reached the threshold (training stops)
    "steps",             # training steps taken
    "budget",            # steps the trial could take: --steps, grown above --steps-from by --steps-growth
    "train_seconds",     # wall time spent in training steps only
    "seconds_per_step",
    "trial_seconds",     # wall time of the whole trial (data, evaluation and bookkeeping included)
    "params",            # trainable parameters, recurrent core and head
    "sequence_length",
    "implementation",    # what ran the model's step, as the model reports it (e.g. fused-cpu, eager)
    "unbounded_by_construction",  # a bidirectional model on a task it solves at distance 0
)

PROVENANCE_COLUMNS = (
    "model_provider", "task_provider",  # distribution (and version) that registered them
    "torch_version", "harness_version", "python_version",
    "error",             # what went wrong, for status=error
    "finished_at",       # ISO timestamp
)

RESULT_COLUMNS = (*KEY_COLUMNS, *OUTCOME_COLUMNS, *result_columns(), "model_options", "task_options",
                  *PROVENANCE_COLUMNS)

GRADIENT_STAT_COLUMNS = ("grad_ratio", "grad_decay")  # with --grad-stats; see harness.runs.gradients
CURVE_COLUMNS = (*KEY_COLUMNS, "step", "train_loss", "val_loss", "val_score", "test_loss", "test_score",
                 "elapsed_seconds", *GRADIENT_STAT_COLUMNS)

#: gradients.csv: ‖∂L/∂x_t‖ at each distance d = τ − t from the scored position τ (see harness.runs.gradients).
#: ``at`` is the requested point (``0``, ``200``, ``end``); ``step`` the training step it was measured at.
GRADIENT_COLUMNS = (*KEY_COLUMNS, "at", "step", "distance", "grad_norm", "rel_norm", "state_grad_norm", "direction")

STATUSES = ("ok", "diverged", "error")
FINISHED = ("ok", "diverged")  # statuses a resumed sweep does not run again

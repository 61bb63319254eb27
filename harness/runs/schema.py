"""Column names of the files a run writes; plots and reports read the same names.

``results.csv`` has one row per trial, ``curves.csv`` one row per evaluation of a trial.
Both load with ``pandas.read_csv`` without options.
"""

TRIAL_KEY = ("model", "task", "length", "seed")

RESULT_COLUMNS = (
    *TRIAL_KEY,
    "status",            # ok | diverged | error
    "score",             # final evaluation score in [0, 1] (last finite one for diverged trials)
    "loss",              # final evaluation loss
    "best_score",        # best evaluation score seen during training
    "chance_score",
    "memoryless_loss",
    "solved",            # score reached the threshold at some evaluation
    "steps_to_solve",    # first evaluation step at which it was solved (empty if never)
    "steps",             # training steps actually taken (early stop once solved)
    "train_seconds",     # wall time spent in training steps only
    "seconds_per_step",
    "trial_seconds",     # wall time of the whole trial (data, evaluation and bookkeeping included)
    "params",            # trainable parameters, head included
    "hidden_size", "batch_size", "lr", "max_steps", "eval_every", "eval_size", "threshold", "clip",
    "model_options",     # JSON object
    "task_options",      # JSON object
    "sequence_length",
    "device", "torch_version", "harness_version", "python_version",
    "error",             # exception message for status=error
    "finished_at",       # ISO timestamp
)

CURVE_COLUMNS = (*TRIAL_KEY, "step", "train_loss", "eval_loss", "eval_score", "elapsed_seconds")

STATUSES = ("ok", "diverged", "error")

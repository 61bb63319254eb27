"""What runs inside a Ray worker process: one trial per task, after a one-time set-up of the process.

Ray reuses its worker processes between tasks, so the set-up that the local pool does when it
starts a worker (:func:`harness.runs.executors._worker_main`) happens here on a process's first
trial: thread variables and torch threads, the allocator settings (before torch is imported; this
module imports nothing heavy, and neither does unpickling a :class:`~harness.runs.spec.TrialSpec`),
plugins and :func:`~harness.runs.training.prepare_process`. The plugin variables
(``HARNESS_EXTRA_PLUGINS`` and the others) come from the Ray runtime environment the driver set up
(:mod:`harness.runs.ray_executor`). Importing this module does not import Ray.
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from harness.runs.spec import TrialSpec
    from harness.runs.training import TrialOutcome

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: The first item a trial's task yields: the trial has started on its worker (the driver times it from here).
STARTED = "started"
_prepared = False


def prepare_worker(threads: int) -> None:
    """Set up this worker process once: threads, allocator, plugins, one-time costs."""
    global _prepared
    if not _prepared:
        for name in THREAD_VARIABLES:  # also in the runtime environment, i.e. set before the process started
            os.environ[name] = str(threads)
        from harness.runs.allocator import tune_malloc

        tune_malloc()  # before torch allocates anything
    import torch

    torch.set_num_threads(threads)
    if not _prepared:
        from harness.runs.training import prepare_process

        prepare_process()  # loads the plugins; if it fails, this trial records why and the next one tries again
        _prepared = True


def run_on_worker(spec: TrialSpec, threads: int) -> TrialOutcome:
    """The body of the Ray task: prepare the process (once), run the trial, free its device memory."""
    prepare_worker(threads)
    from harness.runs.training import error_outcome, run_trial

    outcome = run_trial(spec)
    if str(spec.device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the worker stays alive for the next trial; others may share the GPU
    try:
        pickle.dumps(outcome)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError) as exc:
        # an unpicklable value in a third-party row: still report the trial
        return error_outcome(spec, f"the trial's results could not be sent back: {type(exc).__name__}: {exc}")
    return outcome


def run_reporting_start(spec: TrialSpec, threads: int) -> Iterator[str | TrialOutcome]:
    """The Ray task (a streaming generator): :data:`STARTED` once the worker is set up (threads,
    torch, plugins: seconds on a quiet machine, more than half a minute on a loaded one), then the
    trial's outcome, so that ``--trial-timeout`` counts the trial itself, as with the local pool,
    whose workers are set up before they take a trial."""
    prepare_worker(threads)
    yield STARTED
    yield run_on_worker(spec, threads)

"""Where trials run: in this process, or in a pool of local worker processes.

An executor only maps :func:`harness.training.run_trial` over trial specs and yields outcomes
as they finish; it knows nothing about files or sweeps, so a distributed executor can be added
without touching the training code.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Callable, Iterable, Iterator, Protocol

from harness.runs.environment import available_cores
from harness.runs.training import TrialOutcome, TrialSpec, error_outcome

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class Executor(Protocol):
    def run(self, specs: Iterable[TrialSpec], on_start: Callable[[TrialSpec], None]) -> Iterator[TrialOutcome]:
        """Run every spec; yield each outcome as soon as it is finished."""


def threads_per_worker(workers: int) -> int:
    """Divide the cores between workers so the machine is never oversubscribed."""
    return max(1, available_cores() // max(1, workers))


class InProcessExecutor:
    """Runs trials one after another in this process with ``threads`` torch threads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def run(self, specs: Iterable[TrialSpec], on_start: Callable[[TrialSpec], None]) -> Iterator[TrialOutcome]:
        import torch

        from harness.runs.training import prepare_process, run_trial

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for index, spec in enumerate(specs):
                if index == 0:
                    prepare_process()  # one-time costs, outside every trial's clock
                on_start(spec)
                yield run_trial(spec)
        finally:
            torch.set_num_threads(previous)


def _init_worker(threads: int, extra_plugins: str) -> None:
    """Runs in each worker before torch is imported: pin thread counts, tune the allocator."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if extra_plugins:
        os.environ["HARNESS_EXTRA_PLUGINS"] = extra_plugins
    from harness.runs.allocator import tune_malloc

    tune_malloc()
    import torch

    torch.set_num_threads(threads)
    from harness.runs.training import prepare_process

    prepare_process()


def _run_in_worker(spec: TrialSpec) -> TrialOutcome:
    from harness.runs.training import run_trial

    return run_trial(spec)


class ProcessPoolExecutor:
    """Runs trials in ``workers`` spawned processes, each with ``cores // workers`` threads."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads

    def run(self, specs: Iterable[TrialSpec], on_start: Callable[[TrialSpec], None]) -> Iterator[TrialOutcome]:
        context = multiprocessing.get_context("spawn")  # fork after OpenMP has started can hang
        pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker,
            initargs=(self.threads, os.environ.get("HARNESS_EXTRA_PLUGINS", "")))
        try:
            futures = {}
            # Longest first (length x steps as the cost estimate): the last trials to finish are
            # then short ones, so no worker sits idle long at the end of the sweep.
            for spec in sorted(specs, key=lambda s: s.length * s.steps, reverse=True):
                futures[pool.submit(_run_in_worker, spec)] = spec
            for future in concurrent.futures.as_completed(futures):
                spec = futures[future]
                on_start(spec)
                try:
                    yield future.result()
                except Exception as exc:  # the worker died (segfault, out of memory, ...)
                    yield error_outcome(spec, f"worker process failed: {type(exc).__name__}: {exc}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def make_executor(workers: int, threads: int | None = None) -> Executor:
    """In-process for one worker, else a process pool; threads default to cores // workers."""
    threads = threads or threads_per_worker(workers)
    return InProcessExecutor(threads) if workers <= 1 else ProcessPoolExecutor(workers, threads)

"""Where trials run: a pool of worker processes on this machine, this process itself, or Ray.

An executor takes trial specs (:meth:`submit`) and yields each outcome as it finishes
(:meth:`outcomes`); it knows nothing about files or sweeps, so the adaptive length search can
submit new trials as results come in, and other engines plug in behind the same two methods.

The local pool isolates every trial in a worker process (with one worker too): a trial that kills
its process (a segfault, ``os._exit``, the out-of-memory killer) is recorded as an ``error`` naming
the exit code or signal, its worker is replaced, and every other trial runs. A trial running
longer than ``trial_timeout`` seconds is stopped the same way, and so is a hung one: each worker
reports progress as its trial trains (a heartbeat), and a trial silent for far longer than any
progress took so far is stopped (:mod:`harness.runs.stall`; ``--hang-after``). Workers exit when the sweep's main
process dies, however it dies (``PR_SET_PDEATHSIG`` on Linux, a watchdog thread elsewhere).
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from harness.runs.environment import available_cores
from harness.runs.spec import TrialSpec
from harness.runs.stall import StallWatch

if TYPE_CHECKING:  # importing training imports torch: a worker must set up first (see _worker_main)
    from harness.runs.training import TrialOutcome

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: A worker that dies this many times in a row before finishing any trial means workers cannot run.
STARTUP_FAILURES = 3
#: Seconds between two heartbeats of a running trial (at most; a trial reports as it progresses).
BEAT_S = 0.25
#: Seconds between two refreshes of what the running trials are doing (the progress display).
TICK_S = 1.0


class Executor(Protocol):
    def submit(self, spec: TrialSpec) -> None:
        """Queue a trial."""

    def drain(self) -> int:
        """Start no more trials (drop the queued ones and refuse new ones); :meth:`outcomes` ends once
        the running ones finish. Returns how many queued trials were dropped."""

    def outcomes(self) -> Iterator[TrialOutcome]:
        """Yield the outcome of every submitted trial as it finishes (trials may be submitted meanwhile)."""

    def close(self) -> None:
        """Stop every worker (running trials are abandoned)."""


class TrialQueue:
    """The trials submitted and not started yet, shared by every executor, with :meth:`drain`."""

    def __init__(self) -> None:
        self.queue: collections.deque[TrialSpec] = collections.deque()
        self.draining = False

    def submit(self, spec: TrialSpec) -> None:
        if not self.draining:
            self.queue.append(spec)

    def drain(self) -> int:
        dropped = len(self.queue)
        self.queue.clear()
        self.draining = True
        return dropped


def resolve_workers(workers: int | str, device: str, trials: int) -> int:
    """``auto``: one worker per core on CPU (small recurrent models scale better across processes
    than across threads), one on an accelerator; never more workers than trials; 0 stays 0."""
    if workers == "auto":
        workers = available_cores() if device == "cpu" else 1
    if int(workers) == 0:
        return 0
    return max(1, min(int(workers), max(trials, 1)))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


# --------------------------------------------------------------------------------------------
# In this process


class InProcessExecutor(TrialQueue):
    """Runs trials one after another in this process (``--workers 0``): no isolation, for debugging."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads
        self._prepared = False

    def outcomes(self) -> Iterator[TrialOutcome]:
        import torch

        from harness.runs.training import prepare_process, run_trial

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            while self.queue:
                if not self._prepared:
                    prepare_process()  # one-time costs, outside every trial's clock
                    self._prepared = True
                yield run_trial(self.queue.popleft())
        finally:
            torch.set_num_threads(previous)

    def close(self) -> None:
        self.queue.clear()


# --------------------------------------------------------------------------------------------
# A pool of worker processes


def _die_with_parent(parent: int) -> None:
    """End this worker when the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    threading.Thread(target=watch, name="harness-parent-watchdog", daemon=True).start()


def _worker_main(conn: Any, threads: int, extra_plugins: str, parent: int) -> None:
    """A worker: set threads and the allocator before torch, then run trials sent over ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if extra_plugins:
        os.environ["HARNESS_EXTRA_PLUGINS"] = extra_plugins
    from harness.runs.allocator import tune_malloc

    tune_malloc()
    import torch

    torch.set_num_threads(threads)
    from harness.runs.training import error_outcome, prepare_process, run_trial, set_heartbeat

    prepare_process()
    set_heartbeat(_throttled_beat(conn))
    conn.send(("ready", None))  # a worker that dies before this could not start; after it, a trial killed it
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        outcome = run_trial(spec)
        try:
            conn.send(("outcome", outcome))
        except Exception as exc:  # an unpicklable value in a third-party row: still report the trial
            message = f"the trial's results could not be sent back: {type(exc).__name__}: {exc}"
            conn.send(("outcome", error_outcome(spec, message)))


def _throttled_beat(conn: Any) -> Any:
    """A heartbeat that tells the main process of progress at most every :data:`BEAT_S` seconds."""
    last = [0.0]

    def beat() -> None:
        now = time.monotonic()
        if now - last[0] >= BEAT_S:
            last[0] = now
            conn.send(("beat", None))
    return beat


class _Worker:
    def __init__(self, context: Any, threads: int, extra_plugins: str) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, extra_plugins, os.getpid()),
                                       daemon=True, name="harness-worker")
        self.process.start()
        child.close()
        self.spec: TrialSpec | None = None
        self.started = 0.0
        self.ready = False  # set when the worker says it has started (torch, plugins loaded)

    def give(self, spec: TrialSpec, stalls: StallWatch) -> None:
        self.spec, self.started = spec, time.monotonic()
        self.conn.send(spec)
        if self.ready:
            stalls.start(id(self), self.started)

    def stop(self, kill: bool) -> None:
        if self.process.is_alive():
            if kill:
                self.process.kill()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    self.process.kill()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessPoolExecutor(TrialQueue):
    """Runs trials in ``workers`` spawned processes, each with ``threads`` torch threads."""

    def __init__(self, workers: int, threads: int, trial_timeout: float | None = None,
                 hang_after: float | None = None) -> None:
        self.size, self.threads, self.trial_timeout = workers, threads, trial_timeout
        self.stalls = StallWatch(hang_after)
        self.watch: Callable[[list[tuple[str, float]]], None] | None = None  # shown every TICK_S seconds
        self._shown = 0.0
        self.context = multiprocessing.get_context("spawn")  # fork after OpenMP has started can hang
        self.extra_plugins = os.environ.get("HARNESS_EXTRA_PLUGINS", "")
        super().__init__()
        self.workers: list[_Worker] = []
        self.failed_starts = 0
        self._abandoned: list[TrialOutcome] = []

    def _dispatch(self) -> None:
        idle = [w for w in self.workers if w.spec is None]
        while self.queue and (idle or len(self.workers) < self.size):
            worker = idle.pop() if idle else self._start()
            spec = self.queue.popleft()
            try:
                worker.give(spec, self.stalls)
            except OSError:  # an idle worker that died meanwhile: replace it, keep the trial
                worker.spec = None
                worker.stop(kill=True)
                self.workers.remove(worker)
                self.queue.appendleft(spec)

    def _start(self) -> _Worker:
        worker = _Worker(self.context, self.threads, self.extra_plugins)
        self.workers.append(worker)
        return worker

    def outcomes(self) -> Iterator[TrialOutcome]:
        while True:
            self._dispatch()
            busy = [w for w in self.workers if w.spec is not None]
            if not busy:
                return
            now = time.monotonic()
            if self.watch is not None and now - self._shown >= TICK_S:
                self._shown = now
                self.watch([(w.spec.label, now - w.started) for w in busy if w.ready and w.spec is not None])
            waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            ready = multiprocessing.connection.wait(waitables, timeout=self._wait_time(busy))
            for worker in busy:
                if worker.spec is None or worker not in self.workers:
                    continue  # stopped meanwhile (workers that cannot start)
                outcome = self._collect(worker, ready)
                if outcome is not None:
                    yield outcome
            while self._abandoned:
                yield self._abandoned.pop(0)

    def _wait_time(self, busy: list[_Worker]) -> float | None:
        """Until the next trial would time out or count as hung, or the display is refreshed."""
        deadlines = [w.started + self.trial_timeout for w in busy if self.trial_timeout is not None]
        deadlines += [d for d in (self.stalls.deadline(id(w)) for w in busy) if d is not None]
        if self.watch is not None:
            deadlines.append(time.monotonic() + TICK_S)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _collect(self, worker: _Worker, ready: list[Any]) -> TrialOutcome | None:
        spec = worker.spec
        assert spec is not None
        if worker.conn in ready:
            try:
                kind, outcome = worker.conn.recv()
            except (EOFError, OSError):
                kind, outcome = "", None
            if kind == "ready":  # the trial's clock starts now, not while torch was being imported
                worker.ready, worker.started, self.failed_starts = True, time.monotonic(), 0
                self.stalls.start(id(worker), worker.started)
                return None
            if kind == "beat":
                self.stalls.beat(id(worker), time.monotonic())
                return None
            if outcome is not None:
                worker.spec = None
                self.stalls.finish(id(worker))
                return outcome
        if worker.process.sentinel in ready or not worker.process.is_alive():
            worker.process.join(timeout=5)
            return self._lost(worker, f"its worker process died ({describe_exit(worker.process.exitcode)})")
        if worker.ready and self.trial_timeout is not None and time.monotonic() - worker.started >= self.trial_timeout:
            return self._lost(worker, f"timed out after {self.trial_timeout:g} s (--trial-timeout)")
        if worker.ready and self.stalls.hung(id(worker), time.monotonic()):
            return self._lost(worker, f"stopped as hung: {self.stalls.describe()}")
        return None

    def _lost(self, worker: _Worker, why: str) -> TrialOutcome:
        """Record the worker's trial as an error, and replace the worker."""
        from harness.runs.training import error_outcome

        spec = worker.spec
        assert spec is not None
        worker.stop(kill=True)
        self.workers.remove(worker)
        self.stalls.finish(id(worker))
        if not worker.ready:
            self.failed_starts += 1
        if self.failed_starts >= STARTUP_FAILURES:  # workers cannot even start: do not loop forever
            lost = [*self.queue]
            self.queue.clear()
            for other in [w for w in self.workers if w.spec is not None]:
                lost.append(other.spec)  # type: ignore[arg-type]  # filtered above
                other.stop(kill=True)
                self.workers.remove(other)
            self._abandoned = [error_outcome(s, f"not run: worker processes keep dying ({why})") for s in lost]
        return error_outcome(spec, why)

    def close(self) -> None:
        self.queue.clear()
        for worker in self.workers:
            worker.stop(kill=worker.spec is not None)
        self.workers.clear()


def make_executor(workers: int, threads: int = 1, trial_timeout: float | None = None,
                  kind: str = "local", hang_after: float | None = None, **ray_options: Any) -> Executor:
    """The executor for a sweep: Ray, this process (``workers == 0``), or a local pool.

    ``threads`` per trial does not depend on ``workers``: the same count gives bit-identical numbers
    whatever the number of workers or the executor (one thread is the default)."""
    if kind == "ray":
        from harness.runs.ray_executor import RayExecutor

        return RayExecutor(threads=threads, trial_timeout=trial_timeout, **ray_options)
    if workers == 0:
        return InProcessExecutor(threads)
    return ProcessPoolExecutor(workers, threads, trial_timeout, hang_after)

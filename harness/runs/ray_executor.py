"""``--executor ray``: every trial is a Ray task, on a local Ray instance or on a cluster.

The driver (the ``harness`` command) plans the sweep, submits trials as Ray tasks and writes each
outcome into its ``--out`` folder as it arrives, exactly as with the local pool: the workers need
no shared filesystem, and resuming is the same command again. Each task requests ``threads`` CPUs
(``--threads``) and, with ``--device cuda``, one GPU (``--gpus-per-trial`` for another amount,
fractions included); its worker sets itself up once (:mod:`harness.runs.ray_worker`).

Ray's automatic retries are off (``max_retries=0``; a task killed by Ray's memory monitor is not
retried either): a trial whose worker or node dies, or that Ray kills for memory, becomes an
``error`` row naming the cause, and running the command again retries it. A trial running longer
than ``--trial-timeout`` is cancelled (its worker is killed) and recorded as an error.

The driver keeps no more trials in flight than the cluster's live nodes can run at once (read
again as trials finish, so nodes that join are used), so the longest-first order holds. Each task
is a streaming generator that first reports that its worker is set up: a trial's timeout counts
from then, as with the local pool, not from when it was handed to Ray, so a worker's slow start-up
on a busy machine is not charged to the trial. A trial whose worker has not started within
:data:`START_ALLOWANCE_SECONDS` more than the timeout is stopped too, so a sweep never waits forever.

Ray is optional (``pip install "recurrent-harness[ray]"``); this module imports it only when an
executor is made, so the rest of the harness never pays for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from harness.errors import HarnessError
from harness.runs.executors import TrialQueue
from harness.runs.ray_shipping import PluginShipment
from harness.runs.ray_worker import STARTED, run_reporting_start
from harness.runs.spec import TrialSpec
from harness.runs.training import TrialOutcome, error_outcome

INSTALL = 'pip install "recurrent-harness[ray]"'
POLL_SECONDS = 1.0        # ray.wait returns at least this often, so Ctrl-C and SIGTERM are handled promptly
CAPACITY_SECONDS = 5.0    # how long a reading of the cluster's nodes is trusted
START_ALLOWANCE_SECONDS = 300.0  # with --trial-timeout: extra time a trial's worker may take to start


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying what to install."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":  # Ray is there but one of its own imports is missing
            raise HarnessError(f"--executor ray: Ray is installed but cannot be imported ({exc})") from None
        raise HarnessError(f"--executor ray needs Ray, which is not installed here: {INSTALL}") from None
    except ImportError as exc:
        raise HarnessError(f"--executor ray: Ray is installed but cannot be imported ({exc})") from None
    return ray


def ray_device(requested: str) -> str:
    """The device of a Ray sweep's trials. ``cuda`` is not checked here: the driver may have no GPU
    while the cluster's nodes do, and Ray gives each trial its own GPU, which it sees as ``cuda``."""
    from harness.runs.environment import resolve_device

    name = requested.strip().lower()
    if name.startswith("cuda:"):
        raise HarnessError(f"--device {requested}: with --executor ray, use --device cuda "
                           f"(Ray assigns each trial its GPU, which the trial sees as cuda:0)")
    return "cuda" if name == "cuda" else resolve_device(requested)


def trial_resources(threads: int, device: str, gpus_per_trial: float | None) -> dict[str, float]:
    """What each trial requests from Ray: ``threads`` CPUs, and GPUs when it runs on CUDA."""
    on_gpu = device.startswith("cuda")
    if gpus_per_trial is not None and not on_gpu:
        raise HarnessError(f"--gpus-per-trial {gpus_per_trial:g} needs --device cuda (the trials run on {device})")
    return {"num_cpus": threads, "num_gpus": (1.0 if gpus_per_trial is None else gpus_per_trial) if on_gpu else 0.0}


def describe_ray_error(exc: BaseException) -> str:
    """An error row's message for a Ray failure: what died or failed, in one line."""
    import ray.exceptions as E

    text = " ".join(str(exc).split())
    if isinstance(exc, E.RayTaskError):  # the task raised: name the cause, not Ray's wrapper
        cause = getattr(exc, "cause", None)
        what = f"{type(cause).__name__}: {' '.join(str(cause).split())}" if cause is not None else text
        return f"the trial failed on its Ray worker before or after training: {what}"
    causes = [
        (E.OutOfMemoryError, "Ray's memory monitor killed its worker (the node ran low on memory)"),
        (E.NodeDiedError, "the Ray node running it died"),
        (E.LocalRayletDiedError, "the Ray node running it died (its raylet died)"),
        (E.WorkerCrashedError, "its Ray worker process died (a crash, os._exit or the out-of-memory killer)"),
        (E.RuntimeEnvSetupError, "Ray could not set up the runtime environment of its worker"),
        (E.ObjectLostError, "its result was lost (the node holding it died)"),
        (E.TaskCancelledError, "its Ray task was cancelled"),
    ]
    for kind, why in causes:
        if isinstance(exc, kind):
            return f"{why}: {type(exc).__name__}: {text}"
    return f"Ray failed to run it: {type(exc).__name__}: {text}"


class RayExecutor(TrialQueue):
    """Runs trials as Ray tasks; see the module's docstring.

    ``address``: ``None`` starts a private local Ray instance (stopped again by :meth:`close`),
    ``auto`` joins the cluster running on this machine, anything else the cluster at that address.
    A program that has already called ``ray.init`` keeps its connection; plugin files then reach
    only workers on this machine (Ray ships files only with a job it is started for).
    """

    def __init__(self, threads: int, trial_timeout: float | None = None, address: str | None = None,
                 gpus_per_trial: float | None = None, device: str = "cpu") -> None:
        self.ray = import_ray()
        self.threads, self.trial_timeout, self.address = threads, trial_timeout, address
        self.resources = trial_resources(threads, device, gpus_per_trial)
        self.shipment = PluginShipment.stage()
        self.owns_connection = False
        super().__init__()
        #: in-flight tasks (their result generators) -> (spec, when it was handed to Ray, when it started or None)
        self.running: dict[Any, tuple[TrialSpec, float, float | None]] = {}
        self._capacity, self._capacity_read = 0, -CAPACITY_SECONDS
        try:
            task_env = self._connect()
            options: dict[str, Any] = {"max_retries": 0, "retry_exceptions": False, "max_calls": 0, **self.resources}
            if task_env:
                options["runtime_env"] = {"env_vars": task_env}
            self.remote = self.ray.remote(num_returns="streaming", **options)(run_reporting_start)
            if self.capacity(fresh=True) == 0:
                raise HarnessError(f"no node of the Ray cluster can run a trial: each requests {self._request()}, "
                                   f"and its nodes have {self._nodes_text()}; lower --threads or --gpus-per-trial")
        except BaseException:
            self.close()
            raise

    def _connect(self) -> dict[str, str] | None:
        """Start or join Ray with the job's runtime environment; returns task-level variables instead
        when this process was already connected."""
        ray = self.ray
        if ray.is_initialized():
            return self.shipment.local_env_vars(self.threads)
        os.environ.setdefault("RAY_task_oom_retries", "0")  # no retries after Ray's memory monitor kills a trial
        options: dict[str, Any] = {"runtime_env": self.shipment.runtime_env(self.threads), "log_to_driver": True,
                                   "logging_level": "WARNING"}
        if self.address is None:  # a private instance: no dashboard, and it reports no usage statistics
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            options.update(address="local", include_dashboard=False)
        else:
            options["address"] = self.address
        try:
            ray.init(**options)
        except (OSError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:  # ConnectionError is an OSError
            where = {None: "start a local Ray instance", "auto": "join a running Ray cluster"}.get(
                self.address, f"join the Ray cluster at {self.address}")
            hint = " (start one with: ray start --head)" if self.address == "auto" else ""
            raise HarnessError(f"cannot {where}: {' '.join(str(exc).split())}{hint}") from None
        self.owns_connection = True
        resources = ray.cluster_resources()
        where = {None: "started a local instance", "auto": "joined the running cluster"}.get(
            self.address, f"joined the cluster at {self.address}")
        print(f"harness: Ray: {where} "
              f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs); each trial requests "
              f"{self._request()}", file=sys.stderr)
        return None

    def _request(self) -> str:
        gpus = self.resources["num_gpus"]
        return f"{self.resources['num_cpus']:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")

    def _nodes_text(self) -> str:
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return ", ".join(f"{n['Resources'].get('CPU', 0):g} CPUs/{n['Resources'].get('GPU', 0):g} GPUs"
                         for n in nodes) or "none alive"

    def capacity(self, fresh: bool = False) -> int:
        """How many trials the live nodes can run at once (each trial must fit on one node)."""
        now = time.monotonic()
        if fresh or now - self._capacity_read >= CAPACITY_SECONDS:
            total = 0
            for node in self.ray.nodes():
                if node.get("Alive"):
                    total += _fits(node.get("Resources", {}), self.resources)
            self._capacity, self._capacity_read = total, now
        return self._capacity

    def _dispatch(self) -> None:
        while self.queue and len(self.running) < self.capacity():
            spec = self.queue.popleft()
            self.running[self.remote.remote(spec, self.threads)] = (spec, time.monotonic(), None)

    def outcomes(self) -> Iterator[TrialOutcome]:
        """Yield each trial's outcome as it finishes (``ray.wait`` one at a time)."""
        while True:
            self._dispatch()
            if not self.running:
                if not self.queue:
                    return
                if self.capacity(fresh=True) == 0:  # every node that could run a trial is gone
                    yield from self._unrunnable()
                    return
                time.sleep(POLL_SECONDS)
                continue
            ready = _signal_safe(self.ray.wait, list(self.running), num_returns=1, timeout=self._wait_time())[0]
            for task in ready:
                outcome = self._next_item(task)
                if outcome is not None:
                    yield outcome
            yield from self._expired()

    def _deadline(self, dispatched: float, started: float | None) -> float:
        assert self.trial_timeout is not None
        if started is not None:
            return started + self.trial_timeout
        return dispatched + self.trial_timeout + START_ALLOWANCE_SECONDS

    def _wait_time(self) -> float:
        if self.trial_timeout is None:
            return POLL_SECONDS
        first = min(self._deadline(dispatched, started) for _, dispatched, started in self.running.values())
        return max(0.0, min(POLL_SECONDS, first - time.monotonic()))

    def _next_item(self, task: Any) -> TrialOutcome | None:
        """Read a ready task's next item: None once it reports its start, else its outcome (then it is done)."""
        spec, dispatched, started = self.running[task]
        try:
            ref = next(task)
            item = _signal_safe(self.ray.get, ref)
        except StopIteration:
            item = None
        except self.ray.exceptions.RayError as exc:
            del self.running[task]
            return error_outcome(spec, describe_ray_error(exc))
        if isinstance(item, str) and item == STARTED and started is None:
            self.running[task] = (spec, dispatched, time.monotonic())
            return None
        del self.running[task]
        if not isinstance(item, TrialOutcome):
            return error_outcome(spec, f"its Ray task ended without a result (got {type(item).__name__})")
        self.shipment.restore(item.row)
        return item

    def _expired(self) -> Iterator[TrialOutcome]:
        if self.trial_timeout is None:
            return
        now = time.monotonic()
        for task, (spec, dispatched, started) in list(self.running.items()):
            if now >= self._deadline(dispatched, started):
                self._cancel(task)
                del self.running[task]
                if started is None:
                    yield error_outcome(spec, f"its Ray worker was not set up within {self.trial_timeout:g} s "
                                              f"(--trial-timeout) + {START_ALLOWANCE_SECONDS:g} s")
                else:
                    yield error_outcome(spec, f"timed out after {self.trial_timeout:g} s (--trial-timeout)")

    def _unrunnable(self) -> Iterator[TrialOutcome]:
        why = f"not run: no live Ray node can run a trial ({self._request()}; nodes: {self._nodes_text()})"
        while self.queue:
            yield error_outcome(self.queue.popleft(), why)

    def _cancel(self, ref: Any) -> None:
        with contextlib.suppress(Exception):  # already finished, or its node is gone
            self.ray.cancel(ref, force=True)  # kills the worker process: a running trial stops now

    def close(self) -> None:
        """Cancel every queued and running trial; stop or leave Ray if this executor started or joined it."""
        self.queue.clear()
        for ref in list(self.running):
            self._cancel(ref)
        self.running.clear()
        if self.owns_connection:
            self.owns_connection = False
            with contextlib.suppress(Exception):  # Ray already gone (its processes got the same Ctrl-C)
                self.ray.shutdown()
        self.shipment.cleanup()


def _fits(resources: dict[str, float], request: dict[str, float]) -> int:
    """How many trials fit on a node with ``resources``."""
    counts = []
    for name, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        if request[key] > 0:
            counts.append(int(resources.get(name, 0.0) / request[key] + 1e-9))
    return min(counts) if counts else 1 << 20


def _signal_safe(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call into Ray, letting the sweep's stop signal through: a signal handler that raises inside
    Ray's compiled code (the sweep's :class:`~harness.runs.sweep.Interrupted`) comes out as a
    ``SystemError`` caused by it, and the sweep must see the original."""
    try:
        return call(*args, **kwargs)
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if cause is not None and not isinstance(cause, Exception):  # Interrupted, KeyboardInterrupt
            raise cause from None
        raise

"""Device resolution and the facts recorded about the machine a run used."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from harness.errors import HarnessError

_ARGUMENTS: ContextVar[list[str] | None] = ContextVar("harness_arguments", default=None)


@contextlib.contextmanager
def invoked_as(arguments: Sequence[str]) -> Iterator[None]:
    """Within the block, the command being run is ``harness`` with these arguments (what ``run.json``
    and a folder's lock record): :func:`harness.cli.main` may be called with its own list."""
    token = _ARGUMENTS.set(list(arguments))
    try:
        yield
    finally:
        _ARGUMENTS.reset(token)


def command_line() -> str:
    """The ``harness`` command being run, quoted as a shell would need it."""
    arguments = _ARGUMENTS.get()
    return shlex.join(["harness", *(sys.argv[1:] if arguments is None else arguments)])


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def resolve_device(requested: str) -> str:
    """Turn ``auto|cpu|cuda[:N]|mps`` into an available torch device string, or fail in one line."""
    import torch

    requested = requested.strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HarnessError(f"device '{requested}' requested but CUDA is not available "
                               f"(torch {torch.__version__}); use --device cpu or auto")
        index = requested.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise HarnessError(f"device '{requested}': there are {torch.cuda.device_count()} CUDA devices")
        return requested
    if requested == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise HarnessError("device 'mps' requested but MPS is not available; use --device cpu or auto")
        return "mps"
    raise HarnessError(f"unknown device '{requested}': expected auto, cpu, cuda, cuda:N or mps")


def cpu_info(field: str) -> str | None:
    """One field of ``/proc/cpuinfo`` (Linux) for the first processor, e.g. ``model name`` or ``flags``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpu_info("model name") or platform.processor() or platform.machine()


def synchronize(device: Any) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock timings are honest."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_details(device: str) -> dict[str, Any]:
    import torch

    details: dict[str, Any] = {"device": device, "cpu": cpu_name(), "cores": available_cores(),
                               "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():  # (a Ray driver may have no GPU of its own)
        index = torch.device(device).index or 0
        details.update(gpu=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version())
    return details


def versions() -> dict[str, str]:
    """Versions of what produced a run (no paths: run folders are committed and shared)."""
    import numpy
    import pandas
    import pluggy
    import torch

    import harness

    return {"harness": harness.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "pluggy": pluggy.__version__,
            "python": platform.python_version(), "platform": platform.platform()}

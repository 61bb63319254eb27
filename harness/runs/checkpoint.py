"""Trial checkpoints: a long trial saved at its evaluations, so that a stopped sweep resumes it there.

While a trial trains under a sweep, it saves at an evaluation (at most once every
``--checkpoint-every`` seconds) everything its remaining steps depend on: model and optimizer
state, every random stream, and its progress so far (curve, gradient rows, best score, times).
When the sweep is stopped before the trial ends (Ctrl-C, SIGTERM, a killed process, a machine
going down, ``--trial-timeout``, a hung trial), the next run of the same command continues the
trial from its last checkpoint, and the trial's row and curve are those of an uninterrupted run
bit for bit (timings aside): an evaluation only reads the model, and the steps after it depend only
on what is saved. A checkpoint is used only by the trial it was written for, under the same torch
version, device and thread count; anything else (or a damaged file) starts the trial over. The sweep
deletes a trial's checkpoint once its row is written.

Checkpoints live in the run folder's ``checkpoints/`` (one file per running trial, two to three
times the model's size with its optimizer state). Trials on a remote Ray cluster do not
checkpoint, since its machines need not share the run folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDER = "checkpoints"
#: Default seconds between two checkpoints of a trial (``--checkpoint-every``).
EVERY_S = 60.0
FORMAT = 2  # 2: the identity includes the thread count


@dataclass(frozen=True)
class CheckpointPlan:
    """Where a trial saves its checkpoint and how often (``every_seconds == 0``: at every evaluation)."""

    path: str
    every_seconds: float


def checkpoint_path(folder: Path, key: tuple[Any, ...]) -> Path:
    """The checkpoint file of the trial ``key`` (model, task, length, seed, config_id) in ``folder``."""
    model, task, length, seed, config = key
    name = f"{model}-{task}-T{length}-seed{seed}-{config}"
    return Path(folder) / FOLDER / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", name) + ".pt")


def save(plan: CheckpointPlan, identity: dict[str, Any], tensors: dict[str, Any], progress: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a stop while writing leaves the previous one whole).

    ``tensors`` holds state dicts and RNG states; ``progress`` plain values, stored as JSON text so
    that the file loads without unpickling arbitrary objects (``torch.load(weights_only=True)``).
    """
    import torch

    path = Path(plan.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    payload = {"format": FORMAT, "identity": json.dumps(identity, sort_keys=True), "tensors": tensors,
               "progress": json.dumps(progress, default=_plain)}
    torch.save(payload, partial)
    os.replace(partial, path)


def load(plan: CheckpointPlan, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (tensors, progress) saved for this trial, or None: no file, a damaged one, or one written
    for another trial, torch version, device or thread count."""
    import torch

    path = Path(plan.path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT or payload.get("identity") != json.dumps(identity, sort_keys=True):
            return None
        return payload["tensors"], json.loads(payload["progress"])
    except Exception:  # a damaged or foreign file: the trial starts over (and overwrites it)
        return None


def remove(path: str | Path) -> None:
    """Delete a finished trial's checkpoint (and the folder once it is empty)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # other trials' checkpoints are still there, or it is gone already
        pass


def remove_stale(folder: Path, finished: list[tuple[Any, ...]]) -> None:
    """Delete the checkpoints of trials already finished (a process stopped between writing a
    trial's row and deleting its checkpoint leaves one behind)."""
    if (Path(folder) / FOLDER).is_dir():
        for key in finished:
            remove(checkpoint_path(folder, key))


def _plain(value: Any) -> Any:
    """numpy scalars (a plugin's numbers) as Python values; anything else as its text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)

"""What a Ray sweep sends to its workers besides the trials: plugin files and environment variables.

Plugins that are installed (entry points, or modules named with ``--plugin MODULE``) must be
installed on every node, like ``harness`` itself. A ``--plugin FILE`` exists only on the driver's
machine, so the driver copies each file into a fresh folder that becomes the Ray job's
``working_dir``: Ray uploads it to every node, and starts the job's workers in their copy of it.
``HARNESS_EXTRA_PLUGINS`` in the job's ``env_vars`` names the copies by paths relative to that
folder (``0/models.py``), so they resolve on whichever node a worker runs. Only the file itself
travels: a module it imports must be installed on the nodes.

The rows a worker sends back name a file plugin by its copy; :meth:`PluginShipment.restore`
puts the driver's own path back, so ``model_provider`` reads as it does with ``--executor local``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.registry.loader import extra_plugin_specs, is_plugin_file
from harness.runs.ray_worker import THREAD_VARIABLES

#: Variables that change which plugins load or how a trial runs; passed on to the workers as set here.
PASSED_ON = ("HARNESS_PLUGINS", "HARNESS_STRICT_PLUGINS", "HARNESS_MALLOC", "HARNESS_FUSED")


@dataclass
class PluginShipment:
    """The extra plugins as the workers name them, and the folder holding the copied files (if any)."""

    specs: list[str]
    folder: Path | None = None
    originals: dict[str, str] = field(default_factory=dict)  # the workers' name -> the driver's

    @classmethod
    def stage(cls, specs: list[str] | None = None) -> PluginShipment:
        """Copy every ``.py`` plugin file into a new folder (one sub-folder each: names may repeat)."""
        specs = extra_plugin_specs() if specs is None else specs
        shipment = cls([])
        for index, spec in enumerate(specs):
            path = Path(spec).expanduser()
            if not is_plugin_file(spec) or not path.is_file():
                shipment.specs.append(spec)  # a module, or a missing file the workers report as the driver did
                continue
            if shipment.folder is None:
                shipment.folder = Path(tempfile.mkdtemp(prefix="harness-ray-plugins-"))
            copy = f"{index}/{path.name}"
            (shipment.folder / str(index)).mkdir()
            shutil.copyfile(path, shipment.folder / copy)
            shipment.specs.append(copy)
            shipment.originals[copy] = spec
        return shipment

    def env_vars(self, threads: int) -> dict[str, str]:
        """The workers' environment: thread counts, the extra plugins, and the plugin switches set here."""
        env = {name: str(threads) for name in THREAD_VARIABLES}
        env.update({name: os.environ[name] for name in PASSED_ON if name in os.environ})
        env["HARNESS_EXTRA_PLUGINS"] = os.pathsep.join(self.specs)  # even empty: a local worker inherits ours
        return env

    def runtime_env(self, threads: int) -> dict[str, Any]:
        """The Ray job's runtime environment (``ray.init(runtime_env=...)``)."""
        runtime_env: dict[str, Any] = {"env_vars": self.env_vars(threads)}
        if self.folder is not None:
            runtime_env["working_dir"] = str(self.folder)
        return runtime_env

    def local_env_vars(self, threads: int) -> dict[str, str]:
        """For a Ray that this process had already started (no job-level environment to set): the
        driver's own plugin paths, which only workers on this machine can read."""
        env = self.env_vars(threads)
        env["HARNESS_EXTRA_PLUGINS"] = os.pathsep.join(self.originals.get(s, s) for s in self.specs)
        return env

    def restore(self, row: dict[str, Any]) -> None:
        """Name copied plugin files in a result row by the driver's paths, as a local run does."""
        for column in ("model_provider", "task_provider"):
            source, _, name = str(row.get(column, "")).partition(" line ")
            if source == "command" and name in self.originals:
                row[column] = f"command line {self.originals[name]}"

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

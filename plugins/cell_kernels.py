"""Moved: the fused cell kernels are now :mod:`harness.plugins.kernels`.

This stub exists only because ``harness.runs.training.prepare_process`` still calls
``cell_kernels.status()`` (that call is being removed; delete this file with it). It deliberately
loads nothing: the kernels are built or loaded lazily by the peephole and CIFG cells, so that
processes running other models never map the library.
"""

from __future__ import annotations

import sys


def status() -> str:
    """The kernels' state in this process if already known, else ``"not loaded"``; never loads them
    (nor imports :mod:`harness.plugins.kernels`)."""
    build = sys.modules.get("harness.plugins.kernels.build")
    return (build.peek() if build is not None else None) or "not loaded"

"""How every figure looks: the rcParams, panel sizes, one legend per figure, and each model's
colour, marker and (for one of several settings) line style, the same in every figure and process."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import pandas as pd

from harness.errors import HarnessError

# Models registered without a style: tab10 colours the built-in plugins leave free (grey excluded:
# it is the reference lines') and the darker half of tab20b, picked by a hash of the name; markers likewise.
_FALLBACK_COLOURS = ("#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39",
                     "#7b4173", "#5254a3", "#bd9e39", "#ad494a", "#a55194")
_FALLBACK_MARKERS = ("X", "*", "h", "p", "<", ">", "d", "8")

PANEL_WIDTH, PANEL_HEIGHT, LEGEND_WIDTH = 4.0, 3.3, 1.9
RC: Any = {  # matplotlib rcParams (typed loosely: its stubs want literal keys)
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 12,
    "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "svg.hashsalt": "harness", "savefig.dpi": 150,
}


def _registered_styles() -> dict[str, dict[str, str]]:
    try:
        from harness.registry.loader import get_state

        return {e.name: e.style for e in get_state().models if e.style}
    except Exception:  # figures never fail for want of a plugin
        return {}


_LINESTYLES = ("-", "--", ":", "-.")
#: With ``--select all``, the settings drawn per model (``"mycell"`` -> ``["lr=0.001", "lr=0.01"]``),
#: so that a model keeps its colour and its settings differ by line style; set by :func:`set_variants`.
_VARIANTS: dict[str, list[str]] = {}


def set_variants(labels: Iterable[str]) -> None:
    """Declare the lines about to be drawn (``"mycell init=chrono"``, ...): each model's settings get
    line styles in sorted order, the same in every panel of a figure."""
    _VARIANTS.clear()
    for label in sorted(set(labels)):
        model, _, variant = label.partition(" ")
        if variant:
            _VARIANTS.setdefault(model, []).append(variant)


def model_style(name: str) -> dict[str, str]:
    """Colour and marker of a model, the same in every figure and every process.

    A model whose plugin registered a ``style`` has it; any other name (or a missing part) gets one
    chosen by a SHA-256 hash of the name (not Python's salted ``hash``), stable across invocations.
    A line for one setting of a model (``"mycell lr=0.01"``) has the model's colour and a line style
    of its own.
    """
    base, _, variant = name.partition(" ")
    if variant:
        style = model_style(base)
        variants = _VARIANTS.get(base, [variant])
        index = variants.index(variant) if variant in variants else 0
        style["linestyle"] = _LINESTYLES[index % len(_LINESTYLES)]
        style["marker"] = _FALLBACK_MARKERS[index % len(_FALLBACK_MARKERS)] if index else style["marker"]
        return style
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    style = {"color": _FALLBACK_COLOURS[int.from_bytes(digest[:4], "big") % len(_FALLBACK_COLOURS)],
             "marker": _FALLBACK_MARKERS[int.from_bytes(digest[4:8], "big") % len(_FALLBACK_MARKERS)]}
    style.update(_registered_styles().get(name, {}))
    return style


def figure_legend(ax, handles: list) -> None:
    """One legend for the whole figure, outside the panels to the right of the last panel ``ax``,
    its top level with the panels' top (so it never meets the figure title)."""
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0, frameon=False)


def tasks_in(results: pd.DataFrame) -> list[str]:
    """The tasks of a results table, one panel each, in name order."""
    tasks = sorted(results["task"].unique())
    if not tasks:
        raise HarnessError("no trials to plot")
    return tasks

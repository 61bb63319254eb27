"""Error texts without the paths of this machine.

A failed trial's ``error`` column lands in ``results.csv``, which is meant to be committed and
shared: an absolute path names a user, a home folder and a layout that mean nothing elsewhere.
A source file of an imported module is shown as its path inside the package
(``harness/plugins/initialisation.py``; a top-level module or a plugin file by its file name); any
other absolute path is shortened to its last part.
"""

from __future__ import annotations

import os
import re
import sys

# an absolute POSIX path of two or more parts, starting a word (not the "/" inside "1/2")
_ABSOLUTE = re.compile(r"(?<![\w./-])/(?:[^\s/:'\",()\[\]]+/)+[^\s/:'\",()\[\]]*")


def module_path(filename: str) -> str | None:
    """``pkg/mod.py`` for the source file of an imported module, else None."""
    try:
        wanted = os.path.realpath(filename)
    except (OSError, ValueError):
        return None
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if not source or not source.endswith(".py"):
            continue
        try:
            if os.path.realpath(source) != wanted:
                continue
        except (OSError, ValueError):
            continue
        if "." not in name:  # a top-level module, or a plugin file loaded under a name of the harness's
            return os.path.basename(source)
        tail = "/__init__.py" if os.path.basename(source) == "__init__.py" else ".py"
        return name.replace(".", "/") + tail
    return None


def portable_path(path: str) -> str:
    """A path that says the same on any machine: the module's path in its package, else the last part."""
    if not os.path.isabs(path):
        return path
    return module_path(path) or os.path.basename(path.rstrip("/")) or path


def portable_text(text: str) -> str:
    """``text`` with every absolute path replaced by :func:`portable_path`."""
    return _ABSOLUTE.sub(lambda match: portable_path(match.group(0)), text)

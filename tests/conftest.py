"""Shared fixtures: a clean plugin state per test and fake installed plugin distributions."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harness.registry import loader as plugin_manager


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Test tensors are tiny: intra-op threads only add overhead, and oversubscribe a shared machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_plugin_state(monkeypatch):
    """Every test starts from freshly loaded plugins and leaves none cached behind."""
    for name in ("HARNESS_STRICT_PLUGINS", "HARNESS_EXTRA_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    plugin_manager.reset_state()
    yield
    plugin_manager.reset_state()


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install (on sys.path only) a distribution with ``harness`` entry points and plugin modules.

    ``fake_distribution("demo", {"demo_plugin": "<source>"}, {"demo_impl": "<source>"})`` creates
    the modules and a ``demo-1.2.3.dist-info`` whose entry points name each plugin module (the
    second mapping holds ordinary modules the plugins may point their lazy targets at).
    """
    root = tmp_path / "site"
    root.mkdir(exist_ok=True)
    monkeypatch.syspath_prepend(str(root))
    created: list[str] = []
    dists: list[str] = []

    def make(dist: str, modules: dict[str, str], helpers: dict[str, str] | None = None,
             version: str = "1.2.3") -> Path:
        info = root / f"{dist}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = ["[harness]"] + [f"{name} = {name}" for name in modules]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        # Load only the fake distributions, whatever else happens to be installed.
        dists.append(dist)
        monkeypatch.setenv("HARNESS_PLUGINS", ",".join(dists))
        for name, source in {**modules, **(helpers or {})}.items():
            (root / f"{name}.py").write_text(textwrap.dedent(source))
            created.append(name)
        return root

    yield make
    for name in created:
        sys.modules.pop(name, None)

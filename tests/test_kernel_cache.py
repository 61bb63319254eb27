"""A damaged or unusable kernel cache never crashes a run (issue #15): it is rebuilt, or the cells
fall back to their eager equations with one warning on stderr.

A truncated shared library that reaches ``dlopen`` kills the process with SIGBUS. The loader
verifies a checksum before ``dlopen``, so most tests below load damaged caches in the test process
itself (if that verification regressed, they would crash the test run: a loud failure); the
issue's reproduction also runs end to end through the command line in a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from harness.plugins import kernels
from harness.plugins.gated_cell_models import build_cifg, build_peephole
from harness.plugins.kernels import build

WARNING = "harness: warning: fused cell kernels unavailable"
REPO = Path(__file__).resolve().parents[1]

needs_kernels = pytest.mark.skipif(kernels.status() != "ok",
                                   reason=f"fused kernels not available here: {kernels.status()}")


def _python(code: str, cache: Path) -> subprocess.Popen:
    """Start ``python -c code`` with ``HARNESS_CACHE_DIR=cache`` (and the fused kernels on)."""
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
    env.pop("HARNESS_FUSED", None)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(autouse=True)
def _fresh_kernel_state(monkeypatch):
    monkeypatch.delenv("HARNESS_FUSED", raising=False)
    kernels.reset()
    yield
    kernels.reset()  # the next test loads the kernels from the real cache again


@pytest.fixture(scope="module")
def real_build(tmp_path_factory) -> tuple[str, bytes]:
    """(file name, bytes) of a real build of the kernels, made in a folder of its own by a peephole
    step in a subprocess (so that, with whatever version of the code, the name is the one it uses)."""
    folder = tmp_path_factory.mktemp("real-build")
    code = """
        import torch
        from harness.plugins.gated_cell_models import build_peephole
        build_peephole(3, 8)(torch.randn(2, 4, 3))[0].sum().backward()
    """
    process = _python(code, folder)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    libraries = list(folder.glob("cell_kernels-*.so"))
    if len(libraries) != 1:
        pytest.skip(f"the kernels cannot be built here: {err}")
    return libraries[0].name, libraries[0].read_bytes()


def _cache(tmp_path: Path, monkeypatch, name: str, content: bytes | None, sidecar: bytes | None = None) -> Path:
    """A cache folder whose library ``name`` holds ``content`` (and a sidecar if given)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    if content is not None:
        (cache / name).write_bytes(content)
    if sidecar is not None:
        (cache / f"{name}.sha256").write_bytes(sidecar)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    return cache / name


def _sidecar_for(content: bytes) -> bytes:
    return f"{hashlib.sha256(content).hexdigest()} {len(content)}\n".encode()


def _assert_verified(library: Path, original: bytes) -> None:
    """The library was rebuilt: the same bytes as a fresh build, and a sidecar that matches them."""
    data = library.read_bytes()
    assert data == original  # the build is deterministic
    assert library.with_name(library.name + ".sha256").read_bytes() == _sidecar_for(data)


def _train_one_step(build_model=build_peephole) -> None:
    """A model of the built-in cells trains a step (fused or eager, whichever is in use)."""
    torch.manual_seed(0)
    model = build_model(3, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    features, summary = model(torch.randn(4, 6, 3))
    (features.square().mean() + summary.sum()).backward()
    optimizer.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# damaged libraries are rebuilt
# --------------------------------------------------------------------------------------------

@needs_kernels
@pytest.mark.parametrize("with_sidecar", [False, True], ids=["no-sidecar", "stale-sidecar"])
def test_truncated_library_is_rebuilt(tmp_path, monkeypatch, capfd, real_build, with_sidecar):
    """The reproduction of issue #15: the first 20000 bytes of a real build under its own name."""
    name, original = real_build
    library = _cache(tmp_path, monkeypatch, name, original[:20000], _sidecar_for(original) if with_sidecar else None)
    assert kernels.status() == "ok"
    _assert_verified(library, original)
    _train_one_step()
    assert build.loaded()
    assert WARNING not in capfd.readouterr().err


@needs_kernels
@pytest.mark.parametrize("content", [b"", os.urandom(50_000), b"\x7fELF" + b"\0" * 20_000],
                         ids=["empty", "garbage", "elf-header-then-zeros"])
def test_empty_or_garbage_library_is_rebuilt(tmp_path, monkeypatch, real_build, content):
    name, original = real_build
    library = _cache(tmp_path, monkeypatch, name, content)
    assert kernels.status() == "ok"
    _assert_verified(library, original)
    _train_one_step(build_cifg)


@needs_kernels
def test_garbage_with_a_matching_checksum_is_rebuilt(tmp_path, monkeypatch, real_build):
    """A file that verifies but does not load (e.g. a forged checksum) is built again, not trusted."""
    name, original = real_build
    garbage = os.urandom(30_000)
    library = _cache(tmp_path, monkeypatch, name, garbage, _sidecar_for(garbage))
    assert kernels.status() == "ok"
    _assert_verified(library, original)


@needs_kernels
def test_library_with_another_abi_is_not_used(tmp_path, monkeypatch, capfd):
    """Verified after loading: a library that reports another ABI number is rejected (eager + warning)."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "ABI", build.ABI + 100)
    assert kernels.status().startswith("unavailable")
    assert "ABI" in kernels.status()
    assert WARNING in capfd.readouterr().err
    assert not kernels.usable(torch.zeros(2, 12), torch.zeros(2, 4))
    _train_one_step()


# --------------------------------------------------------------------------------------------
# unusable caches: eager equations with one warning
# --------------------------------------------------------------------------------------------

def _assert_eager_with_warning(capfd) -> None:
    state = kernels.status()
    assert state.startswith("unavailable"), state
    err = capfd.readouterr().err
    assert err.count(WARNING) == 1 and "using the eager equations" in err
    assert kernels.status() == state and WARNING not in capfd.readouterr().err  # warned once
    assert build_peephole(3, 8).implementation.startswith("eager: kernels unavailable")
    _train_one_step()
    _train_one_step(build_cifg)
    assert not build.loaded()


def test_cache_path_that_is_a_file_falls_back_with_a_warning(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocker))
    _assert_eager_with_warning(capfd)
    assert blocker.read_text() == "not a folder"


def test_cache_path_inside_a_file_falls_back_with_a_warning(tmp_path, monkeypatch, capfd):
    """An unwritable cache folder (as root, chmod would not stop the writes: its parent is a file)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(blocker / "cache"))
    _assert_eager_with_warning(capfd)


def test_unwritable_cache_folder_falls_back_with_a_warning(tmp_path, monkeypatch, capfd):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    real_access = os.access
    monkeypatch.setattr(build.os, "access", lambda path, mode, **kw: False if Path(path) == cache
                        else real_access(path, mode, **kw))
    _assert_eager_with_warning(capfd)
    assert list(cache.iterdir()) == []


@needs_kernels
def test_damaged_library_in_an_unwritable_folder_falls_back_with_a_warning(tmp_path, monkeypatch, capfd,
                                                                           real_build):
    name, original = real_build
    library = _cache(tmp_path, monkeypatch, name, original[:20000])
    real_access = os.access
    monkeypatch.setattr(build.os, "access", lambda path, mode, **kw: False if Path(path) == library.parent
                        else real_access(path, mode, **kw))
    _assert_eager_with_warning(capfd)
    assert library.read_bytes() == original[:20000]  # never loaded, never replaced


def test_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", sys.executable)  # "compiles" by running Python on the C source: fails
    monkeypatch.setattr(build, "_compiler", lambda: sys.executable)
    _assert_eager_with_warning(capfd)
    assert "compiling the cell kernels failed" in kernels.status()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no scratch, no half-written library


# --------------------------------------------------------------------------------------------
# concurrency, laziness, and the reproduction through the command line
# --------------------------------------------------------------------------------------------

@needs_kernels
def test_concurrent_builders_wait_for_one_build(tmp_path, monkeypatch, real_build):
    """Builders that start at once (threads here: the lock is per open file, as between processes):
    one compiles, the others wait for it and load its build."""
    name, original = real_build
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    compiles = []
    real_compile = build._compile
    monkeypatch.setattr(build, "_compile", lambda *args: (compiles.append(args), real_compile(*args)))
    with ThreadPoolExecutor(4) as pool:
        libraries = list(pool.map(lambda _: build._load_or_build(), range(4)))
    assert len(compiles) == 1 and all(library.harness_cell_kernels_abi() == build.ABI for library in libraries)
    _assert_verified(tmp_path / name, original)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.sha256"]


@pytest.mark.slow
@needs_kernels
def test_concurrent_processes_build_safely(tmp_path, real_build):
    """Processes that build into the same empty cache at once all end up with a verified library."""
    name, original = real_build
    code = """
        import torch
        from harness.plugins import kernels
        h, c = kernels.cifg_step(torch.randn(4, 24), torch.randn(4, 8))
        print(kernels.status(), bool(torch.isfinite(h).all()))
    """
    processes = [_python(code, tmp_path) for _ in range(3)]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert out.split() == ["ok", "True"], (out, err)
    _assert_verified(tmp_path / name, original)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, f"{name}.sha256"]


def test_with_the_kernels_disabled_no_model_loads_them(tmp_path):
    """With HARNESS_FUSED=0 every built-in model trains on torch.nn or the eager cells without building
    or loading the kernels (every built-in model runs them otherwise)."""
    code = """
        import sys
        import torch
        from harness.model_api import TaskModel
        from harness.registry.loader import get_model
        from harness.runs.training import prepare_process
        prepare_process()
        for name in ("lstm", "gru", "rnn", "bilstm", "peephole", "cifg"):
            core = get_model(name).build(input_size=3, hidden_size=8)
            TaskModel(core, 2, "last")(torch.randn(4, 5, 3)).sum().backward()
            assert "HARNESS_FUSED=0" in core.implementation, core.implementation
        maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
        print("cell_kernels-" in maps)
    """
    env = {**os.environ, "HARNESS_CACHE_DIR": str(tmp_path), "HARNESS_FUSED": "0"}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert out.split() == ["False"], (out, err)
    assert list(tmp_path.iterdir()) == []


def _damaged_cache(tmp_path: Path, real_build: tuple[str, bytes]) -> Path:
    """A cache folder holding the first 20000 bytes of a real build under its own name (issue #15)."""
    name, original = real_build
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / name).write_bytes(original[:20000])
    return cache / name


def _run_cli(model: str, cache: Path, out: Path, fused: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARNESS_CACHE_DIR": str(cache)}
    env.pop("HARNESS_FUSED", None)
    if not fused:
        env["HARNESS_FUSED"] = "0"
    command = [sys.executable, "-m", "harness", "run", "--models", model, "--task", "adding", "--lengths", "10",
               "--seeds", "1", "--steps", "5", "--workers", "1", "--out", str(out), "--no-plot", "--quiet"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_cli_run_with_a_truncated_library_repairs_the_cache(tmp_path, real_build):
    """Issue #15 end to end: this run died with SIGBUS (exit 135 from a shell), no message."""
    library = _damaged_cache(tmp_path, real_build)
    done = _run_cli("peephole", library.parent, tmp_path / "run")
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    # repaired (rebuilt, with a checksum that matches), or at least reported
    sidecar = library.with_name(library.name + ".sha256")
    repaired = library.read_bytes() == real_build[1] and sidecar.exists() \
        and sidecar.read_bytes() == _sidecar_for(real_build[1])
    assert repaired or WARNING in done.stderr, done.stderr[-2000:]
    assert (tmp_path / "run" / "results.csv").read_text().count("\n") == 2  # header and one trial


@pytest.mark.slow
def test_cli_run_with_the_kernels_disabled_ignores_a_truncated_library(tmp_path, real_build):
    """With HARNESS_FUSED=0 a sweep never touches the kernel cache (see also
    test_with_the_kernels_disabled_no_model_loads_them, which is not slow)."""
    library = _damaged_cache(tmp_path, real_build)
    done = _run_cli("lstm", library.parent, tmp_path / "run", fused=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert library.read_bytes() == real_build[1][:20000]
    assert sorted(p.name for p in library.parent.iterdir()) == [library.name]
    assert WARNING not in done.stderr

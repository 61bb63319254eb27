"""Build, cache, verify and load the fused cell kernels (``cell_kernels.c``) with ctypes.

Why a C compiler and ctypes rather than ``torch.utils.cpp_extension``: the kernels need no torch
headers, so the first-use build takes about a second instead of tens of seconds, and needs no
ninja (see docs/performance.md, "What did not work").

Where: one shared library per source, compiler, flags and CPU, in ``$HARNESS_CACHE_DIR``, else
``$XDG_CACHE_HOME/harness``, else ``~/.cache/harness``; if that default folder cannot be used, a
private folder in the temporary directory (with a warning). An explicit ``HARNESS_CACHE_DIR`` that
cannot be used is not replaced: the cells run their eager equations instead.

Safety: a cached library is mapped into the process, so a damaged file (a truncated copy, a full
disk, a crash mid-write) must never reach ``dlopen`` (a truncated ELF file kills the process with
SIGBUS). Every build is compiled in a scratch folder, renamed into place atomically, and then
described by a sidecar ``<library>.sha256`` (SHA-256 and size, also renamed into place). Before
loading, the file's bytes are hashed and compared with the sidecar, and the file is loaded only if
it is still the file that was hashed. A library that does not verify is rebuilt; one that
verifies but does not load is rebuilt too; after loading, its ABI number is checked. Concurrent
builders are serialised by an advisory lock on the cache folder (where the platform has one); without
it, the atomic renames still leave only complete files, and the build is deterministic, so the worst case is a rebuild.
If anything fails, :func:`status` says why, one warning line goes to stderr, and the cells use
their eager equations: a kernel problem never stops a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ABI = 6  # must equal HARNESS_CELL_KERNELS_ABI in cell_kernels.c
# the first is compiled (it includes the others)
SOURCES = ("cell_kernels.c", "cell_kernels.h", "sequence_kernels.h", "scan_kernels.h")
# exported kernel -> (number of int64 sizes, then number of pointers), for each of _f32, _f64
FUNCTIONS = {"peephole_forward": (2, 6), "peephole_backward": (2, 9), "cifg_forward": (2, 5),
             "cifg_backward": (2, 6),
             "rnn_sequence_forward": (4, 4), "rnn_sequence_backward": (6, 5),
             "gru_sequence_forward": (5, 6), "gru_sequence_backward": (6, 8),
             "peephole_sequence_forward": (5, 8), "peephole_sequence_backward": (6, 11),
             "cifg_sequence_forward": (5, 7), "cifg_sequence_backward": (6, 9),
             "slstm_sequence_forward": (6, 7), "slstm_sequence_backward": (6, 9),
             "diagonal_scan_forward": (3, 4), "diagonal_scan_backward": (3, 7),
             "complex_scan_forward": (3, 4), "complex_scan_backward": (3, 7),
             "selective_scan_forward": (5, 8), "selective_scan_backward": (5, 13)}
LOCK_TIMEOUT_S = 300.0  # longer than any build: after that, build without the lock
# libgomp.so.1, libgomp-a34b3233.so.1 (a wheel's renamed copy), libiomp5.so, libomp.so, libomp.dylib
_OPENMP_RUNTIME = re.compile(r"lib(gomp|iomp5|omp)(-[0-9a-f]+)?\.(so(\.[0-9]+)*|dylib)")

_STATE_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet; "ok"; otherwise why the kernels are unavailable


class KernelsUnavailable(RuntimeError):
    """The fused kernels cannot be built or loaded here (the message says why)."""


# --------------------------------------------------------------------------------------------
# public state
# --------------------------------------------------------------------------------------------

def disabled() -> bool:
    """Whether ``HARNESS_FUSED`` turns the fused kernels off (0, false, no, off, eager)."""
    return os.environ.get("HARNESS_FUSED", "1").strip().lower() in ("0", "false", "no", "off", "eager")


def status() -> str:
    """``"ok"`` if the fused kernels are loaded, else why not; builds or loads them on first call.

    Never raises: any failure becomes an ``"unavailable: ..."`` status and one warning on stderr.
    """
    global _lib, _status
    if _status is None:
        with _STATE_LOCK:  # one attempt (and at most one warning) per process, whatever the threads
            if _status is None and disabled():
                _status = "disabled by HARNESS_FUSED"
            elif _status is None:
                try:
                    _lib = _load_or_build()
                    _status = "ok"
                except Exception as exc:  # noqa: BLE001 - any failure means: use the eager equations
                    _status = f"unavailable: {type(exc).__name__}: {exc}"
                    _warn(f"fused cell kernels {_status}; using the eager equations")
    return _status


def library() -> ctypes.CDLL:
    """The loaded kernel library (loads it on first call); raises :class:`KernelsUnavailable`."""
    if _lib is None and status() != "ok":
        raise KernelsUnavailable(f"harness.plugins.kernels: fused kernels {status()}")
    assert _lib is not None
    return _lib


def peek() -> str | None:
    """:func:`status` if it is already known in this process, else None; never builds or loads."""
    return _status


def loaded() -> bool:
    """Whether this process has loaded the kernel library (without trying to load it)."""
    return _lib is not None


def reset() -> None:
    """Forget the loaded state, so the next :func:`status` tries again (tests toggle settings)."""
    global _lib, _status
    _lib, _status = None, None


def _warn(message: str) -> None:
    print(f"harness: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# where
# --------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """The configured cache folder (it may not exist or be usable; see :func:`_writable_cache_dir`)."""
    explicit = os.environ.get("HARNESS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "harness"


def _writable(directory: Path) -> str | None:
    """None if ``directory`` is (made) a writable folder, else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    if not directory.is_dir():
        return "not a folder"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable"
    return None


def _writable_cache_dir() -> Path:
    """:func:`cache_dir` if writable; for the default location, else a private temporary folder."""
    directory = cache_dir()
    problem = _writable(directory)
    if problem is None:
        return directory
    if os.environ.get("HARNESS_CACHE_DIR"):
        raise KernelsUnavailable(f"HARNESS_CACHE_DIR={directory} is not usable ({problem})")
    user = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"harness-{user}"
    try:
        fallback.mkdir(mode=0o700, exist_ok=True)
        info = fallback.stat()
    except OSError as exc:
        raise KernelsUnavailable(f"cache folder {directory} is not usable ({problem}), nor {fallback}: {exc}") from None
    # another user's (or a shared, writable) folder must not supply code that this process runs
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise KernelsUnavailable(f"cache folder {directory} is not usable ({problem}); "
                                 f"{fallback} is not a private folder")
    _warn(f"cache folder {directory} is not usable ({problem}); using {fallback} for the fused cell kernels")
    return fallback


# --------------------------------------------------------------------------------------------
# how
# --------------------------------------------------------------------------------------------

def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0],
                      "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes (libgomp, libiomp, libomp) mapped into this process.

    Read from ``/proc/self/maps``; an empty list where that does not exist (not Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as stream:
            paths = {line.split(None, 5)[5].strip() for line in stream if len(line.split(None, 5)) == 6}
    except OSError:
        return []
    return sorted(path for path in paths if _OPENMP_RUNTIME.fullmatch(os.path.basename(path)))


def _openmp_flags() -> list[str]:
    """``["-fopenmp"]`` only if the library would link the OpenMP runtime torch has already loaded.

    ``-fopenmp`` makes the library need ``libgomp.so.1``; the dynamic loader resolves that to an
    already-loaded object with that soname, i.e. torch's copy, only if torch runs on a libgomp
    named so. With Intel's or LLVM's runtime, a renamed libgomp, or none, a second runtime would
    come in (two thread pools, oversubscription): build without OpenMP (one thread per call)."""
    import torch

    if not (sys.platform.startswith("linux") and getattr(torch._C, "has_openmp", False)):
        return []
    runtimes = openmp_runtimes()
    # the file is libgomp.so.1 itself or, through a symbolic link, libgomp.so.1.0.0 (same soname)
    if len(runtimes) == 1 and re.fullmatch(r"libgomp\.so\.1(\.[0-9]+)*", os.path.basename(runtimes[0])):
        return ["-fopenmp"]
    return []


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first (a compiler may not know ``-march=native``)."""
    # -fno-trapping-math lets the compiler turn the clamps into SIMD selects; unlike -ffast-math
    # it keeps IEEE results (NaN and inf propagate).
    base = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
    openmp = _openmp_flags()
    sets = [[*base, "-march=native", *openmp], [*base, "-march=native"], base]
    return [flags for i, flags in enumerate(sets) if flags not in sets[:i]]


def _sources() -> dict[str, bytes]:
    here = Path(__file__).resolve().parent
    return {name: (here / name).read_bytes() for name in SOURCES}


def _library_name(compiler: str, flag_sets: list[list[str]], sources: dict[str, bytes]) -> str:
    parts = [str(ABI), compiler, platform.machine(), _cpu_key(), repr(flag_sets)]
    digest = hashlib.sha256("\0".join(parts).encode())
    for name, text in sorted(sources.items()):
        digest.update(b"\0" + name.encode() + b"\0" + text)
    return f"cell_kernels-{digest.hexdigest()[:16]}{'.dylib' if sys.platform == 'darwin' else '.so'}"


def _load_or_build() -> ctypes.CDLL:
    """Load the verified cached library, building (or rebuilding) it first where needed."""
    compiler = _compiler()
    if compiler is None:
        raise KernelsUnavailable("no C compiler found (set CC)")
    flag_sets, sources = _flag_sets(), _sources()
    name = _library_name(compiler, flag_sets, sources)
    cached = cache_dir() / name
    try:
        return _load(cached)  # the common case: built before, intact
    except KernelsUnavailable:
        # missing or damaged: build it; intact but not loadable (say, a runtime library went away):
        # build it again
        unloadable = _verified_digest(cached) is not None
    directory = _writable_cache_dir()
    library = directory / name
    with _build_lock(directory):
        # a concurrent process may have built it while this one waited for the lock
        if (unloadable and library == cached) or _verified_digest(library) is None:
            _compile(compiler, flag_sets, sources, library)
    return _load(library)


# --------------------------------------------------------------------------------------------
# verify and load
# --------------------------------------------------------------------------------------------

def _sidecar(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _digest_fd(fd: int) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _expected(library: Path) -> tuple[str, int] | None:
    """The (SHA-256, size) the sidecar records for ``library``, or None if missing or malformed."""
    try:
        fields = _sidecar(library).read_text(encoding="ascii").split()
        if len(fields) == 2 and re.fullmatch(r"[0-9a-f]{64}", fields[0]):
            return fields[0], int(fields[1])
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    return None


def _verified_digest(library: Path, fd: int | None = None) -> tuple[str, int] | None:
    """The library's (SHA-256, size) if it matches its sidecar, else None (missing, damaged)."""
    expected = _expected(library)
    if expected is None:
        return None
    try:
        if fd is None:
            fd = os.open(library, os.O_RDONLY)
            try:
                actual = _digest_fd(fd)
            finally:
                os.close(fd)
        else:
            actual = _digest_fd(fd)
    except OSError:
        return None
    return actual if actual == expected else None


def _load(library: Path) -> ctypes.CDLL:
    """dlopen ``library`` after verifying its bytes against its sidecar.

    The file is hashed through an open descriptor, and loaded only if the path still names that
    same file (inode) afterwards. (Loading through ``/proc/self/fd/N`` would close even that gap,
    but glibc matches an already-loaded library by that name string, so a later load through a
    reused descriptor number would silently return the earlier library.)"""
    try:
        fd = os.open(library, os.O_RDONLY)
    except OSError as exc:
        raise KernelsUnavailable(f"cannot open {library}: {exc.strerror or exc}") from exc
    try:
        if _verified_digest(library, fd) is None:
            raise KernelsUnavailable(f"{library} does not match its checksum {_sidecar(library).name}")
        before = openmp_runtimes()
        if not os.path.samestat(os.fstat(fd), os.stat(library)):
            raise KernelsUnavailable(f"{library} was replaced while being verified")
        try:
            lib = ctypes.CDLL(str(library))
        except OSError as exc:
            raise KernelsUnavailable(f"cannot load {library}: {exc}") from exc
    finally:
        os.close(fd)
    _check_loaded(lib, library, before)
    return lib


def _check_loaded(lib: ctypes.CDLL, library: Path, runtimes_before: list[str]) -> None:
    """Check the ABI number, declare the kernels' signatures, and check no OpenMP runtime came in."""
    try:
        abi = lib.harness_cell_kernels_abi
        abi.restype, abi.argtypes = ctypes.c_int, []
        found = abi()
    except AttributeError as exc:
        raise KernelsUnavailable(f"{library} is not a cell-kernels library") from exc
    if found != ABI:
        raise KernelsUnavailable(f"{library} has ABI {found}, expected {ABI}")
    for name, (sizes, pointers) in FUNCTIONS.items():
        for suffix in ("f32", "f64"):
            function = getattr(lib, f"{name}_{suffix}")
            function.argtypes = [ctypes.c_int64] * sizes + [ctypes.c_void_p] * pointers
            function.restype = None
    added = sorted(set(openmp_runtimes()) - set(runtimes_before))
    if added and len(openmp_runtimes()) > 1:  # cannot be undone; should not happen (see _openmp_flags)
        _warn(f"loading the fused cell kernels added a second OpenMP runtime: {', '.join(added)}")


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold an advisory lock on the cache folder while building (a no-op where there is none)."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break  # a stuck builder: go on unlocked (the renames stay atomic)
                time.sleep(0.05)
            except OSError:
                break  # no locking on this file system
        yield
    finally:
        os.close(fd)  # releases the lock


def _compile(compiler: str, flag_sets: list[list[str]], sources: dict[str, bytes], library: Path) -> None:
    """Compile into a scratch folder next to ``library``, then rename it and its sidecar into place.

    The sources are compiled by relative name in the scratch folder, so identical inputs give
    identical bytes whichever process builds them."""
    with tempfile.TemporaryDirectory(dir=library.parent, prefix=".build-") as scratch:
        for name, text in sources.items():
            (Path(scratch) / name).write_bytes(text)
        output = Path(scratch) / library.name
        errors = []
        for flags in flag_sets:
            done = subprocess.run([compiler, *flags, SOURCES[0], "-o", output.name, "-lm"], cwd=scratch,
                                  capture_output=True, text=True, timeout=120, check=False)
            if done.returncode == 0:
                break
            errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
        else:
            raise KernelsUnavailable(f"compiling the cell kernels failed: {errors}")
        fd = os.open(output, os.O_RDONLY)
        try:
            sha, size = _digest_fd(fd)
        finally:
            os.close(fd)
        sidecar = Path(scratch) / "sidecar"
        sidecar.write_text(f"{sha} {size}\n", encoding="ascii")
        os.replace(output, library)  # atomic: a reader sees the old file or the new one, whole
        os.replace(sidecar, _sidecar(library))

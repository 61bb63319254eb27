"""Fused CPU kernels for the pointwise part of the built-in custom cells (peephole LSTM, CIFG).

Why: in a Python cell loop on the CPU, the matrix products are as fast as inside the fused
``torch.nn.LSTM``, but the ~14 small pointwise operations of an LSTM step and the ~30 kernels of
their backward pass cost more than the products (each is a separate dispatch, allocation and
autograd node over a few hundred kilobytes). These kernels do one step's pointwise forward in
one pass and its backward in one pass, behind one ``torch.autograd.Function`` per step.

How: a few hundred lines of C, compiled with the system C compiler on first use (about a
second) into a per-user cache (``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/harness``, else
``~/.cache/harness``, else a private folder in the temporary directory) and loaded with ctypes;
no torch headers, so nothing slow to build. Rows are split between torch's own OpenMP threads
(the library links the ``libgomp.so.1`` torch has already loaded), so ``torch.set_num_threads``
applies to the kernels too.
float32 uses a vectorisable exp (Cephes polynomial, ~1 ulp) so the compiler can use SIMD;
float64 uses libm. NaN and inf propagate as in the eager equations (no fast-math), so diverging
trials are still detected.

When not: ``HARNESS_FUSED=0`` (or no C compiler, a failed build, a non-CPU tensor, a dtype other
than float32/float64, or tracing by ``torch.compile``/TorchScript) and the cells run their eager
equations instead, which remain the reference (tests compare the two).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch

_TEMPLATE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The exported kernels split the batch rows between the threads of the OpenMP runtime torch
   itself uses (the process has one libgomp.so.1 loaded, torch's), so torch.set_num_threads applies
   and nothing is oversubscribed; small batches, one thread, or a build without OpenMP: one pass.
   The per-row work lives in separate functions so that their inner loops vectorise. */
#ifdef _OPENMP
#include <omp.h>
#define FOR_ROW_BLOCKS(B, H, CALL) do {                                          \
    if ((B) * (H) >= 8192 && omp_get_max_threads() > 1) {                        \
        _Pragma("omp parallel")                                                  \
        {                                                                        \
            int64_t n_ = omp_get_num_threads(), t_ = omp_get_thread_num();       \
            int64_t b0 = (B) * t_ / n_, b1 = (B) * (t_ + 1) / n_;                \
            CALL;                                                                \
        }                                                                        \
    } else {                                                                     \
        int64_t b0 = 0, b1 = (B);                                                \
        CALL;                                                                    \
    }                                                                            \
} while (0)
#else
#define FOR_ROW_BLOCKS(B, H, CALL) do { int64_t b0 = 0, b1 = (B); CALL; } while (0)
#endif
#define ROWS static __attribute__((noinline)) void

/* ---- activations ------------------------------------------------------------------------ */
#if IS_FLOAT
static inline REAL xexp(REAL x) {
    /* Cephes expf; written without branches or library calls so that loops vectorise.
       NaN stays NaN (comparisons with NaN are false, so the clamps leave it alone). The result
       for x < -88.4 is that of -88.4 (about 4e-39 instead of a denormal or zero). */
    x = x > 89.0f ? 89.0f : x;  /* above ~88.7 the result overflows to inf, as expf's does */
    x = x < -88.3762626647949f ? -88.3762626647949f : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    float z = x * x;
    float y = 1.9875691500E-4f;
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    int32_t n = (int32_t)fx;
    int32_t bits = (n + 127) << 23;
    float pow2n;
    memcpy(&pow2n, &bits, sizeof pow2n);
    return y * pow2n;
}
static inline REAL xtanh(REAL x) {
    /* Cephes tanhf: an odd polynomial near zero, 1 - 2 / (exp(2x) + 1) elsewhere. */
    float z = x * x;
    float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
                    + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
    float large = 1.0f - 2.0f / (xexp(2.0f * x) + 1.0f);
    return fabsf(x) < 0.625f ? small : large;
}
#else
static inline REAL xexp(REAL x) { return exp(x); }
static inline REAL xtanh(REAL x) { return tanh(x); }
#endif
static inline REAL xsigmoid(REAL x) { return (REAL)1 / ((REAL)1 + xexp(-x)); }

/* ---- peephole LSTM: gates i, f, g, o; i, f see c_{t-1}, o sees c_t ---------------------- */
/* S (activations, kept for backward): [i, f, g, o, tanh(c)] per row, 5H wide. */
ROWS peephole_forward_rows_SUFFIX(int64_t b0, int64_t b1, int64_t H, const REAL *restrict G,
                                  const REAL *restrict C, const REAL *restrict P,
                                  REAL *restrict Hout, REAL *restrict Cout, REAL *restrict S) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *g = G + b * 4 * H;
        const REAL *cp = C + b * H;
        REAL *h = Hout + b * H, *c = Cout + b * H;
        REAL *s = S + b * 5 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = xsigmoid(g[j] + P[j] * cp[j]);
            REAL f = xsigmoid(g[H + j] + P[H + j] * cp[j]);
            REAL gg = xtanh(g[2 * H + j]);
            REAL cn = f * cp[j] + i * gg;
            REAL o = xsigmoid(g[3 * H + j] + P[2 * H + j] * cn);
            REAL tc = xtanh(cn);
            c[j] = cn;
            h[j] = o * tc;
            s[j] = i; s[H + j] = f; s[2 * H + j] = gg; s[3 * H + j] = o; s[4 * H + j] = tc;
        }
    }
}

void peephole_forward_SUFFIX(int64_t B, int64_t H, const REAL *G, const REAL *C, const REAL *P,
                             REAL *Hout, REAL *Cout, REAL *S) {
    FOR_ROW_BLOCKS(B, H, peephole_forward_rows_SUFFIX(b0, b1, H, G, C, P, Hout, Cout, S));
}

ROWS peephole_backward_rows_SUFFIX(int64_t b0, int64_t b1, int64_t H, const REAL *restrict dH,
                                   const REAL *restrict dCn, const REAL *restrict S,
                                   const REAL *restrict C, const REAL *restrict P,
                                   REAL *restrict dG, REAL *restrict dC) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *s = S + b * 5 * H;
        const REAL *cp = C + b * H;
        const REAL *dh = dH + b * H, *dcn = dCn + b * H;
        REAL *dg = dG + b * 4 * H, *dc = dC + b * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = s[j], f = s[H + j], gg = s[2 * H + j], o = s[3 * H + j], tc = s[4 * H + j];
            REAL dhj = dh[j];
            REAL dgo = dhj * tc * o * ((REAL)1 - o);
            REAL d = dcn[j] + dhj * o * ((REAL)1 - tc * tc) + dgo * P[2 * H + j];
            REAL dgi = d * gg * i * ((REAL)1 - i);
            REAL dgf = d * cp[j] * f * ((REAL)1 - f);
            REAL dgg = d * i * ((REAL)1 - gg * gg);
            dg[j] = dgi; dg[H + j] = dgf; dg[2 * H + j] = dgg; dg[3 * H + j] = dgo;
            dc[j] = d * f + dgi * P[j] + dgf * P[H + j];
        }
    }
}

ROWS peephole_grad_p_SUFFIX(int64_t B, int64_t H, const REAL *restrict dG, const REAL *restrict C,
                            const REAL *restrict Cn, REAL *restrict dP) {
    for (int64_t b = 0; b < B; b++) {  /* a reduction over rows: one thread, vectorised over j */
        const REAL *dg = dG + b * 4 * H, *cp = C + b * H, *cn = Cn + b * H;
        for (int64_t j = 0; j < H; j++) {
            dP[j] += dg[j] * cp[j];
            dP[H + j] += dg[H + j] * cp[j];
            dP[2 * H + j] += dg[3 * H + j] * cn[j];
        }
    }
}

/* dP (3H, accumulated into) may be NULL (not needed). */
void peephole_backward_SUFFIX(int64_t B, int64_t H, const REAL *dH, const REAL *dCn, const REAL *S,
                              const REAL *C, const REAL *Cn, const REAL *P, REAL *dG, REAL *dC,
                              REAL *dP) {
    FOR_ROW_BLOCKS(B, H, peephole_backward_rows_SUFFIX(b0, b1, H, dH, dCn, S, C, P, dG, dC));
    if (dP) peephole_grad_p_SUFFIX(B, H, dG, C, Cn, dP);
}

/* ---- CIFG: gates i, g, o; f = 1 - i ------------------------------------------------------ */
/* S (activations, kept for backward): [i, g, o, tanh(c)] per row, 4H wide. */
ROWS cifg_forward_rows_SUFFIX(int64_t b0, int64_t b1, int64_t H, const REAL *restrict G,
                              const REAL *restrict C, REAL *restrict Hout, REAL *restrict Cout,
                              REAL *restrict S) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *g = G + b * 3 * H;
        const REAL *cp = C + b * H;
        REAL *h = Hout + b * H, *c = Cout + b * H;
        REAL *s = S + b * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = xsigmoid(g[j]);
            REAL gg = xtanh(g[H + j]);
            REAL o = xsigmoid(g[2 * H + j]);
            REAL cn = cp[j] + i * (gg - cp[j]);
            REAL tc = xtanh(cn);
            c[j] = cn;
            h[j] = o * tc;
            s[j] = i; s[H + j] = gg; s[2 * H + j] = o; s[3 * H + j] = tc;
        }
    }
}

void cifg_forward_SUFFIX(int64_t B, int64_t H, const REAL *G, const REAL *C, REAL *Hout,
                         REAL *Cout, REAL *S) {
    FOR_ROW_BLOCKS(B, H, cifg_forward_rows_SUFFIX(b0, b1, H, G, C, Hout, Cout, S));
}

ROWS cifg_backward_rows_SUFFIX(int64_t b0, int64_t b1, int64_t H, const REAL *restrict dH,
                               const REAL *restrict dCn, const REAL *restrict S,
                               const REAL *restrict C, REAL *restrict dG, REAL *restrict dC) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *s = S + b * 4 * H;
        const REAL *cp = C + b * H;
        const REAL *dh = dH + b * H, *dcn = dCn + b * H;
        REAL *dg = dG + b * 3 * H, *dc = dC + b * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = s[j], gg = s[H + j], o = s[2 * H + j], tc = s[3 * H + j];
            REAL dhj = dh[j];
            REAL d = dcn[j] + dhj * o * ((REAL)1 - tc * tc);
            dg[j] = d * (gg - cp[j]) * i * ((REAL)1 - i);
            dg[H + j] = d * i * ((REAL)1 - gg * gg);
            dg[2 * H + j] = dhj * tc * o * ((REAL)1 - o);
            dc[j] = d * ((REAL)1 - i);
        }
    }
}

void cifg_backward_SUFFIX(int64_t B, int64_t H, const REAL *dH, const REAL *dCn, const REAL *S,
                          const REAL *C, REAL *dG, REAL *dC) {
    FOR_ROW_BLOCKS(B, H, cifg_backward_rows_SUFFIX(b0, b1, H, dH, dCn, S, C, dG, dC));
}
"""


def _source() -> str:
    parts = ["/* generated by harness.plugins.cell_kernels */"]
    for real, suffix, is_float in (("float", "f32", 1), ("double", "f64", 0)):
        body = _TEMPLATE.replace("SUFFIX", suffix)
        parts.append(f"#define REAL {real}\n#define IS_FLOAT {is_float}\n{body}\n#undef REAL\n#undef IS_FLOAT\n")
        # the activations are static helpers: give each precision its own names
        parts[-1] = (parts[-1].replace("xexp", f"xexp_{suffix}").replace("xtanh", f"xtanh_{suffix}")
                     .replace("xsigmoid", f"xsigmoid_{suffix}"))
    return "\n".join(parts)


_FUNCTIONS = {
    "peephole_forward": 8, "peephole_backward": 11, "cifg_forward": 7, "cifg_backward": 8,
}
_lib: ctypes.CDLL | None = None
_status: str | None = None  # None: not tried yet; "ok"; otherwise why the kernels are unavailable


def cache_dir() -> Path:
    explicit = os.environ.get("HARNESS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "harness"


def _writable_cache_dir() -> Path:
    """:func:`cache_dir`, or a private folder in the temporary directory if that is not writable."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK)
    except OSError:
        writable = False
    if writable:
        return directory
    if os.environ.get("HARNESS_CACHE_DIR"):
        raise PermissionError(f"HARNESS_CACHE_DIR={directory} is not a writable folder")
    fallback = Path(tempfile.gettempdir()) / f"harness-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc", "clang"):
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


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = _source()
    # -fno-trapping-math lets the compiler turn the clamps into SIMD selects; unlike -ffast-math
    # it keeps IEEE results (NaN and inf propagate).
    # -fopenmp: the library then needs libgomp.so.1, which resolves to the copy torch has loaded
    # (only where torch itself runs on OpenMP; a second OpenMP runtime would oversubscribe).
    base = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
    flag_sets = ([*base, "-march=native"], base)
    if getattr(torch._C, "has_openmp", False) and sys.platform.startswith("linux"):
        flag_sets = ([*base, "-march=native", "-fopenmp"], *flag_sets)
    key = hashlib.sha256("\0".join([source, compiler, platform.machine(), _cpu_key(),
                                    repr(flag_sets)]).encode()).hexdigest()[:16]
    directory = _writable_cache_dir()
    library = directory / f"cell_kernels-{key}{'.dylib' if sys.platform == 'darwin' else '.so'}"
    if not library.exists():
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            c_file = Path(scratch) / "cell_kernels.c"
            c_file.write_text(source)
            output = Path(scratch) / library.name
            errors = []
            for flags in flag_sets:
                done = subprocess.run([compiler, *flags, str(c_file), "-o", str(output), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if done.returncode == 0:
                    break
                errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
            else:
                raise RuntimeError(f"compiling the cell kernels failed: {errors}")
            os.replace(output, library)  # atomic: concurrent workers may build at the same time
    lib = ctypes.CDLL(str(library))
    for name, count in _FUNCTIONS.items():
        for suffix in ("f32", "f64"):
            function = getattr(lib, f"{name}_{suffix}")
            function.argtypes = [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * (count - 2)
            function.restype = None
    return lib


def status() -> str:
    """``"ok"`` if the fused kernels are in use, else the reason they are not (loads them once)."""
    global _lib, _status
    if _status is None:
        if os.environ.get("HARNESS_FUSED", "1").strip().lower() in ("0", "false", "no", "off", "eager"):
            _status = "disabled by HARNESS_FUSED"
        else:
            try:
                _lib = _build()
                _status = "ok"
            except Exception as exc:  # no compiler, read-only cache, exotic platform: eager instead
                _status = f"unavailable: {type(exc).__name__}: {exc}"
    return _status


def reset() -> None:
    """Forget the loaded state (tests toggle ``HARNESS_FUSED``)."""
    global _lib, _status
    _lib, _status = None, None


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can run a step on these tensors (else use the eager equations)."""
    first = tensors[0]
    if first.device.type != "cpu" or first.dtype not in _SUFFIX:
        return False
    if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing() or _compiling():
        return False
    return status() == "ok"


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _call(name: str, dtype: torch.dtype, *args) -> None:
    if _lib is None and status() != "ok":
        raise RuntimeError(f"harness.plugins.cell_kernels: fused kernels {status()}")
    getattr(_lib, f"{name}_{_SUFFIX[dtype]}")(*args)


def _dense(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """An output's gradient as a contiguous tensor (zeros where autograd passed None)."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# --------------------------------------------------------------------------------------------
# peephole LSTM
# --------------------------------------------------------------------------------------------

class _PeepholeStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, c_prev, peepholes, trainable):
        batch, hidden = c_prev.shape
        h = torch.empty_like(c_prev)
        c = torch.empty_like(c_prev)
        saved = gates.new_empty(batch, 5 * hidden)
        _call("peephole_forward", gates.dtype, batch, hidden, gates.data_ptr(), c_prev.data_ptr(),
              peepholes.data_ptr(), h.data_ptr(), c.data_ptr(), saved.data_ptr())
        ctx.save_for_backward(saved, c_prev, c, peepholes)
        ctx.trainable = trainable
        ctx.set_materialize_grads(False)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        saved, c_prev, c, peepholes = ctx.saved_tensors
        batch, hidden = c_prev.shape
        grad_h, grad_c = _dense(grad_h, c_prev), _dense(grad_c, c_prev)
        grad_gates = c_prev.new_empty(batch, 4 * hidden)
        grad_c_prev = torch.empty_like(c_prev)
        want_p = ctx.trainable and ctx.needs_input_grad[2]
        grad_p = torch.zeros_like(peepholes) if want_p else None
        _call("peephole_backward", c_prev.dtype, batch, hidden, grad_h.data_ptr(), grad_c.data_ptr(),
              saved.data_ptr(), c_prev.data_ptr(), c.data_ptr(), peepholes.data_ptr(),
              grad_gates.data_ptr(), grad_c_prev.data_ptr(), _ptr(grad_p))
        return grad_gates, grad_c_prev, grad_p, None


def peephole_step(gates: torch.Tensor, c_prev: torch.Tensor,
                  peepholes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One peephole-LSTM step; ``peepholes`` is ``(3, H)`` (p_i, p_f, p_o) or None for none.

    Without peepholes the same kernel runs with zero peephole weights, so zero peepholes and no
    peepholes give bit-identical results."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    trainable = peepholes is not None
    if peepholes is None:
        peepholes = _zeros(3, c_prev.shape[1], c_prev.dtype)
    peepholes = peepholes.contiguous()
    if _needs_grad(gates, c_prev, peepholes if trainable else None):
        return _PeepholeStep.apply(gates, c_prev, peepholes, trainable)
    batch, hidden = c_prev.shape
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    scratch = gates.new_empty(batch, 5 * hidden)
    _call("peephole_forward", gates.dtype, batch, hidden, gates.data_ptr(), c_prev.data_ptr(),
          peepholes.data_ptr(), h.data_ptr(), c.data_ptr(), scratch.data_ptr())
    return h, c


_ZEROS: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}


def _zeros(rows: int, columns: int, dtype: torch.dtype) -> torch.Tensor:
    key = (rows, columns, dtype)
    if key not in _ZEROS:
        _ZEROS[key] = torch.zeros(rows, columns, dtype=dtype)
    return _ZEROS[key]


# --------------------------------------------------------------------------------------------
# CIFG
# --------------------------------------------------------------------------------------------

class _CIFGStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates, c_prev):
        batch, hidden = c_prev.shape
        h = torch.empty_like(c_prev)
        c = torch.empty_like(c_prev)
        saved = gates.new_empty(batch, 4 * hidden)
        _call("cifg_forward", gates.dtype, batch, hidden, gates.data_ptr(), c_prev.data_ptr(),
              h.data_ptr(), c.data_ptr(), saved.data_ptr())
        ctx.save_for_backward(saved, c_prev)
        ctx.set_materialize_grads(False)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h, grad_c):
        saved, c_prev = ctx.saved_tensors
        batch, hidden = c_prev.shape
        grad_h, grad_c = _dense(grad_h, c_prev), _dense(grad_c, c_prev)
        grad_gates = c_prev.new_empty(batch, 3 * hidden)
        grad_c_prev = torch.empty_like(c_prev)
        _call("cifg_backward", c_prev.dtype, batch, hidden, grad_h.data_ptr(), grad_c.data_ptr(),
              saved.data_ptr(), c_prev.data_ptr(), grad_gates.data_ptr(), grad_c_prev.data_ptr())
        return grad_gates, grad_c_prev


def cifg_step(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFG step (gates i, g, o; f = 1 - i)."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    if _needs_grad(gates, c_prev):
        return _CIFGStep.apply(gates, c_prev)
    batch, hidden = c_prev.shape
    h, c = torch.empty_like(c_prev), torch.empty_like(c_prev)
    scratch = gates.new_empty(batch, 4 * hidden)
    _call("cifg_forward", gates.dtype, batch, hidden, gates.data_ptr(), c_prev.data_ptr(),
          h.data_ptr(), c.data_ptr(), scratch.data_ptr())
    return h, c

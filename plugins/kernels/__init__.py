"""Fused CPU kernels of the built-in models: the pointwise step of the peephole-LSTM and CIFG cells,
the whole-sequence loops (forward and backward) of the rnn, GRU, peephole, CIFG and sLSTM cells (the
LSTM runs the peephole loop with zero peepholes), and the diagonal and selective scans of the modern
recurrent models (:mod:`.scan_ops`: minGRU, minLSTM, LRU, Mamba's S6).

Why: in a Python cell loop on the CPU, the matrix products are as fast as inside the fused
``torch.nn.LSTM``, but the ~14 small pointwise operations of an LSTM step and the ~30 kernels of
their backward pass cost more than the products (each a separate dispatch, allocation and
autograd node over a few hundred kilobytes). These kernels do one step's pointwise forward in one
pass and its backward in one pass (docs/performance.md, "Goal 1").

- ``cell_kernels.c`` / ``cell_kernels.h``: the kernels, in C (float32 with a vectorisable exp,
  float64 with libm; NaN and inf propagate as in the eager equations, no fast-math). Rows are
  split between the threads of torch's own OpenMP runtime, so ``torch.set_num_threads`` applies.
- :mod:`.build`: compiles them with the system C compiler on first use (about a second), caches
  the library per user with a checksum, verifies it before every load, and falls back (with one
  warning) when anything goes wrong.
- :mod:`.sequence_ops`: the operators ``harness::sequence_forward``/``sequence_backward`` (the loop over
  time in C, its small recurrent products through torch's own BLAS) and the differentiable entry
  point :func:`sequence`, which the built-in models use for a whole sequence where they can.
- :mod:`.ops`: the torch operators ``harness::peephole_step``, ``harness::cifg_step`` and their
  backward operators, and the differentiable entry points :func:`peephole_step` and
  :func:`cifg_step`, which check their inputs.

Importing this package registers the operators but loads nothing: the library is built or loaded
on the first fused step, sequence or :func:`implementation` query (the built-in models import it
only then), so a process that runs none of them, or only on CUDA, never touches it.
``HARNESS_FUSED=0`` (or no C compiler, a failed build, a non-CPU tensor, a dtype other than
float32/float64, TorchScript) and the cells run their eager equations, and the ``torch.nn`` models
their modules, instead; those remain the reference (``tests/test_cells.py`` and
``tests/test_sequence_kernels.py`` compare them).
"""

from harness.plugins.kernels.build import KernelsUnavailable, cache_dir, loaded, openmp_runtimes, reset, status
from harness.plugins.kernels.ops import cifg_step, implementation, peephole_step, unsupported, usable
from harness.plugins.kernels.sequence_ops import blas, sequence

__all__ = ["KernelsUnavailable", "blas", "cache_dir", "cifg_step", "implementation", "loaded", "openmp_runtimes",
           "peephole_step", "reset", "sequence", "status", "unsupported", "usable"]

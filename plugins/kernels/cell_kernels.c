/* Fused CPU kernels of the built-in cells: the pointwise step of the peephole-LSTM and CIFG cells
   (cell_kernels.h), the whole-sequence loops of the rnn, GRU, peephole, CIFG and sLSTM cells
   (sequence_kernels.h), and the diagonal and selective scans of the modern recurrent models
   (scan_kernels.h), forward and backward: one library.

   Built by harness.plugins.kernels.build with the system C compiler on first use and loaded with
   ctypes; called from harness.plugins.kernels.ops (torch custom ops "harness::*"). No torch
   headers: the build takes about a second.

   The kernels live in the three headers, included here once per precision with REAL (the element
   type), SUFFIX (the name suffix: f32, f64) and IS_FLOAT (1 for float: use the vectorisable
   polynomial exp/tanh below; 0: libm) defined. Every exported symbol is NAME_SUFFIX, e.g.
   peephole_forward_f32. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever an exported signature changes; checked by the loader after dlopen. */
#define HARNESS_CELL_KERNELS_ABI 6
int harness_cell_kernels_abi(void) { return HARNESS_CELL_KERNELS_ABI; }

/* The exported kernels split the batch rows between the threads of the OpenMP runtime torch
   itself uses (the loader builds with -fopenmp only where the process already has torch's
   libgomp.so.1 mapped, so the library links that one), so torch.set_num_threads applies and
   nothing is oversubscribed; small batches, one thread, or a build without OpenMP: one pass.
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

/* The small recurrent products of the sequence kernels go through a Fortran BLAS gemm (LP64: int
   sizes) that the loader hands over after loading: torch's own MKL sgemm_/dgemm_, resolved from
   the torch library already in the process, so no BLAS is linked here. Without one (NULL), a plain
   C loop computes them. */
typedef void (*harness_sgemm_t)(const char *, const char *, const int *, const int *, const int *,
                                const float *, const float *, const int *, const float *, const int *,
                                const float *, float *, const int *);
typedef void (*harness_dgemm_t)(const char *, const char *, const int *, const int *, const int *,
                                const double *, const double *, const int *, const double *, const int *,
                                const double *, double *, const int *);
static harness_sgemm_t blas_sgemm = NULL;
static harness_dgemm_t blas_dgemm = NULL;
void harness_set_blas(void *sgemm, void *dgemm) {
    blas_sgemm = (harness_sgemm_t)sgemm;
    blas_dgemm = (harness_dgemm_t)dgemm;
}

/* NAME -> NAME_SUFFIX (two levels so that SUFFIX is expanded first) */
#define KERNEL_CAT_(name, suffix) name##_##suffix
#define KERNEL_CAT(name, suffix) KERNEL_CAT_(name, suffix)
#define FN(name) KERNEL_CAT(name, SUFFIX)

#define REAL float
#define SUFFIX f32
#define IS_FLOAT 1
#include "cell_kernels.h"
#include "sequence_kernels.h"
#include "scan_kernels.h"
#undef REAL
#undef SUFFIX
#undef IS_FLOAT

#define REAL double
#define SUFFIX f64
#define IS_FLOAT 0
#include "cell_kernels.h"
#include "sequence_kernels.h"
#include "scan_kernels.h"
#undef REAL
#undef SUFFIX
#undef IS_FLOAT

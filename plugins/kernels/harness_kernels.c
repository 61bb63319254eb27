/* The one kernel library the loader builds: the cell kernels (cell_kernels.c, with its helpers and
   the ABI number) and, after them, the diagonal and selective scans of the modern recurrent models
   (scan_kernels.h), once per precision. Kept in a separate file so that the scans add to the cell
   kernels without editing them. */

#include "cell_kernels.c"

#define REAL float
#define SUFFIX f32
#define IS_FLOAT 1
#include "scan_kernels.h"
#undef REAL
#undef SUFFIX
#undef IS_FLOAT

#define REAL double
#define SUFFIX f64
#define IS_FLOAT 0
#include "scan_kernels.h"
#undef REAL
#undef SUFFIX
#undef IS_FLOAT

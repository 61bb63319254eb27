/* The kernels of one precision. Included by cell_kernels.c twice on purpose (so no include
   guard): once with REAL float / SUFFIX f32 / IS_FLOAT 1, once with REAL double / SUFFIX f64 /
   IS_FLOAT 0. FN(name) is name_SUFFIX.

   Layout: every tensor is row-major and contiguous; B rows (batch), H columns per block.
   gates G: (B, 4H) peephole [i, f, g, o] or (B, 3H) CIFG [i, g, o]; cell state C: (B, H);
   peephole weights P: (3, H) [p_i, p_f, p_o]. The caller (harness.plugins.kernels.ops) checks
   every shape, dtype and contiguity before calling: nothing here checks bounds. */

/* ---- activations ------------------------------------------------------------------------ */
#if IS_FLOAT
static inline REAL FN(xexp)(REAL x) {
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
static inline REAL FN(xtanh)(REAL x) {
    /* Cephes tanhf: an odd polynomial near zero, 1 - 2 / (exp(2x) + 1) elsewhere. */
    float z = x * x;
    float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
                    + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
    float large = 1.0f - 2.0f / (FN(xexp)(2.0f * x) + 1.0f);
    return fabsf(x) < 0.625f ? small : large;
}
/* log(1 + u) for u in [0, 1] (the sLSTM's log-sigmoid): Cephes logf's polynomial on 1 + u written as
   2^e (1 + x), x in [−0.293, 0.414], without branches; x = u itself below √2 − 1, so small u keep
   their precision. */
static inline REAL FN(xlog1p_unit)(REAL u) {
    int big = u > 0.41421356237f;
    float x = big ? 0.5f * u - 0.5f : u, e = big ? 1.0f : 0.0f;
    float z = x * x;
    float y = ((((((((7.0376836292E-2f * x - 1.1514610310E-1f) * x + 1.1676998740E-1f) * x - 1.2420140846E-1f) * x
                   + 1.4249322787E-1f) * x - 1.6668057665E-1f) * x + 2.0000714765E-1f) * x - 2.4999993993E-1f) * x
              + 3.3333331174E-1f) * x * z;
    y += -2.12194440e-4f * e - 0.5f * z;
    return x + y + 0.693359375f * e;
}
#else
static inline REAL FN(xexp)(REAL x) { return exp(x); }
static inline REAL FN(xtanh)(REAL x) { return tanh(x); }
static inline REAL FN(xlog1p_unit)(REAL u) { return log1p(u); }
#endif
static inline REAL FN(xsigmoid)(REAL x) { return (REAL)1 / ((REAL)1 + FN(xexp)(-x)); }

/* ---- peephole LSTM: gates i, f, g, o; i, f see c_{t-1}, o sees c_t ---------------------- */
/* S (activations, kept for backward): [i, f, g, o, tanh(c)] per row, 5H wide. */
ROWS FN(peephole_forward_rows)(int64_t b0, int64_t b1, int64_t H, const REAL *restrict G,
                               const REAL *restrict C, const REAL *restrict P,
                               REAL *restrict Hout, REAL *restrict Cout, REAL *restrict S) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *g = G + b * 4 * H;
        const REAL *cp = C + b * H;
        REAL *h = Hout + b * H, *c = Cout + b * H;
        REAL *s = S + b * 5 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = FN(xsigmoid)(g[j] + P[j] * cp[j]);
            REAL f = FN(xsigmoid)(g[H + j] + P[H + j] * cp[j]);
            REAL gg = FN(xtanh)(g[2 * H + j]);
            REAL cn = f * cp[j] + i * gg;
            REAL o = FN(xsigmoid)(g[3 * H + j] + P[2 * H + j] * cn);
            REAL tc = FN(xtanh)(cn);
            c[j] = cn;
            h[j] = o * tc;
            s[j] = i; s[H + j] = f; s[2 * H + j] = gg; s[3 * H + j] = o; s[4 * H + j] = tc;
        }
    }
}

void FN(peephole_forward)(int64_t B, int64_t H, const REAL *G, const REAL *C, const REAL *P,
                          REAL *Hout, REAL *Cout, REAL *S) {
    FOR_ROW_BLOCKS(B, H, FN(peephole_forward_rows)(b0, b1, H, G, C, P, Hout, Cout, S));
}

ROWS FN(peephole_backward_rows)(int64_t b0, int64_t b1, int64_t H, const REAL *restrict dH,
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

/* dP += the peephole-weight gradient of rows b0..b1 (a reduction over rows, vectorised over j) */
ROWS FN(peephole_grad_p)(int64_t b0, int64_t b1, int64_t H, const REAL *restrict dG,
                         const REAL *restrict C, const REAL *restrict Cn, REAL *restrict dP) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *dg = dG + b * 4 * H, *cp = C + b * H, *cn = Cn + b * H;
        for (int64_t j = 0; j < H; j++) {
            dP[j] += dg[j] * cp[j];
            dP[H + j] += dg[H + j] * cp[j];
            dP[2 * H + j] += dg[3 * H + j] * cn[j];
        }
    }
}

/* dP (3H, accumulated into) may be NULL (not needed). With several threads, each reduces the rows
   it has just written (still in its cache) into its own partial sum, and the partial sums are
   then added in thread order, so the result does not depend on scheduling. */
void FN(peephole_backward)(int64_t B, int64_t H, const REAL *dH, const REAL *dCn, const REAL *S,
                           const REAL *C, const REAL *Cn, const REAL *P, REAL *dG, REAL *dC,
                           REAL *dP) {
#ifdef _OPENMP
    int64_t n = omp_get_max_threads();
    if (B * H >= 8192 && n > 1) {
        REAL *partial = dP ? (REAL *)calloc((size_t)(n * 3 * H), sizeof(REAL)) : NULL;
        _Pragma("omp parallel num_threads(n)")
        {
            int64_t n_ = omp_get_num_threads(), t_ = omp_get_thread_num();
            int64_t b0 = B * t_ / n_, b1 = B * (t_ + 1) / n_;
            FN(peephole_backward_rows)(b0, b1, H, dH, dCn, S, C, P, dG, dC);
            if (partial) FN(peephole_grad_p)(b0, b1, H, dG, C, Cn, partial + t_ * 3 * H);
        }
        if (partial) {
            for (int64_t t = 0; t < n; t++)
                for (int64_t k = 0; k < 3 * H; k++) dP[k] += partial[t * 3 * H + k];
            free(partial);
        } else if (dP) {  /* out of memory for the partial sums: one thread */
            FN(peephole_grad_p)(0, B, H, dG, C, Cn, dP);
        }
        return;
    }
#endif
    FN(peephole_backward_rows)(0, B, H, dH, dCn, S, C, P, dG, dC);
    if (dP) FN(peephole_grad_p)(0, B, H, dG, C, Cn, dP);
}

/* ---- CIFG: gates i, g, o; f = 1 - i ------------------------------------------------------ */
/* S (activations, kept for backward): [i, g, o, tanh(c)] per row, 4H wide. */
ROWS FN(cifg_forward_rows)(int64_t b0, int64_t b1, int64_t H, const REAL *restrict G,
                           const REAL *restrict C, REAL *restrict Hout, REAL *restrict Cout,
                           REAL *restrict S) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *g = G + b * 3 * H;
        const REAL *cp = C + b * H;
        REAL *h = Hout + b * H, *c = Cout + b * H;
        REAL *s = S + b * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL i = FN(xsigmoid)(g[j]);
            REAL gg = FN(xtanh)(g[H + j]);
            REAL o = FN(xsigmoid)(g[2 * H + j]);
            REAL cn = cp[j] + i * (gg - cp[j]);
            REAL tc = FN(xtanh)(cn);
            c[j] = cn;
            h[j] = o * tc;
            s[j] = i; s[H + j] = gg; s[2 * H + j] = o; s[3 * H + j] = tc;
        }
    }
}

void FN(cifg_forward)(int64_t B, int64_t H, const REAL *G, const REAL *C, REAL *Hout,
                      REAL *Cout, REAL *S) {
    FOR_ROW_BLOCKS(B, H, FN(cifg_forward_rows)(b0, b1, H, G, C, Hout, Cout, S));
}

ROWS FN(cifg_backward_rows)(int64_t b0, int64_t b1, int64_t H, const REAL *restrict dH,
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

void FN(cifg_backward)(int64_t B, int64_t H, const REAL *dH, const REAL *dCn, const REAL *S,
                       const REAL *C, REAL *dG, REAL *dC) {
    FOR_ROW_BLOCKS(B, H, FN(cifg_backward_rows)(b0, b1, H, dH, dCn, S, C, dG, dC));
}

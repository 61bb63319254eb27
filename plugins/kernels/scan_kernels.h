/* Diagonal linear recurrences of one precision, forward and backward: the generic one of minGRU, minLSTM
   and the LRU, h_t = a_t * h_{t-1} + b_t elementwise (real, or complex as interleaved (re, im) pairs, the
   layout of torch.view_as_real), and the selective scan of Mamba's S6. Included by cell_kernels.c once
   per precision after cell_kernels.h (whose FN(xexp) the selective scan uses), so no include guard.

   Layout: batch-first and contiguous, as the models hold their tensors: a, b, h, grads (B, T, N) with N
   reals (2N for N complex states); the initial state h0 (B, N). The caller (harness.plugins.kernels.scan_ops)
   checks every extent, dtype and contiguity: nothing here checks bounds. Batch rows are independent, so
   FOR_ROW_BLOCKS splits them between torch's OpenMP threads. NaN and inf propagate (no fast-math). */

/* ---- real diagonal recurrence ---------------------------------------------------------------- */
ROWS FN(diag_rows_forward)(int64_t b0, int64_t b1, int64_t T, int64_t N, const REAL *A, const REAL *Bv,
                           const REAL *H0, REAL *Hout) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *prev = H0 + b * N;
        for (int64_t t = 0; t < T; t++) {
            int64_t o = (b * T + t) * N;
            const REAL *restrict a = A + o, *restrict x = Bv + o;
            REAL *restrict h = Hout + o;
            for (int64_t n = 0; n < N; n++) h[n] = a[n] * prev[n] + x[n];
            prev = h;
        }
    }
}

/* h_t = a_t * h_{t-1} + b_t for t < T from h0; writes every h_t. */
void FN(diagonal_scan_forward)(int64_t T, int64_t B, int64_t N, const REAL *A, const REAL *Bv, const REAL *H0,
                               REAL *Hout) {
    FOR_ROW_BLOCKS(B, T * N, FN(diag_rows_forward)(b0, b1, T, N, A, Bv, H0, Hout));
}

/* g_t = dL/dh_t (from the outputs) + a_{t+1} g_{t+1}; dA_t = g_t h_{t-1}; dB_t = g_t; dH0 = a_0 g_0.
   GB holds g_t (= dB); G is one row of scratch per batch row (the carried a_{t+1} g_{t+1}). */
ROWS FN(diag_rows_backward)(int64_t b0, int64_t b1, int64_t T, int64_t N, const REAL *A, const REAL *H0,
                            const REAL *Hout, const REAL *GH, REAL *GA, REAL *GB, REAL *GH0) {
    for (int64_t b = b0; b < b1; b++) {
        REAL *restrict carry = GH0 + b * N;  /* a_{t+1} g_{t+1}; ends as dL/dh0 */
        for (int64_t n = 0; n < N; n++) carry[n] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t o = (b * T + t) * N;
            const REAL *restrict a = A + o, *restrict gh = GH + o;
            const REAL *restrict prev = t ? Hout + o - N : H0 + b * N;
            REAL *restrict ga = GA + o, *restrict gb = GB + o;
            for (int64_t n = 0; n < N; n++) {
                REAL g = gh[n] + carry[n];
                gb[n] = g;
                ga[n] = g * prev[n];
                carry[n] = a[n] * g;
            }
        }
    }
}

void FN(diagonal_scan_backward)(int64_t T, int64_t B, int64_t N, const REAL *A, const REAL *H0, const REAL *Hout,
                                const REAL *GH, REAL *GA, REAL *GB, REAL *GH0) {
    FOR_ROW_BLOCKS(B, T * N, FN(diag_rows_backward)(b0, b1, T, N, A, H0, Hout, GH, GA, GB, GH0));
}

/* ---- complex diagonal recurrence: N complex states as 2N reals (re, im) ------------------------- */
ROWS FN(complex_rows_forward)(int64_t b0, int64_t b1, int64_t T, int64_t N, const REAL *A, const REAL *Bv,
                              const REAL *H0, REAL *Hout) {
    for (int64_t b = b0; b < b1; b++) {
        const REAL *prev = H0 + b * 2 * N;
        for (int64_t t = 0; t < T; t++) {
            int64_t o = (b * T + t) * 2 * N;
            const REAL *restrict a = A + o, *restrict x = Bv + o;
            REAL *restrict h = Hout + o;
            for (int64_t n = 0; n < N; n++) {
                REAL ar = a[2 * n], ai = a[2 * n + 1], pr = prev[2 * n], pi = prev[2 * n + 1];
                h[2 * n] = ar * pr - ai * pi + x[2 * n];
                h[2 * n + 1] = ar * pi + ai * pr + x[2 * n + 1];
            }
            prev = h;
        }
    }
}

void FN(complex_scan_forward)(int64_t T, int64_t B, int64_t N, const REAL *A, const REAL *Bv, const REAL *H0,
                              REAL *Hout) {
    FOR_ROW_BLOCKS(B, T * N, FN(complex_rows_forward)(b0, b1, T, N, A, Bv, H0, Hout));
}

/* torch's convention for complex gradients (the conjugate Wirtinger derivative): for h = a p + b,
   dp = conj(a) g and da = g conj(p); so g_t = dL/dh_t + conj(a_{t+1}) g_{t+1}, dA_t = g_t conj(h_{t-1}). */
ROWS FN(complex_rows_backward)(int64_t b0, int64_t b1, int64_t T, int64_t N, const REAL *A, const REAL *H0,
                               const REAL *Hout, const REAL *GH, REAL *GA, REAL *GB, REAL *GH0) {
    for (int64_t b = b0; b < b1; b++) {
        REAL *restrict carry = GH0 + b * 2 * N;
        for (int64_t n = 0; n < 2 * N; n++) carry[n] = 0;
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t o = (b * T + t) * 2 * N;
            const REAL *restrict a = A + o, *restrict gh = GH + o;
            const REAL *restrict prev = t ? Hout + o - 2 * N : H0 + b * 2 * N;
            REAL *restrict ga = GA + o, *restrict gb = GB + o;
            for (int64_t n = 0; n < N; n++) {
                REAL gr = gh[2 * n] + carry[2 * n], gi = gh[2 * n + 1] + carry[2 * n + 1];
                REAL ar = a[2 * n], ai = a[2 * n + 1], pr = prev[2 * n], pi = prev[2 * n + 1];
                gb[2 * n] = gr;
                gb[2 * n + 1] = gi;
                ga[2 * n] = gr * pr + gi * pi;      /* g conj(p) */
                ga[2 * n + 1] = gi * pr - gr * pi;
                carry[2 * n] = ar * gr + ai * gi;   /* conj(a) g */
                carry[2 * n + 1] = ar * gi - ai * gr;
            }
        }
    }
}

void FN(complex_scan_backward)(int64_t T, int64_t B, int64_t N, const REAL *A, const REAL *H0, const REAL *Hout,
                               const REAL *GH, REAL *GA, REAL *GB, REAL *GH0) {
    FOR_ROW_BLOCKS(B, T * N, FN(complex_rows_backward)(b0, b1, T, N, A, H0, Hout, GH, GA, GB, GH0));
}

/* ---- selective scan (Mamba's S6) -------------------------------------------------------------------
   Per batch row, channel d < D and state n < N: h_t[d,n] = exp(dt_t[d] A[d,n]) h_{t-1}[d,n]
   + dt_t[d] x_t[d] Bs_t[n] from h_{-1} = 0, and y_t[d] = sum_n Cs_t[n] h_t[d,n]. Layout: dt, x, y, dy
   (B, T, D); A (D, N); Bs, Cs (B, T, N). The (B, T, D, N) states are never stored: forward keeps h at
   the start of every chunk of K steps, CK (B, ceil(T/K), D, N), and backward recomputes each chunk's
   states from its checkpoint into W (per batch row K * D * N reals of scratch), then runs the chunk
   backwards. dA is written per batch row, GA (B, D, N), and summed by the caller. */

/* h (D*N) <- one step t of row b; returns nothing; the step's decay is recomputed, never stored */
static inline void FN(s6_step)(int64_t D, int64_t N, const REAL *restrict dt, const REAL *restrict x,
                               const REAL *restrict Ar, const REAL *restrict bs, const REAL *prev, REAL *h) {
    for (int64_t d = 0; d < D; d++) {
        REAL delta = dt[d], drive = dt[d] * x[d];
        const REAL *restrict a = Ar + d * N;
        const REAL *p = prev + d * N;  /* may equal q (the forward pass updates in place) */
        REAL *q = h + d * N;
        for (int64_t n = 0; n < N; n++) q[n] = FN(xexp)(delta * a[n]) * p[n] + drive * bs[n];
    }
}

/* as s6_step, also storing each decay exp(dt A) in E (D*N) for backward, which then needs no exp */
static inline void FN(s6_step_keep)(int64_t D, int64_t N, const REAL *restrict dt, const REAL *restrict x,
                                    const REAL *restrict Ar, const REAL *restrict bs, const REAL *restrict prev,
                                    REAL *restrict h, REAL *restrict E) {
    for (int64_t d = 0; d < D; d++) {
        REAL delta = dt[d], drive = dt[d] * x[d];
        const REAL *restrict a = Ar + d * N, *restrict p = prev + d * N;
        REAL *restrict q = h + d * N, *restrict e = E + d * N;
        for (int64_t n = 0; n < N; n++) {
            e[n] = FN(xexp)(delta * a[n]);
            q[n] = e[n] * p[n] + drive * bs[n];
        }
    }
}

ROWS FN(s6_rows_forward)(int64_t b0, int64_t b1, int64_t T, int64_t D, int64_t N, int64_t K, const REAL *DT,
                         const REAL *Ar, const REAL *Bs, const REAL *Cs, const REAL *X, REAL *Y, REAL *CK, REAL *S) {
    int64_t chunks = (T + K - 1) / K, DN = D * N;
    for (int64_t b = b0; b < b1; b++) {
        REAL *h = S + b * DN;  /* one state per batch row, updated in place */
        for (int64_t i = 0; i < DN; i++) h[i] = 0;
        for (int64_t t = 0; t < T; t++) {
            if (t % K == 0) memcpy(CK + (b * chunks + t / K) * DN, h, (size_t)DN * sizeof(REAL));
            int64_t row = b * T + t;
            FN(s6_step)(D, N, DT + row * D, X + row * D, Ar, Bs + row * N, h, h);
            const REAL *restrict c = Cs + row * N;
            REAL *restrict y = Y + row * D;
            for (int64_t d = 0; d < D; d++) {
                const REAL *restrict q = h + d * N;
                REAL s = 0;
                for (int64_t n = 0; n < N; n++) s += c[n] * q[n];
                y[d] = s;
            }
        }
    }
}

/* S: (B, D*N) scratch. */
void FN(selective_scan_forward)(int64_t T, int64_t B, int64_t D, int64_t N, int64_t K, const REAL *DT,
                                const REAL *Ar, const REAL *Bs, const REAL *Cs, const REAL *X, REAL *Y, REAL *CK,
                                REAL *S) {
    FOR_ROW_BLOCKS(B, T * D, FN(s6_rows_forward)(b0, b1, T, D, N, K, DT, Ar, Bs, Cs, X, Y, CK, S));
}

/* sum of v[0..n) in 16 independent lanes: the compiler may vectorise that (a plain running sum it may not
   reorder without fast-math), and the result does not depend on the machine */
static inline REAL FN(lane_sum)(const REAL *v, int64_t n) {
    REAL lane[16] = {0}, s = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) lane[k] += v[i + k];
    for (; i < n; i++) s += v[i];
    for (int k = 0; k < 16; k++) s += lane[k];
    return s;
}

/* One step t and channel d of backward, elementwise over the states n (so that it vectorises): from
   g = a_{t+1} g_{t+1}, makes g = dL/dh_t, then a_t g for the step before; accumulates dC_t, dB_t, dA;
   leaves the terms of dL/d(dt_t[d] A) A and dL/d(dt_t[d] x_t[d]) in tdelta and tdrive (to be summed). */
static void FN(s6_back_channel)(int64_t N, REAL delta, REAL drive, REAL dy, const REAL *restrict a,
                                const REAL *restrict e, const REAL *restrict q, const REAL *restrict p,
                                const REAL *restrict cs,
                                const REAL *restrict bs, REAL *restrict g, REAL *restrict gad, REAL *restrict gcs,
                                REAL *restrict gbs, REAL *restrict tdelta, REAL *restrict tdrive) {
    for (int64_t n = 0; n < N; n++) {
        REAL decay = e[n];
        REAL gn = dy * cs[n] + g[n];      /* dL/dh_t */
        REAL gdecay = gn * p[n] * decay;  /* dL/d(dt A) */
        gcs[n] += dy * q[n];
        tdelta[n] = gdecay * a[n];
        gad[n] += gdecay * delta;
        tdrive[n] = gn * bs[n];
        gbs[n] += gn * drive;
        g[n] = decay * gn;
    }
}

/* Outputs: GDT, GX (B, T, D); GBs, GCs (B, T, N); GA (B, D, N). Scratch per row b: W + b * ((2K + 1) * D*N
   + 2N) holds the chunk's states (K rows), their decays (K rows), the carried gradient, then two rows of
   N temporaries. */
ROWS FN(s6_rows_backward)(int64_t b0, int64_t b1, int64_t T, int64_t D, int64_t N, int64_t K, const REAL *DT,
                          const REAL *Ar, const REAL *Bs, const REAL *Cs, const REAL *X, const REAL *CK,
                          const REAL *GY, REAL *GDT, REAL *GAr, REAL *GBs, REAL *GCs, REAL *GX, REAL *W) {
    int64_t chunks = (T + K - 1) / K, DN = D * N;
    for (int64_t b = b0; b < b1; b++) {
        REAL *states = W + b * ((2 * K + 1) * DN + 2 * N), *decays = states + K * DN;
        REAL *carry = decays + K * DN;  /* a_{t+1} g_{t+1} */
        REAL *tdelta = carry + DN, *tdrive = tdelta + N;
        REAL *ga = GAr + b * DN;
        for (int64_t i = 0; i < DN; i++) carry[i] = ga[i] = 0;
        for (int64_t c = chunks - 1; c >= 0; c--) {
            int64_t t0 = c * K, t1 = t0 + K < T ? t0 + K : T;
            const REAL *h0 = CK + (b * chunks + c) * DN;
            for (int64_t t = t0; t < t1; t++) {  /* recompute the chunk's states */
                int64_t row = b * T + t;
                FN(s6_step_keep)(D, N, DT + row * D, X + row * D, Ar, Bs + row * N,
                                 t > t0 ? states + (t - t0 - 1) * DN : h0, states + (t - t0) * DN,
                                 decays + (t - t0) * DN);
            }
            for (int64_t t = t1 - 1; t >= t0; t--) {
                int64_t row = b * T + t;
                const REAL *h = states + (t - t0) * DN, *prev = t > t0 ? h - DN : h0;
                const REAL *bs = Bs + row * N, *cs = Cs + row * N;
                const REAL *dt = DT + row * D, *x = X + row * D, *gy = GY + row * D;
                REAL *gbs = GBs + row * N, *gcs = GCs + row * N;
                for (int64_t n = 0; n < N; n++) gbs[n] = gcs[n] = 0;
                for (int64_t d = 0; d < D; d++) {
                    const REAL *a = Ar + d * N, *q = h + d * N, *p = prev + d * N;
                    REAL *g = carry + d * N, *gad = ga + d * N;
                    REAL delta = dt[d], drive = delta * x[d], dy = gy[d];
                    FN(s6_back_channel)(N, delta, drive, dy, a, decays + (t - t0) * DN + d * N, q, p, cs, bs, g, gad,
                                        gcs, gbs, tdelta, tdrive);
                    REAL g_delta = FN(lane_sum)(tdelta, N), g_drive = FN(lane_sum)(tdrive, N);
                    GDT[row * D + d] = g_delta + g_drive * x[d];
                    GX[row * D + d] = g_drive * delta;
                }
            }
        }
    }
}

/* W: (B, (2K + 1) * D * N + 2 * N) scratch. */
void FN(selective_scan_backward)(int64_t T, int64_t B, int64_t D, int64_t N, int64_t K, const REAL *DT,
                                 const REAL *Ar, const REAL *Bs, const REAL *Cs, const REAL *X, const REAL *CK,
                                 const REAL *GY, REAL *GDT, REAL *GAr, REAL *GBs, REAL *GCs, REAL *GX, REAL *W) {
    FOR_ROW_BLOCKS(B, T * D, FN(s6_rows_backward)(b0, b1, T, D, N, K, DT, Ar, Bs, Cs, X, CK, GY, GDT, GAr, GBs,
                                                  GCs, GX, W));
}

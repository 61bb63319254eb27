/* Whole-sequence kernels of one precision: the loop over time of the rnn, GRU, peephole-LSTM and
   CIFG cells, forward and backward, in C. Included by cell_kernels.c once per precision (after
   cell_kernels.h, whose row functions the LSTM-type cells reuse), so no include guard.

   Layout: time-major and contiguous. T steps, B rows, H units, G gate blocks (rnn 1, GRU 3 [r, z, n],
   peephole 4 [i, f, g, o], CIFG 3 [i, g, o]).
   - X (T, B, G*H): the input-side pre-activations W_ih x_t + b_ih (+ b_hh, except for the GRU), made
     by the caller with one large GEMM. The LSTM-type cells and the rnn add h_{t-1} W_hh^T to it in
     place, so on return it holds the full pre-activations (the caller's scratch).
   - W (G*H, H): W_hh; bhh (G*H): b_hh (read by the GRU only). P (3, H): peephole weights.
   - Hout, Cout (T, B, H): the states h_t, c_t; S (T, B, k*H): what backward needs per step.
   - dHout (T, B, H): dL/dh_t from the outputs; dX (T, B, G*H): dL/d(input-side pre-activations);
     dR (T, B, G*H): dL/d(recurrent-side pre-activations), the GRU only (the others: equal to dX).
   The initial state is zero. The caller (harness.plugins.kernels.sequence_ops) checks every extent. */

#if IS_FLOAT
#define BLAS_GEMM blas_sgemm
#else
#define BLAS_GEMM blas_dgemm
#endif

/* R (B x N) += A (B x K) . W^T, W (N x K): the recurrent product of the forward pass. */
static void FN(gemm_abt)(int64_t B, int64_t N, int64_t K, const REAL *A, const REAL *W, REAL *R) {
    if (BLAS_GEMM) {
        int n = (int)N, m = (int)B, k = (int)K;
        REAL one = 1;
        /* column-major view: R^T (N x B) += W (op 'T' of W^T stored as K x N) . A^T (K x B) */
        BLAS_GEMM("T", "N", &n, &m, &k, &one, W, &k, A, &k, &one, R, &n);
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        REAL *r = R + b * N;
        const REAL *a = A + b * K;
        for (int64_t j = 0; j < N; j++) {
            const REAL *w = W + j * K;
            REAL s = 0;
            for (int64_t k = 0; k < K; k++) s += a[k] * w[k];
            r[j] += s;
        }
    }
}

/* D (B x K) += R (B x N) . W, W (N x K): the recurrent product of the backward pass. */
static void FN(gemm_ab)(int64_t B, int64_t N, int64_t K, const REAL *R, const REAL *W, REAL *D) {
    if (BLAS_GEMM) {
        int n = (int)N, m = (int)B, k = (int)K;
        REAL one = 1;
        /* column-major view: D^T (K x B) += W^T (K x N, stored as such) . R^T (N x B) */
        BLAS_GEMM("N", "N", &k, &m, &n, &one, W, &k, R, &n, &one, D, &k);
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        REAL *restrict d = D + b * K;
        const REAL *r = R + b * N;
        for (int64_t j = 0; j < N; j++) {
            const REAL *restrict w = W + j * K;
            REAL s = r[j];
            for (int64_t k = 0; k < K; k++) d[k] += s * w[k];
        }
    }
}

/* ---- rnn: h_t = tanh(x-side + h_{t-1} W^T + b) -------------------------------------------- */
ROWS FN(rnn_forward_rows)(int64_t n, const REAL *restrict g, REAL *restrict h) {
    for (int64_t j = 0; j < n; j++) h[j] = FN(xtanh)(g[j]);
}

void FN(rnn_sequence_forward)(int64_t T, int64_t B, int64_t H, REAL *X, const REAL *W, REAL *Hout) {
    int64_t n = B * H;
    for (int64_t t = 0; t < T; t++) {
        REAL *g = X + t * n;
        if (t > 0) FN(gemm_abt)(B, H, H, Hout + (t - 1) * n, W, g);
        FN(rnn_forward_rows)(n, g, Hout + t * n);
    }
}

ROWS FN(rnn_backward_rows)(int64_t n, const REAL *restrict dh, const REAL *restrict h, REAL *restrict dg) {
    for (int64_t j = 0; j < n; j++) dg[j] = dh[j] * ((REAL)1 - h[j] * h[j]);
}

/* D (B x H): scratch for dL/dh_t (from the output and from step t+1). */
void FN(rnn_sequence_backward)(int64_t T, int64_t B, int64_t H, const REAL *dHout, const REAL *Hout,
                               const REAL *W, REAL *dX, REAL *D) {
    int64_t n = B * H;
    memcpy(D, dHout + (T - 1) * n, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * n;
        FN(rnn_backward_rows)(n, D, Hout + t * n, dg);
        if (t > 0) {
            memcpy(D, dHout + (t - 1) * n, (size_t)n * sizeof(REAL));
            FN(gemm_ab)(B, H, H, dg, W, D);
        }
    }
}

/* ---- GRU (torch.nn.GRU): r, z, n; the reset gate multiplies (W_hn h + b_hn) ------------------ */
/* S per step: [r, z, n, W_hn h + b_hn], 4H wide. */
ROWS FN(gru_forward_rows)(int64_t B, int64_t H, const REAL *restrict X, const REAL *restrict R,
                          const REAL *restrict hp, REAL *restrict h, REAL *restrict S) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *x = X + b * 3 * H, *r = R + b * 3 * H, *p = hp ? hp + b * H : NULL;
        REAL *o = h + b * H, *s = S + b * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL rg = FN(xsigmoid)(x[j] + r[j]);
            REAL zg = FN(xsigmoid)(x[H + j] + r[H + j]);
            REAL ng = FN(xtanh)(x[2 * H + j] + rg * r[2 * H + j]);
            o[j] = ((REAL)1 - zg) * ng + zg * (p ? p[j] : (REAL)0);
            s[j] = rg; s[H + j] = zg; s[2 * H + j] = ng; s[3 * H + j] = r[2 * H + j];
        }
    }
}

/* R (B x 3H): scratch for the recurrent pre-activations of one step. */
void FN(gru_sequence_forward)(int64_t T, int64_t B, int64_t H, const REAL *X, const REAL *W,
                              const REAL *bhh, REAL *Hout, REAL *S, REAL *R) {
    int64_t n = B * H;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t b = 0; b < B; b++) memcpy(R + b * 3 * H, bhh, (size_t)(3 * H) * sizeof(REAL));
        const REAL *hp = t > 0 ? Hout + (t - 1) * n : NULL;
        if (hp) FN(gemm_abt)(B, 3 * H, H, hp, W, R);
        FN(gru_forward_rows)(B, H, X + t * 3 * n, R, hp, Hout + t * n, S + t * 4 * n);
    }
}

/* dh (in): dL/dh_t; writes dx, dr (the step's pre-activation gradients) and dp = dL/dh_{t-1} through z. */
ROWS FN(gru_backward_rows)(int64_t B, int64_t H, const REAL *restrict dH, const REAL *restrict S,
                           const REAL *restrict hp, REAL *restrict dx, REAL *restrict dr, REAL *restrict dp) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *dh = dH + b * H, *s = S + b * 4 * H, *p = hp ? hp + b * H : NULL;
        REAL *x = dx + b * 3 * H, *r = dr + b * 3 * H, *d = dp + b * H;
        for (int64_t j = 0; j < H; j++) {
            REAL rg = s[j], zg = s[H + j], ng = s[2 * H + j], rn = s[3 * H + j];
            REAL hprev = p ? p[j] : (REAL)0;
            REAL dn = dh[j] * ((REAL)1 - zg) * ((REAL)1 - ng * ng);
            REAL dz = dh[j] * (hprev - ng) * zg * ((REAL)1 - zg);
            REAL drg = dn * rn * rg * ((REAL)1 - rg);
            x[j] = drg; x[H + j] = dz; x[2 * H + j] = dn;
            r[j] = drg; r[H + j] = dz; r[2 * H + j] = dn * rg;
            d[j] = dh[j] * zg;
        }
    }
}

/* D, E (B x H): scratch for dL/dh_t and dL/dh_{t-1}. */
void FN(gru_sequence_backward)(int64_t T, int64_t B, int64_t H, const REAL *dHout, const REAL *Hout,
                               const REAL *S, const REAL *W, REAL *dX, REAL *dR, REAL *D, REAL *E) {
    int64_t n = B * H;
    memcpy(D, dHout + (T - 1) * n, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dr = dR + t * 3 * n;
        FN(gru_backward_rows)(B, H, D, S + t * 4 * n, t > 0 ? Hout + (t - 1) * n : NULL, dX + t * 3 * n, dr, E);
        if (t > 0) {
            const REAL *up = dHout + (t - 1) * n;
            for (int64_t j = 0; j < n; j++) D[j] = E[j] + up[j];
            FN(gemm_ab)(B, 3 * H, H, dr, W, D);
        }
    }
}

/* ---- LSTM-type cells: the step kernels of cell_kernels.h inside a loop over time ------------- */
/* Z (B x H): a zero state for t = 0. */
void FN(peephole_sequence_forward)(int64_t T, int64_t B, int64_t H, REAL *X, const REAL *W, const REAL *P,
                                   REAL *Hout, REAL *Cout, REAL *S, const REAL *Z) {
    int64_t n = B * H;
    for (int64_t t = 0; t < T; t++) {
        REAL *g = X + t * 4 * n;
        if (t > 0) FN(gemm_abt)(B, 4 * H, H, Hout + (t - 1) * n, W, g);
        FN(peephole_forward)(B, H, g, t > 0 ? Cout + (t - 1) * n : Z, P, Hout + t * n, Cout + t * n, S + t * 5 * n);
    }
}

/* D (B x H): dL/dh_t; E, F (B x H): dL/dc_t ping-pong; dP (3H, accumulated into) may be NULL. */
void FN(peephole_sequence_backward)(int64_t T, int64_t B, int64_t H, const REAL *dHout, const REAL *Cout,
                                    const REAL *S, const REAL *W, const REAL *P, REAL *dX, REAL *dP,
                                    REAL *D, REAL *E, REAL *F, const REAL *Z) {
    int64_t n = B * H;
    memcpy(D, dHout + (T - 1) * n, (size_t)n * sizeof(REAL));
    memset(E, 0, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * 4 * n;
        FN(peephole_backward)(B, H, D, E, S + t * 5 * n, t > 0 ? Cout + (t - 1) * n : Z, Cout + t * n, P, dg, F,
                              dP);
        REAL *swap = E; E = F; F = swap;
        if (t > 0) {
            memcpy(D, dHout + (t - 1) * n, (size_t)n * sizeof(REAL));
            FN(gemm_ab)(B, 4 * H, H, dg, W, D);
        }
    }
}

void FN(cifg_sequence_forward)(int64_t T, int64_t B, int64_t H, REAL *X, const REAL *W, REAL *Hout, REAL *Cout,
                               REAL *S, const REAL *Z) {
    int64_t n = B * H;
    for (int64_t t = 0; t < T; t++) {
        REAL *g = X + t * 3 * n;
        if (t > 0) FN(gemm_abt)(B, 3 * H, H, Hout + (t - 1) * n, W, g);
        FN(cifg_forward)(B, H, g, t > 0 ? Cout + (t - 1) * n : Z, Hout + t * n, Cout + t * n, S + t * 4 * n);
    }
}

void FN(cifg_sequence_backward)(int64_t T, int64_t B, int64_t H, const REAL *dHout, const REAL *Cout,
                                const REAL *S, const REAL *W, REAL *dX, REAL *D, REAL *E, REAL *F,
                                const REAL *Z) {
    int64_t n = B * H;
    memcpy(D, dHout + (T - 1) * n, (size_t)n * sizeof(REAL));
    memset(E, 0, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * 3 * n;
        FN(cifg_backward)(B, H, D, E, S + t * 4 * n, t > 0 ? Cout + (t - 1) * n : Z, dg, F);
        REAL *swap = E; E = F; F = swap;
        if (t > 0) {
            memcpy(D, dHout + (t - 1) * n, (size_t)n * sizeof(REAL));
            FN(gemm_ab)(B, 3 * H, H, dg, W, D);
        }
    }
}

#undef BLAS_GEMM

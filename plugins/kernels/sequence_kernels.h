/* Whole-sequence kernels of one precision: the loop over time of the rnn, GRU, peephole-LSTM, CIFG
   and sLSTM cells, forward and backward, in C. Included by cell_kernels.c once per precision (after
   cell_kernels.h, whose row functions the LSTM-type cells reuse), so no include guard.

   Layout: row-major, time-major. T steps, B rows, H units, I inputs, F = I + H, G gate blocks (rnn 1,
   GRU 3 [r, z, n], peephole 4 [i, f, g, o], CIFG 3 [i, g, o], sLSTM 4 [z, i, f, o]).
   - XH (T + 1, B, F): row t is [x_t, h_{t-1}], the operand of step t's product with W; the caller
     fills the x parts and zeroes the h part of row 0 (the zero initial state); the forward pass
     writes h_t into the h part of row t + 1. Backward reads the h_t from there too.
   - W (G*H, F): [W_ih W_hh]; bx (G*H): the bias of the product (b_ih + b_hh; for the GRU b_ih, whose
     recurrent part W_hn h + b_hn is kept apart); bhh (G*H): b_hh (GRU only); P (3, H): peepholes.
   - Cout (T, B, H): c_t; S (T, B, k*H): what backward needs per step; Gs (B, G*H): scratch.
   - keep: 1 keeps Cout and S for every step (backward reads them); 0 (no gradient will be taken) keeps
     only what the next step reads: Cout has 2 rows (c_t in row t mod 2) and S 1, so that a long
     no-grad forward (evaluation of 256 sequences of T = 10,000) does not hold (T, B, k*H) buffers.
     The arithmetic is the same either way.
   - dHout: dL/dh_t from the outputs, element [t, b, j] at t * st + b * sb + j; dX (T, B, G*H):
     dL/d(pre-activations); dR (T, B, G*H): dL/d(recurrent pre-activations), GRU only (the others:
     equal to dX).
   One product per step over [x_t, h_{t-1}] (not an input projection of all steps up front) keeps a
   step's pre-activations in cache: the up-front projection writes and rereads a (T, B, G*H) tensor,
   which was slower on the 2-core machine (docs/performance.md). The caller checks every extent. */

#if IS_FLOAT
#define BLAS_GEMM blas_sgemm
#else
#define BLAS_GEMM blas_dgemm
#endif

/* R (B x N, row stride ldr) += A (B x K, stride lda) . W^T, W (N x K, stride ldw): forward products. */
static void FN(gemm_abt)(int64_t B, int64_t N, int64_t K, const REAL *A, int64_t lda, const REAL *W, int64_t ldw,
                         REAL *R, int64_t ldr) {
    if (BLAS_GEMM) {
        int n = (int)N, m = (int)B, k = (int)K, la = (int)lda, lw = (int)ldw, lr = (int)ldr;
        REAL one = 1;
        /* column-major view: R^T (N x B) += (W^T stored K x N)^T . A^T (K x B) */
        BLAS_GEMM("T", "N", &n, &m, &k, &one, W, &lw, A, &la, &one, R, &lr);
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        const REAL *a = A + b * lda;
        for (int64_t j = 0; j < N; j++) {
            const REAL *w = W + j * ldw;
            REAL s = 0;
            for (int64_t k = 0; k < K; k++) s += a[k] * w[k];
            R[b * ldr + j] += s;
        }
    }
}

/* D (B x K, contiguous) += R (B x N, contiguous) . W, W (N x K, stride ldw): backward products. */
static void FN(gemm_ab)(int64_t B, int64_t N, int64_t K, const REAL *R, const REAL *W, int64_t ldw, REAL *D) {
    if (BLAS_GEMM) {
        int n = (int)N, m = (int)B, k = (int)K, lw = (int)ldw;
        REAL one = 1;
        /* column-major view: D^T (K x B) += W^T (K x N, stored so with ld ldw) . R^T (N x B) */
        BLAS_GEMM("N", "N", &k, &m, &n, &one, W, &lw, R, &n, &one, D, &k);
        return;
    }
    for (int64_t b = 0; b < B; b++) {
        REAL *restrict d = D + b * K;
        const REAL *r = R + b * N;
        for (int64_t j = 0; j < N; j++) {
            const REAL *restrict w = W + j * ldw;
            REAL s = r[j];
            for (int64_t k = 0; k < K; k++) d[k] += s * w[k];
        }
    }
}

/* Gs (B x N) = rows of bias, then += A . W^T: one step's pre-activations */
static void FN(step_product)(int64_t B, int64_t N, int64_t K, const REAL *bias, const REAL *A, int64_t lda,
                             const REAL *W, int64_t ldw, REAL *Gs) {
    for (int64_t b = 0; b < B; b++) memcpy(Gs + b * N, bias, (size_t)N * sizeof(REAL));
    FN(gemm_abt)(B, N, K, A, lda, W, ldw, Gs, N);
}

/* rows (B x H, contiguous) -> the h part of XH row t (stride F) */
static void FN(put_h)(int64_t B, int64_t H, int64_t I, const REAL *h, REAL *XHrow) {
    for (int64_t b = 0; b < B; b++) memcpy(XHrow + b * (I + H) + I, h + b * H, (size_t)H * sizeof(REAL));
}

/* D (B x H) = dL/dh_t from the outputs (rows of dHout at step t; strided in time and batch). */
static void FN(output_grad)(REAL *D, const REAL *dHout, int64_t t, int64_t B, int64_t H, int64_t st, int64_t sb) {
    for (int64_t b = 0; b < B; b++) memcpy(D + b * H, dHout + t * st + b * sb, (size_t)H * sizeof(REAL));
}

/* ---- rnn: h_t = tanh(W [x_t, h_{t-1}] + b) ------------------------------------------------ */
ROWS FN(rnn_forward_rows)(int64_t B, int64_t H, int64_t F, const REAL *restrict g, REAL *restrict out) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < H; j++) out[b * F + j] = FN(xtanh)(g[b * H + j]);
}

void FN(rnn_sequence_forward)(int64_t T, int64_t B, int64_t H, int64_t I, REAL *XH, const REAL *W,
                              const REAL *bx, REAL *Gs) {
    int64_t F = I + H;
    for (int64_t t = 0; t < T; t++) {
        FN(step_product)(B, H, F, bx, XH + t * B * F, F, W, F, Gs);
        FN(rnn_forward_rows)(B, H, F, Gs, XH + (t + 1) * B * F + I);
    }
}

ROWS FN(rnn_backward_rows)(int64_t B, int64_t H, int64_t F, const REAL *restrict dh, const REAL *restrict h,
                           REAL *restrict dg) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < H; j++) {
            REAL y = h[b * F + j];
            dg[b * H + j] = dh[b * H + j] * ((REAL)1 - y * y);
        }
}

/* D (B x H): scratch for dL/dh_t (from the output and from step t+1). */
void FN(rnn_sequence_backward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t st, int64_t sb,
                               const REAL *dHout, const REAL *XH, const REAL *W, REAL *dX, REAL *D) {
    int64_t n = B * H, F = I + H;
    FN(output_grad)(D, dHout, T - 1, B, H, st, sb);
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * n;
        FN(rnn_backward_rows)(B, H, F, D, XH + (t + 1) * B * F + I, dg);
        if (t > 0) {
            FN(output_grad)(D, dHout, t - 1, B, H, st, sb);
            FN(gemm_ab)(B, H, H, dg, W + I, F, D);
        }
    }
}

/* ---- GRU (torch.nn.GRU): r, z, n; the reset gate multiplies (W_hn h + b_hn) ------------------ */
/* S per step: [r, z, n, W_hn h + b_hn], 4H wide. hp: h_{t-1} rows with stride F. */
ROWS FN(gru_forward_rows)(int64_t B, int64_t H, int64_t F, const REAL *restrict X, const REAL *restrict R,
                          const REAL *restrict hp, REAL *restrict h, REAL *restrict S) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *x = X + b * 3 * H, *r = R + b * 3 * H, *p = hp + b * F;
        REAL *o = h + b * F, *s = S + b * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL rg = FN(xsigmoid)(x[j] + r[j]);
            REAL zg = FN(xsigmoid)(x[H + j] + r[H + j]);
            REAL ng = FN(xtanh)(x[2 * H + j] + rg * r[2 * H + j]);
            o[j] = ((REAL)1 - zg) * ng + zg * p[j];
            s[j] = rg; s[H + j] = zg; s[2 * H + j] = ng; s[3 * H + j] = r[2 * H + j];
        }
    }
}

/* Gs (2 x B x 3H): scratch for the input-side and recurrent pre-activations of one step. */
void FN(gru_sequence_forward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t keep, REAL *XH, const REAL *W,
                              const REAL *bx, const REAL *bhh, REAL *S, REAL *Gs) {
    int64_t F = I + H, N = 3 * H;
    REAL *R = Gs + B * N;
    for (int64_t t = 0; t < T; t++) {
        const REAL *row = XH + t * B * F;
        FN(step_product)(B, N, I, bx, row, F, W, F, Gs);
        FN(step_product)(B, N, H, bhh, row + I, F, W + I, F, R);
        FN(gru_forward_rows)(B, H, F, Gs, R, row + I, XH + (t + 1) * B * F + I, S + (keep ? t : 0) * B * 4 * H);
    }
}

/* dh (in): dL/dh_t; writes dx, dr (the step's pre-activation gradients) and dp = dL/dh_{t-1} through z. */
ROWS FN(gru_backward_rows)(int64_t B, int64_t H, int64_t F, const REAL *restrict dH, const REAL *restrict S,
                           const REAL *restrict hp, REAL *restrict dx, REAL *restrict dr, REAL *restrict dp) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *dh = dH + b * H, *s = S + b * 4 * H, *p = hp + b * F;
        REAL *x = dx + b * 3 * H, *r = dr + b * 3 * H, *d = dp + b * H;
        for (int64_t j = 0; j < H; j++) {
            REAL rg = s[j], zg = s[H + j], ng = s[2 * H + j], rn = s[3 * H + j];
            REAL dn = dh[j] * ((REAL)1 - zg) * ((REAL)1 - ng * ng);
            REAL dz = dh[j] * (p[j] - ng) * zg * ((REAL)1 - zg);
            REAL drg = dn * rn * rg * ((REAL)1 - rg);
            x[j] = drg; x[H + j] = dz; x[2 * H + j] = dn;
            r[j] = drg; r[H + j] = dz; r[2 * H + j] = dn * rg;
            d[j] = dh[j] * zg;
        }
    }
}

/* D, E (B x H): scratch for dL/dh_t and dL/dh_{t-1}. */
void FN(gru_sequence_backward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t st, int64_t sb,
                               const REAL *dHout, const REAL *XH, const REAL *S, const REAL *W, REAL *dX,
                               REAL *dR, REAL *D, REAL *E) {
    int64_t n = B * H, F = I + H;
    FN(output_grad)(D, dHout, T - 1, B, H, st, sb);
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dr = dR + t * 3 * n;
        FN(gru_backward_rows)(B, H, F, D, S + t * 4 * n, XH + t * B * F + I, dX + t * 3 * n, dr, E);
        if (t > 0) {
            FN(output_grad)(D, dHout, t - 1, B, H, st, sb);
            for (int64_t j = 0; j < n; j++) D[j] += E[j];
            FN(gemm_ab)(B, 3 * H, H, dr, W + I, F, D);
        }
    }
}

/* ---- LSTM-type cells: the step kernels of cell_kernels.h inside a loop over time ------------- */
/* The row of Cout that holds c_t: t itself, or t mod 2 where only the last two are kept. */
static inline int64_t FN(c_row)(int64_t t, int64_t keep) { return keep ? t : (t & 1); }

/* Gs (B x G*H + B x H): scratch for one step's pre-activations and h; Z (B x H): the zero c_{-1}. */
void FN(peephole_sequence_forward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t keep, REAL *XH, const REAL *W,
                                   const REAL *bx, const REAL *P, REAL *Cout, REAL *S, REAL *Gs, const REAL *Z) {
    int64_t n = B * H, F = I + H;
    REAL *h = Gs + 4 * n;
    for (int64_t t = 0; t < T; t++) {
        FN(step_product)(B, 4 * H, F, bx, XH + t * B * F, F, W, F, Gs);
        FN(peephole_forward)(B, H, Gs, t > 0 ? Cout + FN(c_row)(t - 1, keep) * n : Z, P, h,
                             Cout + FN(c_row)(t, keep) * n, S + (keep ? t : 0) * 5 * n);
        FN(put_h)(B, H, I, h, XH + (t + 1) * B * F);
    }
}

/* D (B x H): dL/dh_t; E, F2 (B x H): dL/dc_t ping-pong; dP (3H, accumulated into) may be NULL. */
void FN(peephole_sequence_backward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t st, int64_t sb,
                                    const REAL *dHout, const REAL *Cout, const REAL *S, const REAL *W,
                                    const REAL *P, REAL *dX, REAL *dP, REAL *D, REAL *E, REAL *F2, const REAL *Z) {
    int64_t n = B * H, F = I + H;
    FN(output_grad)(D, dHout, T - 1, B, H, st, sb);
    memset(E, 0, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * 4 * n;
        FN(peephole_backward)(B, H, D, E, S + t * 5 * n, t > 0 ? Cout + (t - 1) * n : Z, Cout + t * n, P, dg, F2,
                              dP);
        REAL *swap = E; E = F2; F2 = swap;
        if (t > 0) {
            FN(output_grad)(D, dHout, t - 1, B, H, st, sb);
            FN(gemm_ab)(B, 4 * H, H, dg, W + I, F, D);
        }
    }
}

void FN(cifg_sequence_forward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t keep, REAL *XH, const REAL *W,
                               const REAL *bx, REAL *Cout, REAL *S, REAL *Gs, const REAL *Z) {
    int64_t n = B * H, F = I + H;
    REAL *h = Gs + 3 * n;
    for (int64_t t = 0; t < T; t++) {
        FN(step_product)(B, 3 * H, F, bx, XH + t * B * F, F, W, F, Gs);
        FN(cifg_forward)(B, H, Gs, t > 0 ? Cout + FN(c_row)(t - 1, keep) * n : Z, h, Cout + FN(c_row)(t, keep) * n,
                         S + (keep ? t : 0) * 4 * n);
        FN(put_h)(B, H, I, h, XH + (t + 1) * B * F);
    }
}

void FN(cifg_sequence_backward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t st, int64_t sb,
                                const REAL *dHout, const REAL *Cout, const REAL *S, const REAL *W, REAL *dX,
                                REAL *D, REAL *E, REAL *F2, const REAL *Z) {
    int64_t n = B * H, F = I + H;
    FN(output_grad)(D, dHout, T - 1, B, H, st, sb);
    memset(E, 0, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * 3 * n;
        FN(cifg_backward)(B, H, D, E, S + t * 4 * n, t > 0 ? Cout + (t - 1) * n : Z, dg, F2);
        REAL *swap = E; E = F2; F2 = swap;
        if (t > 0) {
            FN(output_grad)(D, dHout, t - 1, B, H, st, sb);
            FN(gemm_ab)(B, 3 * H, H, dg, W + I, F, D);
        }
    }
}

/* ---- sLSTM (Beck et al. 2024), one head: gates z, i, f, o from [x_t, h_{t-1}] ------------------
   log f = log σ(f̃) (or f̃ for the exponential forget gate), m_t = max(log f + m_{t-1}, ĩ),
   i = exp(ĩ − m_t), f = exp(log f + m_{t-1} − m_t), c_t = f c_{t-1} + i tanh(z̃), n_t = f n_{t-1} + i,
   h_t = σ(õ) c_t / n_t; the first step has no past (m_1 = ĩ, so i = 1, f = 0 and n_1 = 1).
   Backward holds the stabiliser m constant: it scales c_t and n_t alike and h_t not at all, so the
   gradient through the max is zero and the result equals the eager equations' (tests compare).
   S per step: [tanh z̃, i, f, σ(õ), n_t, m_t, d log f / d f̃], 7H wide; the next step reads n_t and
   m_t from it, so without keep S has two rows, like Cout. */
ROWS FN(slstm_forward_rows)(int64_t B, int64_t H, int64_t F, int64_t first, int64_t exp_forget,
                            const REAL *restrict G, const REAL *restrict Cp, const REAL *restrict Sp,
                            REAL *restrict C, REAL *restrict S, REAL *restrict Hout) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *g = G + b * 4 * H, *cp = Cp + b * H, *sp = Sp + b * 7 * H;
        REAL *c = C + b * H, *s = S + b * 7 * H, *h = Hout + b * F;
        /* the seven blocks of s do not overlap (j < H), which the compiler cannot see */
#if defined(__clang__)
#pragma clang loop vectorize(assume_safety)
#elif defined(__GNUC__)
#pragma GCC ivdep
#endif
        for (int64_t j = 0; j < H; j++) {
            REAL zt = FN(xtanh)(g[j]), ip = g[H + j], fp = g[2 * H + j];
            REAL og = FN(xsigmoid)(g[3 * H + j]);
            REAL e = FN(xexp)(fp < 0 ? fp : -fp);  /* log σ(f̃) = min(f̃, 0) − log(1 + e^{−|f̃|}); σ(−f̃) from e */
            REAL lf = exp_forget ? fp : (fp < 0 ? fp : (REAL)0) - FN(xlog1p_unit)(e);
            REAL dlf = exp_forget ? (REAL)1 : (fp >= 0 ? e : (REAL)1) / ((REAL)1 + e);
            /* the first step: a = −∞, so m = ĩ, i = 1, f = 0 */
            REAL a = first ? ip : lf + sp[5 * H + j];
            REAL m = a > ip ? a : ip;
            REAL ig = first ? (REAL)1 : FN(xexp)(ip - m);
            REAL fg = first ? (REAL)0 : FN(xexp)(a - m);
            REAL cn = first ? zt : fg * cp[j] + ig * zt;
            REAL nn = first ? (REAL)1 : fg * sp[4 * H + j] + ig;
            c[j] = cn;
            h[j] = og * cn / nn;
            s[j] = zt; s[H + j] = ig; s[2 * H + j] = fg; s[3 * H + j] = og;
            s[4 * H + j] = nn; s[5 * H + j] = m; s[6 * H + j] = dlf;
        }
    }
}

/* Gs (B x 4H): scratch for one step's pre-activations; Cout (T or 2, B, H): c_t; S (T or 2, B, 7H);
   Z (B x 7H): zeros, read as the step before the first. */
void FN(slstm_sequence_forward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t keep, int64_t exp_forget,
                                REAL *XH, const REAL *W, const REAL *bx, REAL *Cout, REAL *S, REAL *Gs,
                                const REAL *Z) {
    int64_t n = B * H, F = I + H;
    for (int64_t t = 0; t < T; t++) {
        FN(step_product)(B, 4 * H, F, bx, XH + t * B * F, F, W, F, Gs);
        const REAL *cp = t > 0 ? Cout + FN(c_row)(t - 1, keep) * n : Z;
        const REAL *sp = t > 0 ? S + FN(c_row)(t - 1, keep) * 7 * n : Z;
        FN(slstm_forward_rows)(B, H, F, t == 0, exp_forget, Gs, cp, sp, Cout + FN(c_row)(t, keep) * n,
                               S + FN(c_row)(t, keep) * 7 * n, XH + (t + 1) * B * F + I);
    }
}

/* dh (in): dL/dh_t; dc, dn (in: dL/dc_t, dL/dn_t through step t+1; out: the same for t−1); cp, np:
   c_{t-1}, n_{t-1} (zero before the first step; np's rows are nps apart); writes the step's
   pre-activation gradients [z̃, ĩ, f̃, õ]. */
ROWS FN(slstm_backward_rows)(int64_t B, int64_t H, const REAL *restrict dH, REAL *restrict dC, REAL *restrict dN,
                             const REAL *restrict S, const REAL *restrict Cp, const REAL *restrict Np, int64_t nps,
                             const REAL *restrict C, REAL *restrict dX) {
    for (int64_t b = 0; b < B; b++) {
        const REAL *dh = dH + b * H, *s = S + b * 7 * H, *cp = Cp + b * H, *np = Np + b * nps, *c = C + b * H;
        REAL *dc = dC + b * H, *dn = dN + b * H, *dx = dX + b * 4 * H;
        for (int64_t j = 0; j < H; j++) {
            REAL zt = s[j], ig = s[H + j], fg = s[2 * H + j], og = s[3 * H + j], inv = (REAL)1 / s[4 * H + j];
            REAL hc = c[j] * inv;  /* c_t / n_t */
            REAL dct = dc[j] + dh[j] * og * inv;
            REAL dnt = dn[j] - dh[j] * og * hc * inv;
            dx[j] = dct * ig * ((REAL)1 - zt * zt);
            dx[H + j] = (dct * zt + dnt) * ig;
            dx[2 * H + j] = (dct * cp[j] + dnt * np[j]) * fg * s[6 * H + j];
            dx[3 * H + j] = dh[j] * hc * og * ((REAL)1 - og);
            dc[j] = dct * fg;
            dn[j] = dnt * fg;
        }
    }
}

/* D (B x H): dL/dh_t; E, N2 (B x H): dL/dc_t, dL/dn_t; Z (B x H): zeros (c_0 and n_0). */
void FN(slstm_sequence_backward)(int64_t T, int64_t B, int64_t H, int64_t I, int64_t st, int64_t sb,
                                 const REAL *dHout, const REAL *Cout, const REAL *S, const REAL *W, REAL *dX,
                                 REAL *D, REAL *E, REAL *N2, const REAL *Z) {
    int64_t n = B * H, F = I + H;
    FN(output_grad)(D, dHout, T - 1, B, H, st, sb);
    memset(E, 0, (size_t)n * sizeof(REAL));
    memset(N2, 0, (size_t)n * sizeof(REAL));
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL *dg = dX + t * 4 * n;
        FN(slstm_backward_rows)(B, H, D, E, N2, S + t * 7 * n, t > 0 ? Cout + (t - 1) * n : Z,
                                t > 0 ? S + (t - 1) * 7 * n + 4 * H : Z, t > 0 ? 7 * H : H, Cout + t * n, dg);
        if (t > 0) {
            FN(output_grad)(D, dHout, t - 1, B, H, st, sb);
            FN(gemm_ab)(B, 4 * H, H, dg, W + I, F, D);
        }
    }
}

#undef BLAS_GEMM

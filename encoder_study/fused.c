/* The engine's elementwise work fused in C: the encoder's objective and gradient for a stack of
 * runs in three passes, the standard SAE's in two, and (at the end of the file) the first layer
 * of runs that each have a data order of their own, with the minibatch gather folded in.
 *
 * The same arithmetic as losses.combined_loss_and_grad (ReLU, L_lse + L_var + L_tc), with the
 * elementwise work of each run done in one or two sweeps over its (batch x units) block instead
 * of about fifty small torch operations. The two small GEMMs between the passes (the covariance
 * A_c^T A_c and the correlation term's A_c dL/dS) stay in torch. encoder_study/fused.py compiles
 * this file with gcc and calls it through ctypes; OpenMP splits the work over torch's own
 * threads (the library links the libgomp that torch has already loaded).
 *
 * Layout. The pre-activations z arrive as torch's first-layer GEMM leaves them: (S, B, m*K),
 * one row per data order s, the m runs that share it side by side (run r = s*m + j owns columns
 * j*K .. j*K+K-1). The per-run buffers g and centred are (R, B, K), contiguous. The gradient
 * dL/dz is written back in z's layout, ready for the weight-gradient GEMM.
 *
 * Precision. Built twice: float32 (the training path) and, with -DFUSED_DOUBLE, float64, where
 * libm's exp replaces the polynomial; the float64 build lets the tests hold these formulas and
 * layouts to the plain autograd loop at 1e-9 over hundreds of steps.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef FUSED_DOUBLE
typedef double real;
#define EXP_NONPOSITIVE(x) exp(x)
#define LOG log
#define SQRT sqrt
#else
typedef float real;
#define EXP_NONPOSITIVE(x) exp_nonpositive(x)
#define LOG logf
#define SQRT sqrtf
#endif

/* exp(x) for x <= 0 (inputs are a_min - a_j), vectorisable: Cody-Waite reduction by ln 2 and
 * Cephes' degree-5 polynomial for expf (about 1 ulp). Results below FLT_MIN are returned as 0:
 * they only ever enter a sum that is at least 1. NaN stays NaN. */
static inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float xc = x < -87.0f ? -87.0f : x;
    float n = rintf(xc * log2e);
    float r = xc - n * ln2_hi;
    r = r - n * ln2_lo;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } scale = { (uint32_t)((int32_t)n + 127) << 23 };
    float y = p * scale.f;
    return x < -87.0f ? 0.0f : y;  /* NaN compares false: y is NaN */
}

static inline real relu(real z) { return z < 0 ? 0 : z; }  /* NaN passes, as torch.relu */

static inline const real *run_block(const real *z, int r, int m, int B, int K) {
    return z + (size_t)(r / m) * B * m * K + (size_t)(r % m) * K;
}

/* Pass 1. Per run r and sample b, with a = relu(z) and scale = 1 (sum over the batch) or 1/B (mean):
 *   terms[1,r]  = scale sum_b (a_min - log sum_j exp(a_min - a_j))   (L_lse = -sum_b log sum_j exp(-a_j))
 *   g[r,b,:]    = lam_lse[r] scale softmax(-a)                       (dL_lse/da)
 *   centred[r]  = a - mean over the batch of a                       (for the covariance)
 * First the samples (all R*B of them split evenly over the threads), then the runs' batch sums
 * (in sample order, so the result does not depend on the thread count). row_lse: R*B scratch. */
void lse_pass(int R, int m, int B, int K, const real *z, const real *lam_lse, real scale,
              real *g, real *centred, double *row_lse, real *terms) {
    const size_t stride = (size_t)m * K;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int rb = 0; rb < R * B; rb++) {
            const int r = rb / B, b = rb % B;
            const real *zb = run_block(z, r, m, B, K) + b * stride;
            real *gb = g + (size_t)rb * K, *ab = centred + (size_t)rb * K;
            real a_min = (real)INFINITY;
#pragma omp simd reduction(min : a_min)
            for (int k = 0; k < K; k++) {
                ab[k] = relu(zb[k]);
                a_min = ab[k] < a_min ? ab[k] : a_min;
            }
            real sum = 0.0;
#pragma omp simd reduction(+ : sum)
            for (int k = 0; k < K; k++) {
                gb[k] = EXP_NONPOSITIVE(a_min - ab[k]);
                sum += gb[k];
            }
            row_lse[rb] = (double)(a_min - LOG(sum));
            const real f = lam_lse[r] * scale / sum;
#pragma omp simd
            for (int k = 0; k < K; k++) gb[k] *= f;
        }
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            real *cr = centred + (size_t)r * B * K;
            real *mean = calloc((size_t)K, sizeof(real));
            double total = 0.0;
            for (int b = 0; b < B; b++) {
                total += row_lse[(size_t)r * B + b];
#pragma omp simd
                for (int k = 0; k < K; k++) mean[k] += cr[(size_t)b * K + k];
            }
            const real inv_b = 1.0 / (real)B;
#pragma omp simd
            for (int k = 0; k < K; k++) mean[k] *= inv_b;
            for (int b = 0; b < B; b++) {
#pragma omp simd
                for (int k = 0; k < K; k++) cr[(size_t)b * K + k] -= mean[k];
            }
            free(mean);
            terms[R + r] = (real)(total * scale);
        }
    }
}

/* Pass 2, on the K x K matrices. gram = A_c^T A_c, so S = gram / (B-1) is the unbiased
 * covariance; v = diag S, s = sqrt(v) + corr_eps, C = S / (s s^T) off the diagonal.
 *   terms[2,r] = L_var = -sum_k log(v_k + var_eps)     terms[3,r] = L_tc = sum_{i != j} C_ij^2
 *   terms[4,r] = L_wr = 0 (not part of this path)     terms[0,r] = the lambda-weighted total
 * and dcov = (2 / (B-1)) dL/dS, so that dL/dA_c = A_c dcov:
 *   off the diagonal  2 lam_tc C_ij / (s_i s_j)
 *   on it             -lam_var / (v_k + var_eps) - 2 lam_tc (sum_j C_kj^2) / (s_k sqrt v_k)
 *                     (the second part 0 for a unit silent on the whole batch, v_k = 0) */
void infomax_pass(int R, int B, int K, const real *gram, const real *lam_lse, const real *lam_var,
                  const real *lam_tc, real var_eps, real corr_eps, real *dcov, real *terms) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const real *G = gram + (size_t)r * K * K;
        real *D = dcov + (size_t)r * K * K;
        real *buf = malloc(3 * (size_t)K * sizeof(real));
        real *v = buf, *root = buf + K, *inv = buf + 2 * K;
        const real unbias = 1.0 / (real)(B - 1), gscale = 2.0 / (real)(B - 1);
        double var_sum = 0.0, tc_sum = 0.0;
        for (int k = 0; k < K; k++) {
            v[k] = G[(size_t)k * K + k] * unbias;
            var_sum -= (double)LOG(v[k] + var_eps);
            root[k] = SQRT(v[k]);
            inv[k] = 1.0 / (root[k] + corr_eps);
        }
        const real two_tc = 2.0 * lam_tc[r];
        for (int i = 0; i < K; i++) {
            const real *Gi = G + (size_t)i * K;
            real *Di = D + (size_t)i * K;
            real row_sq = 0.0;
#pragma omp simd reduction(+ : row_sq)
            for (int j = 0; j < K; j++) {
                real outer = inv[i] * inv[j];
                real c = j == i ? 0.0 : Gi[j] * unbias * outer;
                row_sq += c * c;
                Di[j] = gscale * (two_tc * c * outer);
            }
            tc_sum += (double)row_sq;
            real tc_diag = root[i] > 0.0 ? -two_tc * (row_sq * inv[i] / root[i]) : 0.0;
            Di[i] = gscale * (tc_diag - lam_var[r] / (v[i] + var_eps));
        }
        free(buf);
        const real lse = terms[R + r], var = (real)var_sum, tc = (real)tc_sum;
        terms[2 * R + r] = var;
        terms[3 * R + r] = tc;
        terms[4 * R + r] = 0.0;
        terms[r] = lam_lse[r] * lse + lam_var[r] * var + lam_tc[r] * tc;
    }
}

/* Pass 3. dL/dz = dL/da where z > 0, else 0, written in z's (S, B, m*K) layout; and the bias
 * gradient, its sum over the batch. */
void relu_grad_pass(int R, int m, int B, int K, const real *z, const real *g, real *grad_z,
                    real *grad_bias) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const real *zr = run_block(z, r, m, B, K);
        real *out = grad_z + (zr - z);
        const size_t stride = (size_t)m * K;
        const real *gr = g + (size_t)r * B * K;
        real *gbias = grad_bias + (size_t)r * K;
        for (int k = 0; k < K; k++) gbias[k] = 0.0;
        for (int b = 0; b < B; b++) {
            const real *zb = zr + b * stride, *gb = gr + (size_t)b * K;
            real *ob = out + b * stride;
#pragma omp simd
            for (int k = 0; k < K; k++) {
                real d = zb[k] > 0.0 ? gb[k] : 0.0;
                ob[k] = d;
                gbias[k] += d;
            }
        }
    }
}

/* The standard SAE (ReLU encoder, linear decoder; engine.RunStack._sae_loss_and_grads), its
 * elementwise work around the four GEMMs. Runs r = s*m + j read the minibatch x[s] (S, B, D).
 *
 * Pass 1, on diff = a Wd^T (R, B, D) as the decoder GEMM leaves it, and a (R, B, K):
 *   diff += bd[r] - x[s]                      (the reconstruction error x_hat - x)
 *   terms[1,r] = MSE = sum diff^2 / (B D)     terms[2,r] = mean a (= mean |a|, a >= 0)
 *   terms[0,r] = MSE + l1[r] mean a
 *   diff *= 2 / (B D)                         (dMSE/dx_hat, in place)
 *   grad_bd[r] = sum over the batch of dMSE/dx_hat
 * row_sq: R*B scratch (each sample's squared error, summed per run in sample order). */
void sae_residual_pass(int R, int m, int B, int D, int K, real *diff, const real *x, const real *bd,
                       const real *a, const real *l1, double *row_sq, real *grad_bd, real *terms) {
    const real g_scale = 2.0 / ((real)B * (real)D);
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int rb = 0; rb < R * B; rb++) {
            const int r = rb / B, b = rb % B;
            const real *xb = x + ((size_t)(r / m) * B + b) * D, *bdr = bd + (size_t)r * D;
            real *db = diff + (size_t)rb * D;
            real sq = 0.0;
#pragma omp simd reduction(+ : sq)
            for (int d = 0; d < D; d++) {
                real e = db[d] + (bdr[d] - xb[d]);
                sq += e * e;
                db[d] = e * g_scale;
            }
            row_sq[rb] = (double)sq;
        }
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            const real *dr = diff + (size_t)r * B * D;
            real *gbd = grad_bd + (size_t)r * D;
            double sq = 0.0, act = 0.0;
            for (int d = 0; d < D; d++) gbd[d] = 0.0;
            for (int b = 0; b < B; b++) {
                sq += row_sq[(size_t)r * B + b];
#pragma omp simd
                for (int d = 0; d < D; d++) gbd[d] += dr[(size_t)b * D + d];
            }
            const real *ar = a + (size_t)r * B * K;
            for (int b = 0; b < B; b++) {
                real row = 0.0;
#pragma omp simd reduction(+ : row)
                for (int k = 0; k < K; k++) row += ar[(size_t)b * K + k];
                act += (double)row;
            }
            const real mse = (real)(sq / ((double)B * D)), mean_a = (real)(act / ((double)B * K));
            terms[R + r] = mse;
            terms[2 * R + r] = mean_a;
            terms[r] = mse + l1[r] * mean_a;
        }
    }
}

/* Pass 2, on g_a = dMSE/dx_hat Wd (R, B, K) as the GEMM leaves it: adds the L1 term's gradient
 * l1[r] / (B K) (a >= 0, so sign(a) = 1 wherever z > 0, the only places that pass) and applies
 * ReLU's mask, in place; grad_b[r] = its sum over the batch. */
void sae_relu_grad_pass(int R, int B, int K, const real *z, real *g_a, const real *l1, real *grad_b) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const real add = l1[r] / ((real)B * (real)K);
        const real *zr = z + (size_t)r * B * K;
        real *gr = g_a + (size_t)r * B * K, *gb = grad_b + (size_t)r * K;
        for (int k = 0; k < K; k++) gb[k] = 0.0;
        for (int b = 0; b < B; b++) {
#pragma omp simd
            for (int k = 0; k < K; k++) {
                real d = zr[(size_t)b * K + k] > 0.0 ? gr[(size_t)b * K + k] + add : 0.0;
                gr[(size_t)b * K + k] = d;
                gb[k] += d;
            }
        }
    }
}

/* The first layer with the minibatch gather folded in, for S data orders:
 *   z[s,b,n] = bias[s,n] + sum_d X[idx[s,b], d] W[s,n,d]      (S, B, N), N = the row's m*K units
 *   x[s,b,:] = X[idx[s,b], :]                                 (S, B, D), for the weight gradient
 * W (S, N, D) and bias (S, N) are the stack's encoder weights and biases, the runs of one data
 * order laid end to end. Each dataset row is read once, straight into the dot products; the copy
 * to x is written on the way. Blocks of ROWS samples x UNITS units, one vector accumulator per
 * (sample, unit) over D, so a block's ROWS*UNITS = VL accumulators fill 16 of the 32 vector
 * registers. Returns 0, or -1 (nothing written) if an index is outside [0, n). */
typedef real vec __attribute__((vector_size(64)));
#define VL ((int)(64 / sizeof(real)))
#define ROWS 4
#define UNITS (VL / ROWS)

static inline vec load_vec(const real *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store_vec(real *p, vec v) { memcpy(p, &v, sizeof v); }

#ifdef FUSED_DOUBLE
/* sums[i] = the sum of acc[i]'s lanes */
static inline void lane_sums(const vec *acc, real *sums) {
    for (int i = 0; i < VL; i++) {
        real s = 0.0;
        for (int l = 0; l < VL; l++) s += acc[i][l];
        sums[i] = s;
    }
}
#else
typedef int32_t lanes __attribute__((vector_size(64)));
static inline vec fold(vec a, vec b, lanes lo, lanes hi) {
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}
/* sums[i] = the sum of acc[i]'s 16 lanes, as a tree of shuffles: each level halves the lanes per
 * accumulator and pairs accumulators up, so 16 vectors become one (lane l holds accumulator
 * bitreverse4(l)). */
static inline void lane_sums(const vec *acc, real *sums) {
    static const lanes lo1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    static const lanes hi1 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    static const lanes lo2 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    static const lanes hi2 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    static const lanes lo3 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    static const lanes hi3 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    static const lanes lo4 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    static const lanes hi4 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    static const int source[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    vec h[8], q[4], e[2];
    for (int i = 0; i < 8; i++) h[i] = fold(acc[2 * i], acc[2 * i + 1], lo1, hi1);
    for (int i = 0; i < 4; i++) q[i] = fold(h[2 * i], h[2 * i + 1], lo2, hi2);
    for (int i = 0; i < 2; i++) e[i] = fold(q[2 * i], q[2 * i + 1], lo3, hi3);
    vec all = fold(e[0], e[1], lo4, hi4);
    for (int l = 0; l < 16; l++) sums[source[l]] = all[l];
}
#endif

/* acc[i*UNITS + j] = lane-wise partial sums of in[i][d] w[j][d] over d < full; with ``copy``,
 * each in[i] is also copied to copy[i] on the way; with ``ahead``, the rows ahead[i] are fetched
 * towards the cache (the next block's samples). Inlined for each use, the branches folded away. */
static inline __attribute__((always_inline)) void dot_block(const real *const *in, real *const *copy,
                                                            const real *const *ahead, int ahead_from, int D,
                                                            const real *const *w, int full, vec *acc) {
    for (int a = 0; a < VL; a++) acc[a] = (vec){0};
    for (int d = 0; d < full; d += VL) {
        if (ahead) {  /* one cache line (VL values) per step, the rows in turn */
            int line = ahead_from + d / VL;
            if (line / ROWS * VL < D) __builtin_prefetch(ahead[line % ROWS] + line / ROWS * VL, 0, 2);
        }
        vec xv[ROWS];
        for (int i = 0; i < ROWS; i++) xv[i] = load_vec(in[i] + d);
        if (copy)
            for (int i = 0; i < ROWS; i++) store_vec(copy[i] + d, xv[i]);
        for (int j = 0; j < UNITS; j++) {
            vec wv = load_vec(w[j] + d);
            for (int i = 0; i < ROWS; i++) acc[i * UNITS + j] += xv[i] * wv;
        }
    }
}

int first_layer_pass(int S, int B, int N, int D, const real *X, int64_t n, const int64_t *idx,
                     int64_t idx_stride, const real *W, const real *bias, real *z, real *x) {
    for (int s = 0; s < S; s++)
        for (int b = 0; b < B; b++)
            if (idx[s * idx_stride + b] < 0 || idx[s * idx_stride + b] >= n) return -1;
    const int row_blocks = (B + ROWS - 1) / ROWS, full = D - D % VL;
#pragma omp parallel for schedule(static) collapse(2)
    for (int s = 0; s < S; s++) {
        for (int blk = 0; blk < row_blocks; blk++) {
            const real *src[ROWS];
            real *copy[ROWS];
            int rows = B - blk * ROWS < ROWS ? B - blk * ROWS : ROWS;
            for (int i = 0; i < ROWS; i++) {  /* a short last block repeats its last sample */
                int b = blk * ROWS + (i < rows ? i : rows - 1);
                src[i] = X + idx[s * idx_stride + b] * D;
                copy[i] = x + ((size_t)s * B + b) * D;
            }
            const real *next[ROWS] = {NULL};  /* the samples of this thread's next block, if any */
            const int s_next = blk + 1 < row_blocks ? s : s + 1, b_next = blk + 1 < row_blocks ? (blk + 1) * ROWS : 0;
            if (s_next < S)
                for (int i = 0; i < ROWS; i++) next[i] = X + idx[s_next * idx_stride + (b_next + i < B ? b_next + i : B - 1)] * D;
            for (int i = 0; i < rows; i++) memcpy(copy[i] + full, src[i] + full, (size_t)(D - full) * sizeof(real));
            const real *Ws = W + (size_t)s * N * D, *bs = bias + (size_t)s * N;
            real *zs = z + (size_t)s * B * N;
            for (int n0 = 0; n0 < N; n0 += UNITS) {
                const real *w[UNITS];
                for (int j = 0; j < UNITS; j++) w[j] = Ws + (size_t)(n0 + j < N ? n0 + j : N - 1) * D;
                vec acc[VL];
                const real *const *cached = (const real *const *)copy;  /* after the first block */
                const int ahead_from = (n0 / UNITS - 1) * (full / VL);  /* lines of next[] fetched so far */
                if (n0 == 0)
                    dot_block(src, copy, NULL, 0, D, w, full, acc);
                else if (next[0] && ahead_from / ROWS * VL < D)
                    dot_block(cached, NULL, next, ahead_from, D, w, full, acc);
                else
                    dot_block(cached, NULL, NULL, 0, D, w, full, acc);
                real sums[VL];
                lane_sums(acc, sums);
                for (int i = 0; i < rows; i++)
                    for (int j = 0; j < UNITS && n0 + j < N; j++) {
                        real t = sums[i * UNITS + j];
                        for (int d = full; d < D; d++) t += src[i][d] * w[j][d];
                        zs[(size_t)(blk * ROWS + i) * N + n0 + j] = bs[n0 + j] + t;
                    }
            }
        }
    }
    return 0;
}

/* The engine's elementwise work fused in C: the encoder's objective and gradient for a stack of
 * runs in three passes, the standard SAE's in two; and (at the end of the file) for runs that each
 * have a data order of their own, the first layer with the minibatch gather folded in, and the
 * encoder's whole training step, run by run.
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
#include <omp.h>
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

/* Pass 1, for one sample: a = relu(z) into a_out, g = lam_scale softmax(-a) (dL_lse/da, lam_scale =
 * lambda_lse times 1 or 1/B), and the sample's term a_min - log sum_j exp(a_min - a_j) returned. */
static double lse_row(int K, const real *zb, real lam_scale, real *gb, real *ab) {
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
    const real f = lam_scale / sum;
#pragma omp simd
    for (int k = 0; k < K; k++) gb[k] *= f;
    return (double)(a_min - LOG(sum));
}

/* a (B, K) of one run minus its mean over the batch, in place; mean: K scratch */
static void centre_run(int B, int K, real *a, real *mean) {
    for (int k = 0; k < K; k++) mean[k] = 0.0;
    for (int b = 0; b < B; b++) {
#pragma omp simd
        for (int k = 0; k < K; k++) mean[k] += a[(size_t)b * K + k];
    }
    const real inv_b = 1.0 / (real)B;
#pragma omp simd
    for (int k = 0; k < K; k++) mean[k] *= inv_b;
    for (int b = 0; b < B; b++) {
#pragma omp simd
        for (int k = 0; k < K; k++) a[(size_t)b * K + k] -= mean[k];
    }
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
            row_lse[rb] = lse_row(K, run_block(z, r, m, B, K) + b * stride, lam_lse[r] * scale,
                                  g + (size_t)rb * K, centred + (size_t)rb * K);
        }
#pragma omp for schedule(static)
        for (int r = 0; r < R; r++) {
            real *mean = malloc((size_t)K * sizeof(real));
            double total = 0.0;
            for (int b = 0; b < B; b++) total += row_lse[(size_t)r * B + b];
            centre_run(B, K, centred + (size_t)r * B * K, mean);
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
static void infomax_run(int R, int r, int B, int K, const real *G, const real *lam_lse, const real *lam_var,
                        const real *lam_tc, real var_eps, real corr_eps, real *D, real *buf, real *terms) {
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
    const real lse = terms[R + r], var = (real)var_sum, tc = (real)tc_sum;
    terms[2 * R + r] = var;
    terms[3 * R + r] = tc;
    terms[4 * R + r] = 0.0;
    terms[r] = lam_lse[r] * lse + lam_var[r] * var + lam_tc[r] * tc;
}

void infomax_pass(int R, int B, int K, const real *gram, const real *lam_lse, const real *lam_var,
                  const real *lam_tc, real var_eps, real corr_eps, real *dcov, real *terms) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        real *buf = malloc(3 * (size_t)K * sizeof(real));
        infomax_run(R, r, B, K, gram + (size_t)r * K * K, lam_lse, lam_var, lam_tc, var_eps, corr_eps,
                    dcov + (size_t)r * K * K, buf, terms);
        free(buf);
    }
}

/* Pass 3. dL/dz = dL/da where z > 0, else 0, written in z's (S, B, m*K) layout; and the bias
 * gradient, its sum over the batch. */
static void relu_grad_run(int B, int K, const real *zr, size_t stride, const real *gr, real *out, real *gbias) {
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

void relu_grad_pass(int R, int m, int B, int K, const real *z, const real *g, real *grad_z,
                    real *grad_bias) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < R; r++) {
        const real *zr = run_block(z, r, m, B, K);
        relu_grad_run(B, K, zr, (size_t)m * K, g + (size_t)r * B * K, grad_z + (zr - z), grad_bias + (size_t)r * K);
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
 * order laid end to end. Blocked as a GEMM is: for each data order, for each slice of DEPTH inputs,
 * the weights of (up to) PANEL_UNITS units are transposed into a panel that stays in L1, and tiles
 * of TILE_ROWS samples x PANEL_UNITS units accumulate into z from it, one broadcast sample value
 * times four vectors of the panel per step. The tiles read the samples straight from the dataset
 * (no gather pass) and copy each slice to x after use; the lines the tile AHEAD tiles on will read
 * and write are requested while this one computes. Each z is summed in input order, bias first,
 * whatever the thread count. Returns 0, or -1 (nothing written) if an index is outside [0, n). */
#ifdef FUSED_DOUBLE
typedef int64_t lane_index;
#else
typedef int32_t lane_index;
#endif
typedef real vec __attribute__((vector_size(64)));
typedef real unaligned_vec __attribute__((vector_size(64), aligned(sizeof(real)), may_alias));
typedef lane_index lanes __attribute__((vector_size(64)));
#define VL ((int)(64 / sizeof(real)))  /* values per vector and per cache line */
#define TILE_ROWS 6                    /* 6 x 4 accumulators + 4 panel vectors: 28 of 32 registers */
#define PANEL_UNITS (4 * VL)
#define DEPTH 112                      /* a float32 panel of 112 x 64 is 28 KB (L1: 48 KB); measured best of 56-392 */
#define AHEAD 1                        /* tiles ahead whose lines are requested (1, 2 and 4 measured alike) */
#define LINES_PER_TILE (TILE_ROWS * (DEPTH / VL + 2))

static inline vec load_vec(const real *p) { return *(const unaligned_vec *)p; }
static inline void store_vec(real *p, vec v) { *(unaligned_vec *)p = v; }
static inline vec splat(real s) { return __builtin_shuffle((vec){s}, (lanes){0}); }  /* not 0 + s: an add */

/* zt[i, 0:PANEL_UNITS] += sum_{d < depth} x[i][d] panel[d, :] for i < R, z rows zs apart, panel
 * rows ps apart; on the way, the cache lines fetch[k] (reads) and claim[k] (writes) are requested,
 * one of each per step. */
#define TILE(R)                                                                                          \
    static __attribute__((noinline)) void tile##R(const real *const *x, const real *panel, size_t ps,   \
                                                  int depth, real *zt, size_t zs,                        \
                                                  const real *const *fetch, real *const *claim, int lines) { \
        vec acc[R][4];                                                                                   \
        for (int i = 0; i < R; i++)                                                                      \
            for (int j = 0; j < 4; j++) acc[i][j] = load_vec(zt + i * zs + j * VL);                      \
        for (int d = 0; d < depth; d++) {                                                                \
            if (d < lines) {                                                                             \
                __builtin_prefetch(fetch[d], 0, 2);                                                      \
                __builtin_prefetch(claim[d], 1, 2);                                                      \
            }                                                                                            \
            const real *w = panel + d * ps;                                                              \
            vec w0 = load_vec(w), w1 = load_vec(w + VL), w2 = load_vec(w + 2 * VL), w3 = load_vec(w + 3 * VL); \
            for (int i = 0; i < R; i++) {                                                                \
                vec xv = splat(x[i][d]);                                                                 \
                acc[i][0] += xv * w0;                                                                    \
                acc[i][1] += xv * w1;                                                                    \
                acc[i][2] += xv * w2;                                                                    \
                acc[i][3] += xv * w3;                                                                    \
            }                                                                                            \
        }                                                                                                \
        for (int i = 0; i < R; i++)                                                                      \
            for (int j = 0; j < 4; j++) store_vec(zt + i * zs + j * VL, acc[i][j]);                      \
        for (int k = depth; k < lines; k++) {                                                            \
            __builtin_prefetch(fetch[k], 0, 2);                                                          \
            __builtin_prefetch(claim[k], 1, 2);                                                          \
        }                                                                                                \
    }
TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6)
typedef void (*tile_fn)(const real *const *, const real *, size_t, int, real *, size_t, const real *const *,
                        real *const *, int);
static const tile_fn tiles[TILE_ROWS + 1] = {NULL, tile1, tile2, tile3, tile4, tile5, tile6};

/* dst[j, i] = src[i, j] for i < rows, j < cols (rows ss and ds apart). VL x VL blocks are
 * transposed in registers: log2(VL) rounds of two-vector shuffles, round k swapping the
 * off-diagonal h x h blocks (h = VL / 2^(k+1)) of every 2h x 2h block; the edges one by one. */
static void transpose(int rows, int cols, const real *src, size_t ss, real *dst, size_t ds) {
    enum { ROUNDS = VL == 16 ? 4 : 3 };
    lanes lo[ROUNDS], hi[ROUNDS];
    for (int k = 0, h = VL / 2; k < ROUNDS; k++, h /= 2)
        for (int l = 0; l < VL; l++) {
            lo[k][l] = (l & h) ? VL + l - h : l;
            hi[k][l] = (l & h) ? VL + l : l + h;
        }
    int i = 0;
    for (; i + VL <= rows; i += VL) {
        int j = 0;
        for (; j + VL <= cols; j += VL) {
            vec r[VL];
#pragma GCC unroll 16
            for (int a = 0; a < VL; a++) r[a] = load_vec(src + (i + a) * ss + j);
#pragma GCC unroll 4
            for (int k = 0; k < ROUNDS; k++) {
                const int h = VL >> (k + 1);
#pragma GCC unroll 16
                for (int a = 0; a < VL; a++)
                    if (!(a & h)) {
                        vec ra = r[a], rb = r[a | h];
                        r[a] = __builtin_shuffle(ra, rb, lo[k]);
                        r[a | h] = __builtin_shuffle(ra, rb, hi[k]);
                    }
            }
#pragma GCC unroll 16
            for (int a = 0; a < VL; a++) store_vec(dst + (j + a) * ds + i, r[a]);
        }
        for (; j < cols; j++)
            for (int a = 0; a < VL; a++) dst[j * ds + i + a] = src[(i + a) * ss + j];
    }
    for (; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[j * ds + i] = src[i * ss + j];
}

/* panel[d, u] = W[u, d] for u < units, d < depth (W's rows D apart), 0 for units <= u < PANEL_UNITS. */
static void pack_panel(const real *W, size_t D, int units, int depth, real *panel) {
    transpose(units, depth, W, D, panel, PANEL_UNITS);
    for (int d = 0; d < depth && units < PANEL_UNITS; d++)
        memset(panel + (size_t)d * PANEL_UNITS + units, 0, (size_t)(PANEL_UNITS - units) * sizeof(real));
}

/* zt (rows < TILE_ROWS, zs apart) += x panel for ``units`` <= PANEL_UNITS columns: straight into z
 * when they fill the panel, else through a full-width buffer (the panel's extra columns dropped). */
static void tile_into(int rows, int units, const real *const *x, const real *panel, size_t ps, int depth,
                      real *zt, size_t zs, const real *const *fetch, real *const *claim, int lines) {
    if (units == PANEL_UNITS) {
        tiles[rows](x, panel, ps, depth, zt, zs, fetch, claim, lines);
        return;
    }
    real tail[TILE_ROWS * PANEL_UNITS];
    for (int i = 0; i < rows; i++)
        for (int u = 0; u < PANEL_UNITS; u++) tail[i * PANEL_UNITS + u] = u < units ? zt[i * zs + u] : 0;
    tiles[rows](x, panel, ps, depth, tail, PANEL_UNITS, fetch, claim, lines);
    for (int i = 0; i < rows; i++) memcpy(zt + i * zs, tail + i * PANEL_UNITS, (size_t)units * sizeof(real));
}

/* Rows b_lo .. b_hi-1 of one data order: its sample indices ids, and x, where their copies go. */
typedef struct { const int64_t *ids; int b_lo, b_hi; real *x; } sample_rows;

/* z rows (N apart) = bias + x W^T for the samples ``now``, x rows (D apart) copied to now.x; the
 * rows ``after`` (a thread's next work, if any: ids NULL otherwise) are requested on the way. */
static void first_layer_rows(const real *X, int N, int D, const real *Ws, const real *bs, sample_rows now,
                             sample_rows after, real *z, real *panel) {
    const real *fetch[LINES_PER_TILE];
    real *claim[LINES_PER_TILE];
    const int ntiles = (now.b_hi - now.b_lo + TILE_ROWS - 1) / TILE_ROWS, depths = (D + DEPTH - 1) / DEPTH;
    for (int b = now.b_lo; b < now.b_hi; b++) memcpy(z + (size_t)b * N, bs, (size_t)N * sizeof(real));
    for (int c0 = 0; c0 < N; c0 += PANEL_UNITS) {
        const int units = N - c0 < PANEL_UNITS ? N - c0 : PANEL_UNITS;
        for (int d0 = 0; d0 < D; d0 += DEPTH) {
            const int depth = D - d0 < DEPTH ? D - d0 : DEPTH;
            pack_panel(Ws + (size_t)c0 * D + d0, D, units, depth, panel);
            for (int b0 = now.b_lo; b0 < now.b_hi; b0 += TILE_ROWS) {
                const int rows = now.b_hi - b0 < TILE_ROWS ? now.b_hi - b0 : TILE_ROWS;
                const real *xt[TILE_ROWS];  /* the first units read the dataset, later ones x */
                for (int i = 0; i < rows; i++)
                    xt[i] = c0 == 0 ? X + now.ids[b0 + i] * D + d0 : now.x + (size_t)(b0 + i) * D + d0;
                int lines = 0;
                if (c0 == 0) {  /* the tile AHEAD on (depth-major), in these rows or the next */
                    int q = d0 / DEPTH * ntiles + (b0 - now.b_lo) / TILE_ROWS + AHEAD, q_tiles = ntiles;
                    sample_rows ahead = now;
                    if (q >= depths * ntiles) {
                        q -= depths * ntiles;
                        ahead = after;
                        q_tiles = ahead.ids ? (ahead.b_hi - ahead.b_lo + TILE_ROWS - 1) / TILE_ROWS : 0;
                    }
                    if (q < depths * q_tiles) {
                        const int qb = ahead.b_lo + q % q_tiles * TILE_ROWS, qd = q / q_tiles * DEPTH;
                        const int q_rows = ahead.b_hi - qb < TILE_ROWS ? ahead.b_hi - qb : TILE_ROWS;
                        const int q_depth = D - qd < DEPTH ? D - qd : DEPTH;
                        for (int i = 0; i < q_rows; i++)
                            for (int l = 0; l < q_depth; l += VL, lines++) {
                                fetch[lines] = X + ahead.ids[qb + i] * D + qd + l;
                                claim[lines] = ahead.x + (size_t)(qb + i) * D + qd + l;
                            }
                    }
                }
                tile_into(rows, units, xt, panel, PANEL_UNITS, depth, z + (size_t)b0 * N + c0, N, fetch, claim, lines);
                if (c0 == 0)
                    for (int i = 0; i < rows; i++)
                        memcpy(now.x + (size_t)(b0 + i) * D + d0, xt[i], (size_t)depth * sizeof(real));
            }
        }
    }
}

/* Whether every index idx[s * stride + b], s < S, b < B, is in [0, n): checked before anything is written. */
static int indices_in_range(int S, int B, const int64_t *idx, int64_t stride, int64_t n) {
    for (int s = 0; s < S; s++)
        for (int b = 0; b < B; b++)
            if (idx[s * stride + b] < 0 || idx[s * stride + b] >= n) return 0;
    return 1;
}

/* A thread's share of the work: items are (data order, part of its rows); with fewer data
 * orders than threads (or not a multiple of them) each order's rows are split over the threads. */
static sample_rows rows_of(int item, int parts, int part_rows, int B, const int64_t *idx, int64_t idx_stride,
                           real *x, int D) {
    const int s = item / parts, lo = (item % parts) * part_rows, hi = lo + part_rows;
    return (sample_rows){idx + s * idx_stride, lo < B ? lo : B, hi < B ? hi : B, x + (size_t)s * B * D};
}

int first_layer_pass(int S, int B, int N, int D, const real *X, int64_t n, const int64_t *idx,
                     int64_t idx_stride, const real *W, const real *bias, real *z, real *x) {
    if (!indices_in_range(S, B, idx, idx_stride, n)) return -1;
    const int threads = omp_get_max_threads();
    const int parts = S % threads == 0 || B < 2 * TILE_ROWS * threads ? 1 : threads;
    const int part_rows = ((B + TILE_ROWS - 1) / TILE_ROWS + parts - 1) / parts * TILE_ROWS;
    const int items = S * parts;
#pragma omp parallel
    {
        real *panel = aligned_alloc(64, (size_t)DEPTH * PANEL_UNITS * sizeof(real));
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int first = (int)((int64_t)items * t / nt), last = (int)((int64_t)items * (t + 1) / nt);
        for (int item = first; item < last; item++) {
            const int s = item / parts;
            const sample_rows now = rows_of(item, parts, part_rows, B, idx, idx_stride, x, D);
            const sample_rows after = item + 1 < last ? rows_of(item + 1, parts, part_rows, B, idx, idx_stride, x, D)
                                                      : (sample_rows){NULL, 0, 0, NULL};
            if (now.b_lo < now.b_hi)
                first_layer_rows(X, N, D, W + (size_t)s * N * D, bias + (size_t)s * N, now, after,
                                 z + (size_t)s * B * N, panel);
        }
        free(panel);
    }
    return 0;
}

/* One training step of R encoder runs (ReLU, L_lse + L_var + L_tc), each on a data order of its
 * own, done run by run: a thread takes a run through its first layer, objective, weight gradient
 * and optimizer update while the run's minibatch, activations and gradients stay in its caches
 * (about 1 MB at the book's sizes), instead of each stage sweeping all runs through memory in
 * turn. The same arithmetic as first_layer_pass, the three passes above with the two small GEMMs
 * between them in C, the weight gradient x^T dL/dz, and torch's Adam or SGD:
 *   m += (1 - beta1) (g - m),  v = beta2 v + (1 - beta2) g^2,  p -= lr / bc1 * m / (sqrt(v) / bc2_sqrt + eps)
 *   p -= lr g   (SGD)
 * with bc1 = 1 - beta1^t and bc2_sqrt = sqrt(1 - beta2^t) at step t. W (R, K, D), bias (R, K)
 * and, for runs with adam[r] = 1, their Adam moments m_w, v_w, m_b, v_b (same shapes) are updated
 * in place; terms (5, R) as relu_infomax's. scratch: encoder_step_scratch(B, K, D) values per
 * thread. Returns 0, or -1 (nothing written) if an index is outside [0, n). */
static size_t vec_round(size_t count) { return (count + VL - 1) / VL * VL; }  /* keeps 64-byte alignment */

int team_size(void) { return omp_get_max_threads(); }  /* the most threads a parallel region here gets */

size_t encoder_step_scratch(int B, int K, int D) {
    return vec_round((size_t)B * D + PANEL_UNITS) + 2 * vec_round((size_t)B * K) + vec_round((size_t)B * K + PANEL_UNITS)
           + 2 * vec_round((size_t)K * B) + vec_round((size_t)K * K) + vec_round((size_t)K * K + PANEL_UNITS)
           + vec_round((size_t)K * PANEL_UNITS) + vec_round(K) + vec_round(4 * (size_t)K) + (size_t)DEPTH * PANEL_UNITS;
}

/* c (M, N) += a b for a (M, L) and b (L, N), rows lda, ldb and ldc apart, through the tiles: a's
 * rows are the tiles' samples, b the panel read in place. b is read up to PANEL_UNITS values past
 * the end of its last row (dropped): the caller leaves that room. */
static void small_gemm(int M, int N, int L, const real *a, size_t lda, const real *b, size_t ldb, real *c,
                       size_t ldc) {
    for (int n0 = 0; n0 < N; n0 += PANEL_UNITS) {
        const int units = N - n0 < PANEL_UNITS ? N - n0 : PANEL_UNITS;
        for (int m0 = 0; m0 < M; m0 += TILE_ROWS) {
            const int rows = M - m0 < TILE_ROWS ? M - m0 : TILE_ROWS;
            const real *at[TILE_ROWS];
            for (int i = 0; i < rows; i++) at[i] = a + (size_t)(m0 + i) * lda;
            tile_into(rows, units, at, b + n0, ldb, L, c + m0 * ldc + n0, ldc, NULL, NULL, 0);
        }
    }
}

#if defined(__AVX512F__) && !defined(FUSED_DOUBLE)
#include <immintrin.h>
/* 1 / (sqrt(v) / root_bc2 + eps) for 16 values v >= 0, to a few ulp: the hardware's 14-bit
 * reciprocal square root and reciprocal, each refined by a Newton step, instead of a square root
 * and a division (one per 16 values every 10-12 cycles each: with them Adam took 5% longer a step
 * here, measured). Not bit for bit torch's Adam, which divides; within float32 rounding of it. */
static inline __m512 adam_denominator_inverse(__m512 v, __m512 inv_root_bc2, __m512 eps) {
    const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f), two = _mm512_set1_ps(2.0f);
    __m512 y = _mm512_rsqrt14_ps(v);                                    /* 1/sqrt(v), +inf at 0 */
    y = _mm512_mul_ps(y, _mm512_fnmadd_ps(_mm512_mul_ps(half, v), _mm512_mul_ps(y, y), three_halves));
    __m512 root = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ), v, y);
    __m512 d = _mm512_fmadd_ps(root, inv_root_bc2, eps);
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, two));
}
#endif

static void optimizer_update(size_t count, real *p, const real *g, real *m, real *v, int adam, real lr,
                             real beta1, real beta2, real eps, double bc1, double bc2_sqrt) {
    if (!adam) {
#pragma omp simd
        for (size_t j = 0; j < count; j++) p[j] -= lr * g[j];
        return;
    }
    const real step_size = (real)((double)lr / bc1), root_bc2 = (real)bc2_sqrt, keep = 1 - beta1, new_v = 1 - beta2;
    size_t j = 0;
#if defined(__AVX512F__) && !defined(FUSED_DOUBLE)
    const __m512 keep_v = _mm512_set1_ps(keep), beta2_v = _mm512_set1_ps(beta2), new_v_v = _mm512_set1_ps(new_v);
    const __m512 step_v = _mm512_set1_ps(step_size), inv_root = _mm512_set1_ps(1.0f / root_bc2), eps_v = _mm512_set1_ps(eps);
    for (; j + 16 <= count; j += 16) {
        __m512 gj = _mm512_loadu_ps(g + j), mj = _mm512_loadu_ps(m + j), vj = _mm512_loadu_ps(v + j);
        mj = _mm512_fmadd_ps(keep_v, _mm512_sub_ps(gj, mj), mj);
        vj = _mm512_fmadd_ps(new_v_v, _mm512_mul_ps(gj, gj), _mm512_mul_ps(beta2_v, vj));
        _mm512_storeu_ps(m + j, mj);
        _mm512_storeu_ps(v + j, vj);
        __m512 step = _mm512_mul_ps(_mm512_mul_ps(step_v, mj), adam_denominator_inverse(vj, inv_root, eps_v));
        _mm512_storeu_ps(p + j, _mm512_sub_ps(_mm512_loadu_ps(p + j), step));
    }
#endif
    for (; j < count; j++) {
        m[j] += keep * (g[j] - m[j]);
        v[j] = beta2 * v[j] + new_v * g[j] * g[j];
        p[j] -= step_size * m[j] / (SQRT(v[j]) / root_bc2 + eps);
    }
}

int encoder_step_pass(int R, int B, int K, int D, const real *X, int64_t n, const int64_t *idx, int64_t idx_stride,
                      real *W, real *bias, const real *lam_lse, const real *lam_var, const real *lam_tc, real scale,
                      real var_eps, real corr_eps, const int32_t *adam, const real *lr, real *m_w, real *v_w,
                      real *m_b, real *v_b, real beta1, real beta2, real eps, double bc1, double bc2_sqrt,
                      real *scratch, real *terms) {
    if (!indices_in_range(R, B, idx, idx_stride, n)) return -1;
    const size_t per_thread = encoder_step_scratch(B, K, D);
#pragma omp parallel
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        /* per thread: x (B, D), z, g and centred (B, K), their transposes gz_t and c_t (K, B), gram
         * and dcov (K, K), a slice of the weight gradient (K, PANEL_UNITS), grad_b (K); the three
         * matrices read as panels (x, centred, dcov) with room after */
        real *x = scratch + per_thread * t;
        real *z = x + vec_round((size_t)B * D + PANEL_UNITS), *g = z + vec_round((size_t)B * K);
        real *centred = g + vec_round((size_t)B * K), *gz_t = centred + vec_round((size_t)B * K + PANEL_UNITS);
        real *c_t = gz_t + vec_round((size_t)K * B), *gram = c_t + vec_round((size_t)K * B);
        real *dcov = gram + vec_round((size_t)K * K), *grad_w = dcov + vec_round((size_t)K * K + PANEL_UNITS);
        real *grad_b = grad_w + vec_round((size_t)K * PANEL_UNITS), *small = grad_b + vec_round(K);
        real *panel = small + vec_round(4 * (size_t)K);
        /* the room after the panels' last rows: read, and dropped, by the last tiles of a row */
        memset(x + (size_t)B * D, 0, PANEL_UNITS * sizeof(real));
        memset(centred + (size_t)B * K, 0, PANEL_UNITS * sizeof(real));
        memset(dcov + (size_t)K * K, 0, PANEL_UNITS * sizeof(real));
        const int first = (int)((int64_t)R * t / nt), last = (int)((int64_t)R * (t + 1) / nt);
        for (int r = first; r < last; r++) {
            real *Wr = W + (size_t)r * K * D, *br = bias + (size_t)r * K;
            const sample_rows now = {idx + r * idx_stride, 0, B, x};
            const sample_rows after = r + 1 < last ? (sample_rows){idx + (r + 1) * idx_stride, 0, B, x}
                                                   : (sample_rows){NULL, 0, 0, NULL};
            first_layer_rows(X, K, D, Wr, br, now, after, z, panel);
            /* the objective: pass 1, the covariance, pass 2, dL/da += A_c dcov, pass 3 */
            double lse = 0.0;
            for (int b = 0; b < B; b++)
                lse += lse_row(K, z + (size_t)b * K, lam_lse[r] * scale, g + (size_t)b * K, centred + (size_t)b * K);
            terms[R + r] = (real)(lse * scale);
            centre_run(B, K, centred, small);
            /* gram = A_c^T A_c and then dL/da += A_c dcov, both through the GEMM tiles */
            transpose(B, K, centred, K, c_t, B);
            memset(gram, 0, (size_t)K * K * sizeof(real));
            small_gemm(K, K, B, c_t, B, centred, K, gram, K);
            infomax_run(R, r, B, K, gram, lam_lse, lam_var, lam_tc, var_eps, corr_eps, dcov, small, terms);
            small_gemm(B, K, K, centred, K, dcov, K, g, K);
            relu_grad_run(B, K, z, K, g, g, grad_b);  /* dL/dz over dL/da, in place */
            /* the weight gradient dL/dz^T x, units as the tiles' rows, PANEL_UNITS inputs at a
             * time, each slice of the weights updated while its gradient is in L1 */
            transpose(B, K, g, K, gz_t, B);
            real *m_r = adam[r] ? m_w + (size_t)r * K * D : NULL, *v_r = adam[r] ? v_w + (size_t)r * K * D : NULL;
            for (int d0 = 0; d0 < D; d0 += PANEL_UNITS) {
                const int span = D - d0 < PANEL_UNITS ? D - d0 : PANEL_UNITS;
                memset(grad_w, 0, (size_t)K * PANEL_UNITS * sizeof(real));
                small_gemm(K, span, B, gz_t, B, x + d0, D, grad_w, PANEL_UNITS);
                for (int k = 0; k < K; k++) {
                    const size_t at = (size_t)k * D + d0;
                    optimizer_update(span, Wr + at, grad_w + (size_t)k * PANEL_UNITS, m_r ? m_r + at : NULL,
                                     v_r ? v_r + at : NULL, adam[r], lr[r], beta1, beta2, eps, bc1, bc2_sqrt);
                }
            }
            optimizer_update((size_t)K, br, grad_b, adam[r] ? m_b + (size_t)r * K : NULL,
                             adam[r] ? v_b + (size_t)r * K : NULL, adam[r], lr[r], beta1, beta2, eps, bc1, bc2_sqrt);
        }
    }
    return 0;
}

/* The engine's elementwise work fused in C: the encoder's objective and gradient for a stack of
 * runs in three passes, and the standard SAE's in two (at the end of the file).
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

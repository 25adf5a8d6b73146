/* Native loops of sparse SAE training and of permutation nulls (loaded by loader.py, called through wrappers.py).
 *
 * Plain C11 + OpenMP, compiled on the user's machine with -O3 -march=native.
 * Every output element is written by one thread and every sum runs in a fixed
 * order, so the results do not depend on the number of threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GROUPS_PER_K 4 /* the top-k's first pass takes the maxima of 4k column groups */
#define BLOCK 16 /* the top-k also keeps its group maxima per block of 16 segments */
#define LANES 16 /* independent accumulators of a dot product (vectorisable, fixed order) */

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } c = { (uint32_t)h << 16 };
    return c.f;
}

/* ---------------------------------------------------------------- top-k per row */

static inline void swap2(float *v, int64_t *ix, int64_t a, int64_t b) {
    float tv = v[a]; v[a] = v[b]; v[b] = tv;
    int64_t ti = ix[a]; ix[a] = ix[b]; ix[b] = ti;
}

/* Reorder v[0..len) (and ix alongside) so that v[0..k) hold its k largest values: quickselect with
 * three-way partitions (bfloat16 rows hold many equal values) and median-of-three pivots, so it is
 * deterministic.  Needs 1 <= k <= len.  Returns the k-th largest value. */
static float select_largest(float *v, int64_t *ix, int64_t len, int64_t k) {
    int64_t lo = 0, hi = len, target = k - 1;
    while (hi - lo > 1) {
        float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi - 1];
        float pivot = fmaxf(fminf(a, b), fminf(fmaxf(a, b), c));
        int64_t gt = lo, i = lo, lt = hi; /* [lo, gt) > pivot, [gt, lt) == pivot, [lt, hi) < pivot */
        while (i < lt) {
            if (v[i] > pivot) swap2(v, ix, i++, gt++);
            else if (v[i] < pivot) swap2(v, ix, i, --lt);
            else i++;
        }
        if (target < gt) hi = gt;
        else if (target < lt) return pivot;
        else lo = lt;
    }
    return v[target];
}

/* Exact top-k of each row of x + bias (x [n, width] float32 or bfloat16 as uint16 bits, bias
 * [width] float32, added in float32): values [n, k] as float32 and columns [n, k], unsorted.
 *
 * The row's first segments * m columns (m = 4k groups, segments = width / m) fall in m strided
 * groups, group c holding columns c, c + m, c + 2m, ...  Pass 1 takes each group's maximum (an
 * elementwise max of the row's segments, which the compiler vectorises), kept per block of BLOCK
 * consecutive segments.  The k-th largest group maximum, tau, bounds the k-th largest value from below
 * (the k best groups each hold a value >= tau).  Pass 2 collects the values >= tau of the groups
 * whose maximum reaches tau, reading only the blocks whose maximum reaches tau (a block maximum below
 * tau rules out all its values: at width 16384, k 32 it reads about 600 values instead of 4000),
 * plus the columns past segments * m: a few dozen candidates, of which a quickselect keeps the k
 * largest.  More groups would make pass 2 shorter but the selection of tau longer; 4k measured best at
 * width 16384, k 32.  The candidates come in the same order as without blocks (group by group,
 * column by column), so the output does not depend on BLOCK. */
#define DEFINE_TOPK(NAME, T, LOAD)                                                              \
    void NAME(const T *x, const float *bias, int64_t n, int64_t width, int64_t k, float *vals, \
              int64_t *idx, int threads) {                                                      \
        int64_t m = GROUPS_PER_K * k, segments = width / m;                                     \
        if (segments < 2) m = segments = 0; /* narrow rows: every column is a candidate */      \
        int64_t tail = segments * m, blocks = (segments + BLOCK - 1) / BLOCK;                   \
        _Pragma("omp parallel num_threads(threads)") {                                         \
            float *gmax = malloc((size_t)(m + 1) * sizeof(float));                              \
            int64_t *gid = malloc((size_t)(m + 1) * sizeof(int64_t));                           \
            float *cand = malloc((size_t)width * sizeof(float));                                \
            int64_t *cid = malloc((size_t)width * sizeof(int64_t));                             \
            float *bmax = malloc((size_t)(blocks * m + 1) * sizeof(float));                     \
            _Pragma("omp for schedule(static)")                                                 \
            for (int64_t r = 0; r < n; r++) {                                                   \
                const T *row = x + r * width;                                                   \
                float tau = -INFINITY;                                                          \
                int64_t nc = 0;                                                                 \
                if (m > 0) {                                                                    \
                    for (int64_t c = 0; c < m; c++) bmax[c] = LOAD(row[c]) + bias[c];           \
                    for (int64_t s = 1; s < segments; s++) {                                    \
                        const T *seg = row + s * m;                                             \
                        float *bm = bmax + (s / BLOCK) * m;                                     \
                        if (s % BLOCK == 0)                                                     \
                            for (int64_t c = 0; c < m; c++) bm[c] = -INFINITY;                  \
                        for (int64_t c = 0; c < m; c++) {                                       \
                            float v = LOAD(seg[c]) + bias[s * m + c];                           \
                            bm[c] = v > bm[c] ? v : bm[c];                                      \
                        }                                                                       \
                    }                                                                           \
                    for (int64_t c = 0; c < m; c++) gmax[c] = bmax[c];                          \
                    for (int64_t b = 1; b < blocks; b++)                                        \
                        for (int64_t c = 0; c < m; c++)                                         \
                            gmax[c] = bmax[b * m + c] > gmax[c] ? bmax[b * m + c] : gmax[c];    \
                    for (int64_t c = 0; c < m; c++) cand[c] = gmax[c], gid[c] = c;              \
                    tau = select_largest(cand, gid, m, k);                                      \
                    for (int64_t c = 0; c < m; c++) {                                           \
                        if (!(gmax[c] >= tau)) continue;                                        \
                        for (int64_t b = 0; b < blocks; b++) {                                  \
                            if (!(bmax[b * m + c] >= tau)) continue;                            \
                            int64_t end = (b + 1) * BLOCK < segments ? (b + 1) * BLOCK : segments; \
                            for (int64_t s = b * BLOCK; s < end; s++) {                         \
                                float v = LOAD(row[s * m + c]) + bias[s * m + c];               \
                                if (v >= tau) cand[nc] = v, cid[nc++] = s * m + c;              \
                            }                                                                   \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
                for (int64_t j = tail; j < width; j++) {                                        \
                    float v = LOAD(row[j]) + bias[j];                                           \
                    if (v >= tau) cand[nc] = v, cid[nc++] = j;                                  \
                }                                                                               \
                select_largest(cand, cid, nc, k);                                               \
                memcpy(vals + r * k, cand, (size_t)k * sizeof(float));                          \
                memcpy(idx + r * k, cid, (size_t)k * sizeof(int64_t));                          \
            }                                                                                   \
            free(gmax);                                                                         \
            free(gid);                                                                          \
            free(cand);                                                                         \
            free(cid);                                                                          \
            free(bmax);                                                                         \
        }                                                                                       \
    }

#define LOAD_F32(x) (x)
DEFINE_TOPK(topk_rows_f32, float, LOAD_F32)
DEFINE_TOPK(topk_rows_bf16, uint16_t, bf16_to_f32)

/* ---------------------------------------------------------------- codes grouped by latent */

/* Counting sort of the codes by latent: order [m] lists code positions latent by latent (in their
 * original order), starts [n_latents + 1] where each latent's run begins. */
void latent_order(const int64_t *latent, int64_t m, int64_t n_latents, int64_t *starts, int64_t *order) {
    memset(starts, 0, (size_t)(n_latents + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < m; i++) starts[latent[i] + 1]++;
    for (int64_t j = 0; j < n_latents; j++) starts[j + 1] += starts[j];
    for (int64_t i = 0; i < m; i++) order[starts[latent[i]]++] = i;
    for (int64_t j = n_latents; j > 0; j--) starts[j] = starts[j - 1];
    starts[0] = 0;
}

/* out[j] = sum over the codes i of latent j of coeff[i] * x[row[i]]: the transposed sparse-dense
 * product S^T x, S [n, n_latents] holding coeff.  out [n_latents, d]; colsum [n_latents] (may be
 * NULL) gets each latent's sum of coeff. */
void scatter_by_latent(const int64_t *order, const int64_t *starts, const int64_t *row, const float *coeff,
                       const float *x, int64_t n_latents, int64_t d, float *out, float *colsum, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t j = 0; j < n_latents; j++) {
        float *o = out + j * d;
        memset(o, 0, (size_t)d * sizeof(float));
        float s = 0.0f;
        int64_t p = starts[j];
        for (; p + 1 < starts[j + 1]; p += 2) { /* two codes per sweep of o: half its loads and stores */
            int64_t i0 = order[p], i1 = order[p + 1];
            float c0 = coeff[i0], c1 = coeff[i1];
            const float *x0 = x + row[i0] * d, *x1 = x + row[i1] * d;
            s += c0;
            s += c1;
            for (int64_t t = 0; t < d; t++) o[t] = (o[t] + c0 * x0[t]) + c1 * x1[t];
        }
        if (p < starts[j + 1]) {
            int64_t i = order[p];
            float c = coeff[i];
            const float *xr = x + row[i] * d;
            s += c;
            for (int64_t t = 0; t < d; t++) o[t] += c * xr[t];
        }
        if (colsum) colsum[j] = s;
    }
}

/* Backward of the sparse decode recon[r] = sum of values[i] w[latent i] over row r's codes, given
 * grad [n, d] of recon: grad_values[i] = <grad[row[i]], w[j]> and grad_w[j] = sum of values[i] * grad[row[i]]
 * over the codes i of latent j (w, grad_w [n_latents, d]).  Latent by latent, in one pass: each code's
 * row of grad is fetched once for both products (the rows come in random order and fetching them is
 * what costs), and w[j] and grad_w[j] stay in the L1 cache while latent j's codes run. */
void decode_backward(const int64_t *order, const int64_t *starts, const int64_t *row, const float *values,
                     const float *grad, const float *w, int64_t n_latents, int64_t d, float *grad_values,
                     float *grad_w, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t j = 0; j < n_latents; j++) {
        const float *wr = w + j * d;
        float *o = grad_w + j * d;
        memset(o, 0, (size_t)d * sizeof(float));
        int64_t p = starts[j];
        for (; p + 1 < starts[j + 1]; p += 2) { /* two codes per sweep of o: half its loads and stores */
            int64_t i0 = order[p], i1 = order[p + 1];
            const float *g0 = grad + row[i0] * d, *g1 = grad + row[i1] * d;
            float c0 = values[i0], c1 = values[i1];
            float acc0[LANES] = { 0 }, acc1[LANES] = { 0 };
            int64_t t = 0;
            for (; t + LANES <= d; t += LANES)
                for (int l = 0; l < LANES; l++) {
                    acc0[l] += g0[t + l] * wr[t + l];
                    acc1[l] += g1[t + l] * wr[t + l];
                    o[t + l] = (o[t + l] + c0 * g0[t + l]) + c1 * g1[t + l];
                }
            float s0 = 0.0f, s1 = 0.0f;
            for (int l = 0; l < LANES; l++) s0 += acc0[l], s1 += acc1[l];
            for (; t < d; t++) s0 += g0[t] * wr[t], s1 += g1[t] * wr[t], o[t] = (o[t] + c0 * g0[t]) + c1 * g1[t];
            grad_values[i0] = s0;
            grad_values[i1] = s1;
        }
        if (p < starts[j + 1]) {
            int64_t i = order[p];
            const float *gr = grad + row[i] * d;
            float c = values[i];
            float acc[LANES] = { 0 };
            int64_t t = 0;
            for (; t + LANES <= d; t += LANES)
                for (int l = 0; l < LANES; l++) {
                    acc[l] += gr[t + l] * wr[t + l];
                    o[t + l] += c * gr[t + l];
                }
            float s = 0.0f;
            for (int l = 0; l < LANES; l++) s += acc[l];
            for (; t < d; t++) s += gr[t] * wr[t], o[t] += c * gr[t];
            grad_values[i] = s;
        }
    }
}

/* Permutation nulls of RSA and CKA: out[q] = sum_ij A[i, j] B[p_i, p_j] for each permutation p = perms[q]
 * (A, B [n, n] symmetric float32, perms [m, n] int32).  By symmetry only the diagonal and the part right
 * of it are visited; a row's terms are summed in LANES fixed float lanes, the rows in double.  One
 * permutation per thread: A and B (2 x 16 MB at n = 2000) stay in the shared cache, and each B row is
 * prefetched whole while the row before it runs (its columns are read in random order). */
void permuted_gram_dots(const float *A, const float *B, int64_t n, const int32_t *perms, int64_t m, double *out,
                        int threads) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
    for (int64_t q = 0; q < m; q++) {
        const int32_t *p = perms + q * n;
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *ar = A + i * n;
            const float *br = B + (int64_t)p[i] * n;
            if (i + 1 < n) { /* the next row is read at random columns: fetch it whole while this one runs */
                const char *next = (const char *)(B + (int64_t)p[i + 1] * n);
                for (int64_t b = 0; b < n * (int64_t)sizeof(float); b += 64) __builtin_prefetch(next + b);
            }
            float acc[LANES] = { 0 };
            int64_t j = i + 1;
            for (; j + LANES <= n; j += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += ar[j + l] * br[p[j + l]];
            float s = 0.0f;
            for (int l = 0; l < LANES; l++) s += acc[l];
            for (; j < n; j++) s += ar[j] * br[p[j]];
            total += (double)ar[i] * br[p[i]] + 2.0 * (double)s;
        }
        out[q] = total;
    }
}

/* Grouped BitLinear on the CPU: P ternary projections reading one input (exact integer products,
   threads split the output rows). Generic: no model-specific code here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tmm.h"

float mmf_quantize_row(const float *x, float r, const float *g, int64_t K, int64_t Kp, float qeps, int scale_div,
                       int8_t *q, int32_t *xsum) {
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float t = fabsf((x[k] * r) * g[k]);
        amax = t > amax ? t : amax;
    }
    if (!(amax >= qeps)) amax = qeps;
    float s = (scale_div & 1) ? 127.0f / amax : (1.0f / amax) * 127.0f;
    int away = scale_div & MMF_ROUND_HALF_AWAY;
    int32_t sum = 0;
    if (away) {  /* ties away from zero (roundf), as the released hgrn_bit kernels round */
        for (int64_t k = 0; k < K; k++) {
            float v = roundf(((x[k] * r) * g[k]) * s);
            v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
            q[k] = (int8_t)v;
            sum += (int32_t)q[k];
        }
    } else {
        for (int64_t k = 0; k < K; k++) {
            float v = ((x[k] * r) * g[k]) * s;
            v = v > 127.0f ? 127.0f : (v < -128.0f ? -128.0f : v);
            /* round half to even (as nearbyintf and torch.round) without a libm call, so the loop
               vectorizes: exact for |v| < 2^22 in round-to-nearest; -fno-fast-math keeps the two adds */
            v = (v + 12582912.0f) - 12582912.0f;
            q[k] = (int8_t)v;
            sum += (int32_t)q[k];
        }
    }
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    *xsum = sum;
    return s;
}

int64_t mmf_take(mmf_counter *c, int64_t n, int64_t chunk, int64_t *end) {
    int64_t i = __atomic_fetch_add(&c->next, chunk, __ATOMIC_RELAXED);
    if (i >= n) return -1;
    *end = i + chunk < n ? i + chunk : n;
    return i;
}

void mmf_tile_product(mmf_tile_fn fn, const mmf_lin *lin, int64_t t, const int8_t *xq, int64_t xstride, int M,
                      const int32_t *xsum, int32_t *acc) {
    int64_t Kc = lin->Kp / MMF_CHUNK_K;
    const uint8_t *w = lin->tiles + t * Kc * MMF_CHUNK_BYTES;
    for (int m0 = 0; m0 < M; m0 += MMF_MB) {
        int mb = M - m0 < MMF_MB ? M - m0 : MMF_MB;
        fn(w, xq + (int64_t)m0 * xstride, xstride, mb, Kc, acc + m0 * 16);
    }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < 16; r++) acc[m * 16 + r] -= xsum[m];
}

/* ------------------------------------------------------------------ plain integer products */
typedef struct {
    mmf_tile_fn fn;
    const uint8_t *tiles;
    const int8_t *x;  /* (P, M, Kp) int8 */
    const int8_t *xp; /* what the tile kernel reads: x, or its prepared rows of pb bytes */
    int32_t *out;
    int64_t P, M, N, Kc, pb;
    mmf_counter counter;
} mm_ctx;

static void mm_task(void *p, int tid, int nt) {
    (void)tid;
    mm_ctx *c = (mm_ctx *)p;
    int64_t Kp = c->Kc * 16, Np = (c->N + 15) / 16 * 16, ntile = Np / 16, end;
    int64_t items = c->P * ntile, chunk = items / (nt * 8) > 0 ? items / (nt * 8) : 1;
    int32_t *raw = (int32_t *)malloc(sizeof(int32_t) * 16 * MMF_MB);
    for (int64_t i = mmf_take(&c->counter, items, chunk, &end); i >= 0; i = mmf_take(&c->counter, items, chunk, &end))
        for (; i < end; i++) {
            int64_t p = i / ntile, t = i % ntile;
            const uint8_t *w = c->tiles + (p * ntile + t) * c->Kc * 64;
            for (int64_t m0 = 0; m0 < c->M; m0 += MMF_MB) {
                int mb = (int)(c->M - m0 < MMF_MB ? c->M - m0 : MMF_MB);
                const int8_t *x = c->x + (p * c->M + m0) * Kp;
                c->fn(w, c->xp + (p * c->M + m0) * c->pb, c->pb, mb, c->Kc, raw);
                for (int m = 0; m < mb; m++) {
                    int32_t s = 0;
                    for (int64_t k = 0; k < Kp; k++) s += x[m * Kp + k];
                    for (int r = 0; r < 16 && t * 16 + r < c->N; r++)
                        c->out[(p * c->M + m0 + m) * c->N + t * 16 + r] = raw[m * 16 + r] - s;
                }
            }
        }
    free(raw);
}

/* out (P, M, N) int32 = x_p (M, Kp) int8 @ W_p^T for P matrices of N rows in the layout of `path`
   (mmf_path_layout). Returns 0, -1 for an unsupported path, -2 when memory ran out. */
int mmf_mm(const uint8_t *tiles, const int8_t *x, int32_t *out, int64_t P, int64_t M, int64_t N, int64_t Kc, int path,
           mmf_pool *pool) {
    int64_t Kp = Kc * 16, pb = mmf_prep_bytes(path, Kp);
    mm_ctx c = {mmf_tile_kernel(path), tiles, x, x, out, P, M, N, Kc, pb, {0, {0}}};
    if (!c.fn) return -1;
    uint8_t *prep = 0;
    if (mmf_path_layout(path)) {
        prep = (uint8_t *)malloc((size_t)(P * M * pb));
        if (!prep) return -2;
        for (int64_t i = 0; i < P * M; i++) mmf_prepare(path, x + i * Kp, Kp, prep + i * pb);
        c.xp = (const int8_t *)prep;
    }
    mmf_pool_run(pool, mm_task, &c);
    free(prep);
    return 0;
}

/* ------------------------------------------------------------ grouped BitLinear, reference order */
typedef struct {
    mmf_tile_fn fn;
    const mmf_lin *lin;
    const float *x, *r;
    float *out;
    int64_t P, M;
    float qeps;
    int scale_div;
    int8_t *xq;
    uint8_t *xp; /* prepared rows (LUT paths) or NULL */
    int64_t pb;
    int path;
    int32_t *xsum;
    float *sx;
    mmf_counter cq, cp;
    mmf_pool *pool;
} group_ctx;

static void group_task(void *p, int tid, int nt) {
    (void)tid;
    group_ctx *c = (group_ctx *)p;
    const mmf_lin *l0 = c->lin;
    int64_t K = l0->K, Kp = l0->Kp, N = l0->N, ntile = l0->Np / 16, end;
    int64_t nq = c->P * c->M;
    for (int64_t i = mmf_take(&c->cq, nq, 1, &end); i >= 0; i = mmf_take(&c->cq, nq, 1, &end)) {
        int64_t pi = i / c->M, m = i % c->M;
        c->sx[i] = mmf_quantize_row(c->x + m * K, c->r[m], c->lin[pi].gain, K, Kp, c->qeps, c->scale_div,
                                    c->xq + i * Kp, c->xsum + i);
        if (c->xp) mmf_prepare(c->path, c->xq + i * Kp, Kp, c->xp + i * c->pb);
    }
    mmf_barrier(c->pool);
    int64_t items = c->P * ntile, chunk = items / (nt * 8) > 0 ? items / (nt * 8) : 1;
    int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * 16 * (size_t)c->M);
    for (int64_t i = mmf_take(&c->cp, items, chunk, &end); i >= 0; i = mmf_take(&c->cp, items, chunk, &end))
        for (; i < end; i++) {
            int64_t pi = i / ntile, t = i % ntile;
            const mmf_lin *lin = c->lin + pi;
            const int8_t *xr = c->xp ? (const int8_t *)(c->xp + pi * c->M * c->pb) : c->xq + pi * c->M * Kp;
            mmf_tile_product(c->fn, lin, t, xr, c->xp ? c->pb : Kp, (int)c->M, c->xsum + pi * c->M, acc);
            for (int64_t m = 0; m < c->M; m++) {
                float den = c->sx[pi * c->M + m] * lin->s_w;
                float *o = c->out + (pi * c->M + m) * N;
                for (int r = 0; r < 16 && t * 16 + r < N; r++) o[t * 16 + r] = (float)acc[m * 16 + r] / den;
            }
        }
    free(acc);
}

/* P BitLinears (same K and N) of one input x (M, K) fp32 after its RMSNorm factor r (M):
   out (P, M, N) = (x_q @ W_p^T) / (s_x * s_w), with the reference's fp32 operations in its order. */
int mmf_group_forward(const mmf_lin *lins, int64_t P, const float *x, const float *r, int64_t M, float *out,
                      float qeps, int scale_div, int path, mmf_pool *pool) {
    group_ctx c;
    memset(&c, 0, sizeof(c));
    c.fn = mmf_tile_kernel(path);
    if (!c.fn) return -1;
    c.lin = lins;
    c.x = x;
    c.r = r;
    c.out = out;
    c.P = P;
    c.M = M;
    c.qeps = qeps;
    c.scale_div = scale_div;
    c.pool = pool;
    c.path = path;
    c.pb = mmf_prep_bytes(path, lins[0].Kp);
    c.xq = (int8_t *)malloc((size_t)(P * M * lins[0].Kp));
    c.xp = mmf_path_layout(path) ? (uint8_t *)malloc((size_t)(P * M * c.pb)) : 0;
    c.xsum = (int32_t *)malloc(sizeof(int32_t) * (size_t)(P * M));
    c.sx = (float *)malloc(sizeof(float) * (size_t)(P * M));
    if (!c.xq || !c.xsum || !c.sx || (mmf_path_layout(path) && !c.xp)) {
        free(c.xq); free(c.xp); free(c.xsum); free(c.sx);
        return -2;
    }
    mmf_pool_run(pool, group_task, &c);
    free(c.xq);
    free(c.xp);
    free(c.xsum);
    free(c.sx);
    return 0;
}

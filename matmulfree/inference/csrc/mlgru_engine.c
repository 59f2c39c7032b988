/* The whole MatMul-free (MLGRU + GLU) forward pass on the CPU, for decode (T = 1) and for prefill
   (T > 1: the projections of all T tokens as one batched product per phase, the recurrence scanned
   along time in the epilogue) at any batch size. MLGRU-specific; it builds on the generic grouped
   BitLinear pieces of tmm_group.c.

   Per layer and chunk of rows (row m = b * Tc + t), four product phases, each preceded by a
   quantization phase (the BitLinear RMSNorm and per-token int8 quantization of its input):
     fcg   f, c, g of the same 16 channels per work item; epilogue: the recurrence and output gate;
     o     epilogue: residual add;
     glu   g and u halves of w_in for the same 16 channels; epilogue: SiLU(g) * u;
     down  epilogue: residual add;
   then the final norm and the head. Threads take row tiles from a shared counter; every output
   tile is 16 floats (one cache line), written by one thread. Element-wise math is fp32 with a
   polynomial exp, so results are close to (not bit-equal with) PyTorch's; the integer products
   are exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tmm.h"

typedef struct {
    mmf_lin f, c, g, o, gin, uin, down;
    const float *mixer_norm, *mlp_norm; /* block RMSNorm gains (d,) */
    float mixer_eps, mlp_eps;
    const float *g_norm; /* released gate: RMSNorm(g) gain (d,); NULL: paper gate g * sigmoid(h) */
    float g_eps;
    const float *lb; /* forget-gate lower bound (d,) or NULL */
} mmf_mlgru_layer;

typedef struct {
    int64_t L, d, l, V;
    const float *embed; /* (V, d) */
    const mmf_mlgru_layer *layers;
    const float *final_norm;
    float final_eps;
    const mmf_lin *head; /* NULL: full-precision head, applied by the caller to the normed output */
    float qeps;
    int scale_div;
} mmf_mlgru_model;

#define CHUNK_ROWS 64
#define PHASES_PER_LAYER 8

typedef struct {
    const mmf_mlgru_model *model;
    mmf_pool *pool;
    mmf_tile_fn fn;
    int nthreads, path, lut;
    int64_t mcap, kmax, pmax;
    float *x, *o, *gb, *hs, *p; /* (mcap, d) x4, (mcap, l) */
    int8_t *xq;                 /* (3, mcap, kmax) */
    uint8_t *xp;                /* (3, mcap, pmax) prepared rows of LUT paths, else NULL */
    float *sx;                  /* (3, mcap) */
    int32_t *xsum;              /* (3, mcap) */
    int32_t **acc;              /* per thread (3, mcap, 16) */
    float **scratch;            /* per thread (kmax,) */
    mmf_counter *counters;
    /* the current call */
    const int64_t *tokens;
    int64_t B, T, t0, Tc, M;
    float *h, *out;
    int last;
} mmf_engine;

static void *alloc64(size_t n) {
    size_t sz = (n + 63) / 64 * 64;
    void *p = aligned_alloc(64, sz ? sz : 64);
    if (p) memset(p, 0, sz ? sz : 64);
    return p;
}

/* ---------------------------------------------------------------------------- element-wise */
/* exp(x) to ~1 ulp (Cephes-style range reduction and polynomial); written to vectorize. */
static inline float mmf_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}
static inline float sigmoidf_(float x) { return 1.0f / (1.0f + mmf_expf(-x)); }
static inline float siluf_(float x) { return x / (1.0f + mmf_expf(-x)); }

/* 1 / sqrt(mean(v^2) + eps) of one row */
static float rms_factor(const float *v, int64_t n, float eps) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)v[i] * (double)v[i];
    return 1.0f / sqrtf((float)(s / (double)n) + eps);
}

/* dst = (src * rms_factor(src)) * gain */
static void rms_norm_row(const float *src, const float *gain, int64_t n, float eps, float *dst) {
    float r = rms_factor(src, n, eps);
    for (int64_t i = 0; i < n; i++) dst[i] = (src[i] * r) * gain[i];
}

/* BitLinear input of row `row` for lin: its RMSNorm (factor r of v, see rms_factor) + int8
   quantization into slot `slot` */
static void quantize_r(mmf_engine *e, const mmf_lin *lin, const float *v, float r, int slot, int64_t row) {
    int64_t i = slot * e->mcap + row;
    e->sx[i] = mmf_quantize_row(v, r, lin->gain, lin->K, lin->Kp, e->model->qeps, e->model->scale_div,
                                e->xq + i * e->kmax, e->xsum + i);
    if (e->lut) mmf_prepare(e->path, e->xq + i * e->kmax, lin->Kp, e->xp + i * e->pmax);
}

static void quantize_for(mmf_engine *e, const mmf_lin *lin, const float *v, int slot, int64_t row) {
    quantize_r(e, lin, v, rms_factor(v, lin->K, lin->eps), slot, row);
}

/* ------------------------------------------------------------------------------ phases */
static void product(mmf_engine *e, int tid, const mmf_lin *lin, int slot, int64_t t, int M, int32_t *acc) {
    const int8_t *x = e->lut ? (const int8_t *)(e->xp + slot * e->mcap * e->pmax) : e->xq + slot * e->mcap * e->kmax;
    mmf_tile_product(e->fn, lin, t, x, e->lut ? e->pmax : e->kmax, M, e->xsum + slot * e->mcap, acc);
    (void)tid;
}

static inline float rescale(const mmf_engine *e, const mmf_lin *lin, int slot, int64_t m, int32_t a) {
    return (float)a / (e->sx[slot * e->mcap + m] * lin->s_w);
}

static int64_t chunk_of(int64_t items, int nt) { return items / (nt * 4) > 0 ? items / (nt * 4) : 1; }

static void layer_phases(mmf_engine *e, int tid, int64_t li, mmf_counter *cnt) {
    const mmf_mlgru_model *md = e->model;
    const mmf_mlgru_layer *ly = md->layers + li;
    int64_t d = md->d, l = md->l, M = e->M, B = e->B, Tc = e->Tc, end;
    int nt = e->nthreads;
    float *sc = e->scratch[tid];
    int32_t *acc = e->acc[tid];
    float *h = e->h + li * B * d;

    /* fcg input: block norm, then the BitLinear norms of f, c, g (layer 0: the embedding first) */
    for (int64_t m = mmf_take(cnt + 0, M, 1, &end); m >= 0; m = mmf_take(cnt + 0, M, 1, &end)) {
        if (li == 0) {
            int64_t b = m / Tc, t = m % Tc;
            memcpy(e->x + m * d, md->embed + e->tokens[b * e->T + e->t0 + t] * d, sizeof(float) * (size_t)d);
        }
        rms_norm_row(e->x + m * d, ly->mixer_norm, d, ly->mixer_eps, sc);
        float r = rms_factor(sc, d, ly->f.eps); /* f, c and g normalise the same row */
        quantize_r(e, &ly->f, sc, r, 0, m);
        quantize_r(e, &ly->c, sc, ly->c.eps == ly->f.eps ? r : rms_factor(sc, d, ly->c.eps), 1, m);
        quantize_r(e, &ly->g, sc, ly->g.eps == ly->f.eps ? r : rms_factor(sc, d, ly->g.eps), 2, m);
    }
    mmf_barrier(e->pool);

    int64_t nd = ly->f.Np / 16;
    for (int64_t t = mmf_take(cnt + 1, nd, chunk_of(nd, nt), &end); t >= 0;
         t = mmf_take(cnt + 1, nd, chunk_of(nd, nt), &end))
        for (; t < end; t++) {
            int32_t *af = acc, *ac = acc + M * 16, *ag = acc + 2 * M * 16;
            product(e, tid, &ly->f, 0, t, (int)M, af);
            product(e, tid, &ly->c, 1, t, (int)M, ac);
            product(e, tid, &ly->g, 2, t, (int)M, ag);
            for (int r = 0; r < 16; r++) {
                int64_t i = t * 16 + r;
                if (i >= d) break;
                float lb = ly->lb ? ly->lb[i] : 0.0f;
                for (int64_t b = 0; b < B; b++) {
                    float hv = h[b * d + i];
                    for (int64_t tt = 0; tt < Tc; tt++) { /* the recurrence, in time order */
                        int64_t m = b * Tc + tt;
                        float f = sigmoidf_(rescale(e, &ly->f, 0, m, af[m * 16 + r]));
                        if (ly->lb) f = lb + (1.0f - lb) * f;
                        float cv = siluf_(rescale(e, &ly->c, 1, m, ac[m * 16 + r]));
                        hv = f * hv + (1.0f - f) * cv;
                        float g = rescale(e, &ly->g, 2, m, ag[m * 16 + r]);
                        if (ly->g_norm) {
                            e->gb[m * d + i] = g;
                            e->hs[m * d + i] = siluf_(hv);
                        } else {
                            e->o[m * d + i] = g * sigmoidf_(hv);
                        }
                    }
                    h[b * d + i] = hv;
                }
            }
        }
    mmf_barrier(e->pool);

    /* o input (released gate: o' = RMSNorm(g) * SiLU(h) first) */
    for (int64_t m = mmf_take(cnt + 2, M, 1, &end); m >= 0; m = mmf_take(cnt + 2, M, 1, &end)) {
        const float *v = e->o + m * d;
        if (ly->g_norm) {
            rms_norm_row(e->gb + m * d, ly->g_norm, d, ly->g_eps, sc);
            for (int64_t i = 0; i < d; i++) sc[i] *= e->hs[m * d + i];
            v = sc;
        }
        quantize_for(e, &ly->o, v, 0, m);
    }
    mmf_barrier(e->pool);
    for (int64_t t = mmf_take(cnt + 3, nd, chunk_of(nd, nt), &end); t >= 0;
         t = mmf_take(cnt + 3, nd, chunk_of(nd, nt), &end))
        for (; t < end; t++) {
            product(e, tid, &ly->o, 0, t, (int)M, acc);
            for (int64_t m = 0; m < M; m++)
                for (int r = 0; r < 16 && t * 16 + r < d; r++)
                    e->x[m * d + t * 16 + r] += rescale(e, &ly->o, 0, m, acc[m * 16 + r]);
        }
    mmf_barrier(e->pool);

    /* GLU */
    for (int64_t m = mmf_take(cnt + 4, M, 1, &end); m >= 0; m = mmf_take(cnt + 4, M, 1, &end)) {
        rms_norm_row(e->x + m * d, ly->mlp_norm, d, ly->mlp_eps, sc);
        quantize_for(e, &ly->gin, sc, 0, m); /* gin and uin share the gain and so the quantized input */
    }
    mmf_barrier(e->pool);
    int64_t nl = ly->gin.Np / 16;
    for (int64_t t = mmf_take(cnt + 5, nl, chunk_of(nl, nt), &end); t >= 0;
         t = mmf_take(cnt + 5, nl, chunk_of(nl, nt), &end))
        for (; t < end; t++) {
            int32_t *ag = acc, *au = acc + M * 16;
            product(e, tid, &ly->gin, 0, t, (int)M, ag);
            product(e, tid, &ly->uin, 0, t, (int)M, au);
            for (int64_t m = 0; m < M; m++)
                for (int r = 0; r < 16 && t * 16 + r < l; r++) {
                    float g = rescale(e, &ly->gin, 0, m, ag[m * 16 + r]);
                    float u = rescale(e, &ly->uin, 0, m, au[m * 16 + r]);
                    e->p[m * l + t * 16 + r] = siluf_(g) * u;
                }
        }
    mmf_barrier(e->pool);
    for (int64_t m = mmf_take(cnt + 6, M, 1, &end); m >= 0; m = mmf_take(cnt + 6, M, 1, &end))
        quantize_for(e, &ly->down, e->p + m * l, 0, m);
    mmf_barrier(e->pool);
    for (int64_t t = mmf_take(cnt + 7, nd, chunk_of(nd, nt), &end); t >= 0;
         t = mmf_take(cnt + 7, nd, chunk_of(nd, nt), &end))
        for (; t < end; t++) {
            product(e, tid, &ly->down, 0, t, (int)M, acc);
            for (int64_t m = 0; m < M; m++)
                for (int r = 0; r < 16 && t * 16 + r < d; r++)
                    e->x[m * d + t * 16 + r] += rescale(e, &ly->down, 0, m, acc[m * 16 + r]);
        }
    mmf_barrier(e->pool);
}

static void forward_task(void *p, int tid, int nt) {
    (void)nt;
    mmf_engine *e = (mmf_engine *)p;
    const mmf_mlgru_model *md = e->model;
    for (int64_t li = 0; li < md->L; li++) layer_phases(e, tid, li, e->counters + li * PHASES_PER_LAYER);
    if (!e->last) return;
    /* last position of every sequence: final norm, then the head (or the normed output) */
    mmf_counter *cnt = e->counters + md->L * PHASES_PER_LAYER;
    int64_t d = md->d, B = e->B, end;
    float *sc = e->scratch[tid];
    for (int64_t b = mmf_take(cnt, B, 1, &end); b >= 0; b = mmf_take(cnt, B, 1, &end)) {
        const float *xr = e->x + (b * e->Tc + e->Tc - 1) * d;
        if (md->head) {
            rms_norm_row(xr, md->final_norm, d, md->final_eps, sc);
            quantize_for(e, md->head, sc, 0, b);
        } else {
            rms_norm_row(xr, md->final_norm, d, md->final_eps, e->out + b * d);
        }
    }
    if (!md->head) return;
    mmf_barrier(e->pool);
    const mmf_lin *hd = md->head;
    int64_t nv = hd->Np / 16, V = hd->N;
    int32_t *acc = e->acc[tid];
    for (int64_t t = mmf_take(cnt + 1, nv, chunk_of(nv, nt), &end); t >= 0;
         t = mmf_take(cnt + 1, nv, chunk_of(nv, nt), &end))
        for (; t < end; t++) {
            product(e, tid, hd, 0, t, (int)B, acc);
            for (int64_t b = 0; b < B; b++)
                for (int r = 0; r < 16 && t * 16 + r < V; r++)
                    e->out[b * V + t * 16 + r] = rescale(e, hd, 0, b, acc[b * 16 + r]);
        }
}

/* ---------------------------------------------------------------------------------- API */
static void free_buffers(mmf_engine *e) {
    free(e->x); free(e->o); free(e->gb); free(e->hs); free(e->p); free(e->xq); free(e->xp); free(e->sx); free(e->xsum);
    if (e->acc)
        for (int t = 0; t < e->nthreads; t++) free(e->acc[t]);
    if (e->scratch)
        for (int t = 0; t < e->nthreads; t++) free(e->scratch[t]);
    free(e->acc); free(e->scratch);
    e->x = e->o = e->gb = e->hs = e->p = 0;
    e->xq = 0; e->xp = 0; e->sx = 0; e->xsum = 0; e->acc = 0; e->scratch = 0;
    e->mcap = 0;
}

static int reserve(mmf_engine *e, int64_t rows) {
    if (rows <= e->mcap) return 0;
    free_buffers(e);
    const mmf_mlgru_model *md = e->model;
    int64_t d = md->d, l = md->l, k = e->kmax;
    e->x = alloc64(sizeof(float) * rows * d);
    e->o = alloc64(sizeof(float) * rows * d);
    e->gb = alloc64(sizeof(float) * rows * d);
    e->hs = alloc64(sizeof(float) * rows * d);
    e->p = alloc64(sizeof(float) * rows * l);
    e->xq = alloc64(3 * rows * k);
    if (e->lut) e->xp = alloc64(3 * rows * e->pmax);
    e->sx = alloc64(sizeof(float) * 3 * rows);
    e->xsum = alloc64(sizeof(int32_t) * 3 * rows);
    e->acc = calloc((size_t)e->nthreads, sizeof(int32_t *));
    e->scratch = calloc((size_t)e->nthreads, sizeof(float *));
    if (!e->x || !e->o || !e->gb || !e->hs || !e->p || !e->xq || (e->lut && !e->xp) || !e->sx || !e->xsum || !e->acc || !e->scratch)
        return -1;
    for (int t = 0; t < e->nthreads; t++) {
        e->acc[t] = alloc64(sizeof(int32_t) * 3 * rows * 16);
        e->scratch[t] = alloc64(sizeof(float) * k);
        if (!e->acc[t] || !e->scratch[t]) return -1;
    }
    e->mcap = rows;
    return 0;
}

mmf_engine *mmf_engine_new(const mmf_mlgru_model *model, mmf_pool *pool, int path) {
    mmf_engine *e = (mmf_engine *)calloc(1, sizeof(mmf_engine));
    if (!e) return 0;
    e->model = model;
    e->pool = pool;
    e->nthreads = mmf_pool_threads(pool);
    e->fn = mmf_tile_kernel(path);
    int64_t k = model->layers[0].down.Kp;
    if (model->layers[0].f.Kp > k) k = model->layers[0].f.Kp;
    if (model->l > k) k = model->l;
    if (model->d > k) k = model->d;
    e->kmax = k;
    e->path = path;
    e->lut = mmf_path_layout(path);
    e->pmax = mmf_prep_bytes(path, k);
    e->counters = alloc64(sizeof(mmf_counter) * (size_t)(model->L * PHASES_PER_LAYER + 2));
    if (!e->fn || !e->counters) {
        free(e->counters);
        free(e);
        return 0;
    }
    return e;
}

void mmf_engine_free(mmf_engine *e) {
    if (!e) return;
    free_buffers(e);
    free(e->counters);
    free(e);
}

/* tokens (B, T) int64; h (L, B, d) fp32 state, updated in place (zeros for a fresh state); out: logits
   (B, V) of the last position, or the final-normed x (B, d) when the model has no ternary head.
   Returns 0, or -1 when memory ran out. */
int mmf_engine_forward(mmf_engine *e, const int64_t *tokens, int64_t B, int64_t T, float *h, float *out) {
    int64_t tc = CHUNK_ROWS / B > 0 ? CHUNK_ROWS / B : 1;
    if (tc > T) tc = T;
    if (reserve(e, B * tc) != 0) return -1;
    e->tokens = tokens;
    e->B = B;
    e->T = T;
    e->h = h;
    e->out = out;
    size_t ncnt = sizeof(mmf_counter) * (size_t)(e->model->L * PHASES_PER_LAYER + 2);
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
        e->t0 = t0;
        e->Tc = T - t0 < tc ? T - t0 : tc;
        e->M = B * e->Tc;
        e->last = t0 + e->Tc == T;
        memset(e->counters, 0, ncnt);
        mmf_pool_run(e->pool, forward_task, e);
    }
    return 0;
}

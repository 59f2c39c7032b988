/* Shared declarations of the ternary CPU engine (compiled at first use by ckernel.py).

   Tile layout (one layout for every dispatch path): the N rows of a ternary matrix are padded to
   Np (a multiple of 16 rows) and its K columns to Kp (a multiple of 16). Row tile t (rows 16t..16t+15)
   is Kc = Kp / 16 chunks of 64 bytes, stored contiguously at byte (t * Kc + c) * 64. In chunk c, byte
   4r + j (r = 0..15, j = 0..3) holds in bits 2s..2s+1 (s = 0..3) the code u = w + 1 in {0, 1, 2} of the
   weight in row 16t + r, column 16c + 4s + j. So (chunk >> 2s) & 3 is, per 32-bit lane r, the four
   weights of row r at columns 16c + 4s .. 16c + 4s + 3: one VNNI dot-product step against those four
   activations broadcast to every lane gives 16 row sums at once, with no horizontal reduction.
   Padding weights are 0 (u = 1) and padding activations 0. sum(w x) = sum(u x) - sum(x). */
#ifndef MMF_TMM_H
#define MMF_TMM_H

#include <stdint.h>

#define MMF_TILE_ROWS 16
#define MMF_CHUNK_K 16
#define MMF_CHUNK_BYTES 64
/* Rows (tokens) a tile kernel takes per call. */
#define MMF_MB 8

/* Dispatch paths, in order of preference. */
enum { MMF_PATH_SCALAR = 0, MMF_PATH_AVX2 = 1, MMF_PATH_AVXVNNI = 2, MMF_PATH_AVX512VNNI = 3, MMF_PATH_NEON = 4,
       MMF_PATH_NEON_DOTPROD = 5, MMF_PATH_AVX2_LUT = 6, MMF_NPATHS = 7 };

/* Look-up-table paths (MMF_PATH_AVX2_LUT) read their weights in the "LUT layout": the same 64-byte
   chunks with the bytes of a chunk transposed, byte 16j + r holding what byte 4r + j holds above
   (so one 16-byte lane is one j for 16 rows, and a 16-entry byte shuffle can serve the whole lane),
   and their activations as tables built by mmf_prepare (below) instead of int8 values.
   mmf_path_layout: 0 the tile layout above, 1 the LUT layout. */
int mmf_path_layout(int path);
/* Bytes of one prepared activation row of Kp columns for `path` (Kp for int8 paths, 16 Kp for LUT ones). */
int64_t mmf_prep_bytes(int path, int64_t Kp);
/* What the tile kernel of `path` reads for the int8 row x (Kp values): x itself, or (LUT paths) the
   tables written into buf (mmf_prep_bytes(path, Kp) bytes). For chunk c, 256 bytes at 256c:
   [lo bytes | hi bytes] of the int16 sums u0 x[16c + j] + u1 x[16c + 4 + j] for the low nibble
   n = u0 + 4 u1 of byte 16j + r, then the same for x[16c + 8 + j], x[16c + 12 + j] (high nibble);
   each 64-byte block is 4 lanes j of 16 entries n. */
const int8_t *mmf_prepare(int path, const int8_t *x, int64_t Kp, uint8_t *buf);

/* raw[m * 16 + r] = sum_k u(r, k) x_m[k] for the 16 rows of one tile and M <= MMF_MB activation rows
   (x_m = x + m * xstride, Kc * 16 int8 values). */
typedef void (*mmf_tile_fn)(const uint8_t *w, const int8_t *x, int64_t xstride, int M, int64_t Kc, int32_t *raw);

mmf_tile_fn mmf_tile_kernel(int path);
int mmf_path_supported(int path);
int mmf_best_path(void);

/* ---- thread pool (tmm_pool.c) ---- */
typedef struct mmf_pool mmf_pool;
typedef void (*mmf_task_fn)(void *ctx, int tid, int nthreads);
mmf_pool *mmf_pool_new(int nthreads);
void mmf_pool_free(mmf_pool *pool);
int mmf_pool_threads(const mmf_pool *pool);
/* Run fn(ctx, tid, n) on every thread of the pool (the caller is thread 0); returns when all are done. */
void mmf_pool_run(mmf_pool *pool, mmf_task_fn fn, void *ctx);
/* All threads of the running task wait for each other. */
void mmf_barrier(mmf_pool *pool);

/* ---- grouped BitLinear (tmm_group.c) ---- */
/* One ternary matrix in tile layout with its BitLinear RMSNorm gain and weight scale. */
typedef struct {
    const uint8_t *tiles;  /* Np / 16 tiles of Kc * 64 bytes */
    const float *gain;     /* (K,) RMSNorm gain of the BitLinear */
    float s_w;             /* weight scale: W ~= W_q / s_w */
    float eps;             /* RMSNorm eps of the BitLinear */
    int64_t N, K, Np, Kp;
} mmf_lin;

/* Quantize one input row exactly as the reference does in fp32: t = (x * r) * g,
   s = 127 / max(max|t|, qeps) (scale_div bit 0 set) or (1 / max) * 127, q = clamp(round(t * s), -128, 127)
   with round = rint (ties to even) or, with bit 1 (MMF_ROUND_HALF_AWAY) set, roundf (ties away from zero).
   Writes Kp int8 values (zero padded); returns s; *xsum = sum(q). */
#define MMF_ROUND_HALF_AWAY 2
float mmf_quantize_row(const float *x, float r, const float *g, int64_t K, int64_t Kp, float qeps, int scale_div,
                       int8_t *q, int32_t *xsum);

/* Work-item dispenser shared by the threads of one phase. */
typedef struct { volatile int64_t next; char pad[56]; } mmf_counter;
int64_t mmf_take(mmf_counter *c, int64_t n, int64_t chunk, int64_t *end);

/* Integer products of tile t of lin for M rows of xq (row stride xstride >= Kp):
   acc (M x 16) = raw - xsum (exact). */
void mmf_tile_product(mmf_tile_fn fn, const mmf_lin *lin, int64_t t, const int8_t *xq, int64_t xstride, int M,
                      const int32_t *xsum, int32_t *acc);

#endif

/* Tile kernels of the ternary products, one per dispatch path (layout: tmm.h). Every path computes
   the same exact integers; the tests compare each one the CPU can run with an integer reference.
   x86 paths are compiled with per-function target attributes, so one library serves every x86 CPU
   and the path is chosen at run time (mmf_best_path); NEON paths exist only in aarch64 builds. */
#include <string.h>

#include "tmm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMF_X86 1
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
#define MMF_HAVE_AVXVNNI 1
#endif
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#define MMF_ARM 1
#endif

static inline int32_t load4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ------------------------------------------------------------------------------------ scalar */
static void tile_scalar(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    for (int m = 0; m < M; m++)
        for (int r = 0; r < 16; r++) raw[m * 16 + r] = 0;
    for (int64_t c = 0; c < Kc; c++) {
        const uint8_t *ch = w + c * 64;
        for (int m = 0; m < M; m++) {
            const int8_t *xm = x + m * xs + c * 16;
            for (int r = 0; r < 16; r++) {
                int32_t s = 0;
                for (int j = 0; j < 4; j++) {
                    uint8_t b = ch[4 * r + j];
                    for (int q = 0; q < 4; q++) s += (int32_t)((b >> (2 * q)) & 3) * (int32_t)xm[4 * q + j];
                }
                raw[m * 16 + r] += s;
            }
        }
    }
}

#ifdef MMF_X86
/* -------------------------------------------------------------------------- AVX-512 VNNI */
#define T512 __attribute__((target("avx512f,avx512bw,avx512vnni")))

T512 static inline void tile512_m1(const uint8_t *w, const int8_t *x, int64_t Kc, int32_t *raw) {
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t c = 0; c < Kc; c++) {
        __m512i v = _mm512_loadu_si512((const void *)(w + c * 64));
        const int8_t *xc = x + c * 16;
        a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(v, mask), _mm512_set1_epi32(load4(xc)));
        a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(_mm512_srli_epi32(v, 2), mask), _mm512_set1_epi32(load4(xc + 4)));
        a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(_mm512_srli_epi32(v, 4), mask), _mm512_set1_epi32(load4(xc + 8)));
        a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(_mm512_srli_epi32(v, 6), mask), _mm512_set1_epi32(load4(xc + 12)));
    }
    _mm512_storeu_si512((void *)raw, _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
}

T512 static void tile_avx512vnni(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    if (M == 1) {
        tile512_m1(w, x, Kc, raw);
        return;
    }
    const __m512i mask = _mm512_set1_epi8(3);
    __m512i acc[MMF_MB];
    for (int m = 0; m < MMF_MB; m++) acc[m] = _mm512_setzero_si512();
    for (int64_t c = 0; c < Kc; c++) {
        __m512i v = _mm512_loadu_si512((const void *)(w + c * 64));
        __m512i u[4] = {_mm512_and_si512(v, mask), _mm512_and_si512(_mm512_srli_epi32(v, 2), mask),
                        _mm512_and_si512(_mm512_srli_epi32(v, 4), mask), _mm512_and_si512(_mm512_srli_epi32(v, 6), mask)};
        for (int m = 0; m < M; m++) {
            const int8_t *xc = x + m * xs + c * 16;
            __m512i a = acc[m];
            for (int q = 0; q < 4; q++) a = _mm512_dpbusd_epi32(a, u[q], _mm512_set1_epi32(load4(xc + 4 * q)));
            acc[m] = a;
        }
    }
    for (int m = 0; m < M; m++) _mm512_storeu_si512((void *)(raw + m * 16), acc[m]);
}

/* ------------------------------------------------------------- AVX2 (vpmaddubsw, int16 sums) */
#define T256 __attribute__((target("avx2")))
/* Chunks whose int16 pair sums are added before widening: per int16 lane and chunk at most
   8 products |u x| <= 2 * 128, so 8 chunks stay within 16,384. */
#define AVX2_FLUSH 8

T256 static void tile_avx2(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    for (int m0 = 0; m0 < M; m0 += 4) {
        int mb = M - m0 < 4 ? M - m0 : 4;
        __m256i lo32[4], hi32[4];
        for (int m = 0; m < 4; m++) lo32[m] = hi32[m] = _mm256_setzero_si256();
        for (int64_t c0 = 0; c0 < Kc; c0 += AVX2_FLUSH) {
            int64_t c1 = c0 + AVX2_FLUSH < Kc ? c0 + AVX2_FLUSH : Kc;
            __m256i lo16[4], hi16[4];
            for (int m = 0; m < 4; m++) lo16[m] = hi16[m] = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                __m256i vl = _mm256_loadu_si256((const __m256i *)(w + c * 64));
                __m256i vh = _mm256_loadu_si256((const __m256i *)(w + c * 64 + 32));
                for (int q = 0; q < 4; q++) {
                    __m256i ul = _mm256_and_si256(_mm256_srli_epi32(vl, 2 * q), mask);
                    __m256i uh = _mm256_and_si256(_mm256_srli_epi32(vh, 2 * q), mask);
                    for (int m = 0; m < mb; m++) {
                        __m256i xb = _mm256_set1_epi32(load4(x + (m0 + m) * xs + c * 16 + 4 * q));
                        lo16[m] = _mm256_add_epi16(lo16[m], _mm256_maddubs_epi16(ul, xb));
                        hi16[m] = _mm256_add_epi16(hi16[m], _mm256_maddubs_epi16(uh, xb));
                    }
                }
            }
            for (int m = 0; m < mb; m++) {
                lo32[m] = _mm256_add_epi32(lo32[m], _mm256_madd_epi16(lo16[m], ones));
                hi32[m] = _mm256_add_epi32(hi32[m], _mm256_madd_epi16(hi16[m], ones));
            }
        }
        for (int m = 0; m < mb; m++) {
            _mm256_storeu_si256((__m256i *)(raw + (m0 + m) * 16), lo32[m]);
            _mm256_storeu_si256((__m256i *)(raw + (m0 + m) * 16 + 8), hi32[m]);
        }
    }
}


/* --------------------------------------------- AVX2 look-up tables (T-MAC / bitnet.cpp style) */
/* Weights in the LUT layout (tmm.h): a 16-byte lane is one j for 16 rows; a byte's low nibble
   n = u0 + 4 u1 indexes the partial sum u0 x[j] + u1 x[4 + j] of two columns, its high nibble the
   one of columns 8 + j and 12 + j. The sums are int16, looked up as a low-byte and a high-byte
   table with vpshufb and joined by vpunpck{l,h}bw. Per int16 lane and chunk at most 4 sums of
   |.| <= 512, so 15 chunks stay within 30,720 before widening to int32. */
#define LUT_FLUSH 15

T256 static void tile_avx2_lut(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    const __m256i nib = _mm256_set1_epi8(0x0F);
    for (int m = 0; m < M; m++) {
        const uint8_t *tab = (const uint8_t *)x + m * xs;
        __m256i r_lo = _mm256_setzero_si256(), r_hi = _mm256_setzero_si256(); /* rows 0-7, 8-15 */
        for (int64_t c0 = 0; c0 < Kc; c0 += LUT_FLUSH) {
            int64_t c1 = c0 + LUT_FLUSH < Kc ? c0 + LUT_FLUSH : Kc;
            __m256i s_lo = _mm256_setzero_si256(), s_hi = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                const uint8_t *t = tab + c * 256;
                for (int h = 0; h < 2; h++) { /* lanes j = 2h, 2h + 1 */
                    __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 64 + 32 * h));
                    __m256i lo = _mm256_and_si256(v, nib), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                    __m256i ll = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(t + 32 * h)), lo);
                    __m256i hl = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(t + 64 + 32 * h)), lo);
                    __m256i lh = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(t + 128 + 32 * h)), hi);
                    __m256i hh = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(t + 192 + 32 * h)), hi);
                    s_lo = _mm256_add_epi16(s_lo, _mm256_add_epi16(_mm256_unpacklo_epi8(ll, hl), _mm256_unpacklo_epi8(lh, hh)));
                    s_hi = _mm256_add_epi16(s_hi, _mm256_add_epi16(_mm256_unpackhi_epi8(ll, hl), _mm256_unpackhi_epi8(lh, hh)));
                }
            }
            r_lo = _mm256_add_epi32(r_lo, _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_lo)),
                                                           _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_lo, 1))));
            r_hi = _mm256_add_epi32(r_hi, _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_hi)),
                                                           _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_hi, 1))));
        }
        _mm256_storeu_si256((__m256i *)(raw + m * 16), r_lo);
        _mm256_storeu_si256((__m256i *)(raw + m * 16 + 8), r_hi);
    }
}

#ifdef MMF_HAVE_AVXVNNI
/* ------------------------------------------------------------- AVX-VNNI (256-bit vpdpbusd) */
#define TVNNI __attribute__((target("avx2,avxvnni")))

TVNNI static void tile_avxvnni(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    const __m256i mask = _mm256_set1_epi8(3);
    for (int m0 = 0; m0 < M; m0 += 4) {
        int mb = M - m0 < 4 ? M - m0 : 4;
        __m256i lo[4], hi[4];
        for (int m = 0; m < 4; m++) lo[m] = hi[m] = _mm256_setzero_si256();
        for (int64_t c = 0; c < Kc; c++) {
            __m256i vl = _mm256_loadu_si256((const __m256i *)(w + c * 64));
            __m256i vh = _mm256_loadu_si256((const __m256i *)(w + c * 64 + 32));
            for (int q = 0; q < 4; q++) {
                __m256i ul = _mm256_and_si256(_mm256_srli_epi32(vl, 2 * q), mask);
                __m256i uh = _mm256_and_si256(_mm256_srli_epi32(vh, 2 * q), mask);
                for (int m = 0; m < mb; m++) {
                    __m256i xb = _mm256_set1_epi32(load4(x + (m0 + m) * xs + c * 16 + 4 * q));
                    lo[m] = _mm256_dpbusd_avx_epi32(lo[m], ul, xb);
                    hi[m] = _mm256_dpbusd_avx_epi32(hi[m], uh, xb);
                }
            }
        }
        for (int m = 0; m < mb; m++) {
            _mm256_storeu_si256((__m256i *)(raw + (m0 + m) * 16), lo[m]);
            _mm256_storeu_si256((__m256i *)(raw + (m0 + m) * 16 + 8), hi[m]);
        }
    }
}
#endif
#endif /* MMF_X86 */

#ifdef MMF_ARM
/* ------------------------------------------------------------ NEON (vmull_s8, int16 sums) */
/* per int16 lane and chunk: 4 products |u x| <= 256, so 16 chunks stay within 16,384 */
#define NEON_FLUSH 16
static void tile_neon(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    const uint8x16_t mask = vdupq_n_u8(3);
    for (int m = 0; m < M; m++) {
        const int8_t *xm = x + m * xs;
        for (int qr = 0; qr < 4; qr++) { /* rows 4qr .. 4qr+3 */
            int32x4_t a01 = vdupq_n_s32(0), a23 = vdupq_n_s32(0);
            for (int64_t c0 = 0; c0 < Kc; c0 += NEON_FLUSH) {
                int64_t c1 = c0 + NEON_FLUSH < Kc ? c0 + NEON_FLUSH : Kc;
                int16x8_t s01 = vdupq_n_s16(0), s23 = vdupq_n_s16(0);
                for (int64_t c = c0; c < c1; c++) {
                    uint8x16_t v = vld1q_u8(w + c * 64 + 16 * qr);
                    for (int q = 0; q < 4; q++) {
                        int8x16_t u = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-2 * q))), mask));
                        int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(load4(xm + c * 16 + 4 * q)));
                        s01 = vmlal_s8(s01, vget_low_s8(u), vget_low_s8(xb));
                        s23 = vmlal_high_s8(s23, u, xb);
                    }
                }
                a01 = vpadalq_s16(a01, s01); /* (r0 j01, r0 j23, r1 j01, r1 j23) */
                a23 = vpadalq_s16(a23, s23);
            }
            int32x4_t rows = vpaddq_s32(a01, a23); /* r0, r1, r2, r3 */
            vst1q_s32(raw + m * 16 + 4 * qr, rows);
        }
    }
}

/* ------------------------------------------------------------------- NEON SDOT (ARMv8.2 dotprod) */
__attribute__((target("arch=armv8.2-a+dotprod")))
static void tile_neon_dotprod(const uint8_t *w, const int8_t *x, int64_t xs, int M, int64_t Kc, int32_t *raw) {
    const uint8x16_t mask = vdupq_n_u8(3);
    for (int m = 0; m < M; m++) {
        const int8_t *xm = x + m * xs;
        int32x4_t a[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        for (int64_t c = 0; c < Kc; c++) {
            const uint8_t *ch = w + c * 64;
            for (int q = 0; q < 4; q++) {
                int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(load4(xm + c * 16 + 4 * q)));
                for (int qr = 0; qr < 4; qr++) {
                    uint8x16_t v = vld1q_u8(ch + 16 * qr);
                    int8x16_t u = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v, vdupq_n_s8((int8_t)(-2 * q))), mask));
                    a[qr] = vdotq_s32(a[qr], u, xb);
                }
            }
        }
        for (int qr = 0; qr < 4; qr++) vst1q_s32(raw + m * 16 + 4 * qr, a[qr]);
    }
}
#endif /* MMF_ARM */

/* ---------------------------------------------------------------------------------- dispatch */
int mmf_path_supported(int path) {
    switch (path) {
    case MMF_PATH_SCALAR:
        return 1;
#ifdef MMF_X86
    case MMF_PATH_AVX2:
    case MMF_PATH_AVX2_LUT:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    case MMF_PATH_AVX512VNNI:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#ifdef MMF_HAVE_AVXVNNI
    case MMF_PATH_AVXVNNI:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
#endif
#endif
#ifdef MMF_ARM
    case MMF_PATH_NEON:
        return 1;
    case MMF_PATH_NEON_DOTPROD:
#if defined(__linux__) && defined(HWCAP_ASIMDDP)
        return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
        return 1;
#else
        return 0;
#endif
#endif
    default:
        return 0;
    }
}

/* Path compiled into this build (whether or not this CPU can run it). */
int mmf_path_compiled(int path) {
    switch (path) {
    case MMF_PATH_SCALAR:
        return 1;
#ifdef MMF_X86
    case MMF_PATH_AVX2:
    case MMF_PATH_AVX2_LUT:
    case MMF_PATH_AVX512VNNI:
        return 1;
#ifdef MMF_HAVE_AVXVNNI
    case MMF_PATH_AVXVNNI:
        return 1;
#endif
#endif
#ifdef MMF_ARM
    case MMF_PATH_NEON:
    case MMF_PATH_NEON_DOTPROD:
        return 1;
#endif
    default:
        return 0;
    }
}

mmf_tile_fn mmf_tile_kernel(int path) {
    if (!mmf_path_supported(path)) return 0;
    switch (path) {
    case MMF_PATH_SCALAR:
        return tile_scalar;
#ifdef MMF_X86
    case MMF_PATH_AVX2:
        return tile_avx2;
    case MMF_PATH_AVX2_LUT:
        return tile_avx2_lut;
    case MMF_PATH_AVX512VNNI:
        return tile_avx512vnni;
#ifdef MMF_HAVE_AVXVNNI
    case MMF_PATH_AVXVNNI:
        return tile_avxvnni;
#endif
#endif
#ifdef MMF_ARM
    case MMF_PATH_NEON:
        return tile_neon;
    case MMF_PATH_NEON_DOTPROD:
        return tile_neon_dotprod;
#endif
    default:
        return 0;
    }
}

/* avx2-lut before avx2: 7-8% faster by thread CPU time on the 2-core AMD EPYC sandbox
   (bench/cpu_paths.py; BENCHMARKS.md, "CPU dispatch paths"). */
int mmf_best_path(void) {
    static const int order[] = {MMF_PATH_AVX512VNNI, MMF_PATH_AVXVNNI, MMF_PATH_AVX2_LUT, MMF_PATH_AVX2,
                                MMF_PATH_NEON_DOTPROD, MMF_PATH_NEON, MMF_PATH_SCALAR};
    for (unsigned i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (mmf_path_supported(order[i])) return order[i];
    return MMF_PATH_SCALAR;
}


/* ------------------------------------------------------------------ layouts and preparation */
int mmf_path_layout(int path) { return path == MMF_PATH_AVX2_LUT ? 1 : 0; }

int64_t mmf_prep_bytes(int path, int64_t Kp) { return mmf_path_layout(path) ? Kp * 16 : Kp; }

/* The 256 bytes of tables of one 16-column chunk xc (layout: tmm.h, mmf_prepare). */
static void lut_tables(const int8_t *xc, uint8_t *o) {
    for (int j = 0; j < 4; j++)
        for (int n = 0; n < 16; n++) {
            int u0 = n & 3, u1 = n >> 2;
            int lo = u0 * xc[j] + u1 * xc[4 + j], hi = u0 * xc[8 + j] + u1 * xc[12 + j];
            o[16 * j + n] = (uint8_t)(lo & 0xFF);
            o[64 + 16 * j + n] = (uint8_t)((lo >> 8) & 0xFF);
            o[128 + 16 * j + n] = (uint8_t)(hi & 0xFF);
            o[192 + 16 * j + n] = (uint8_t)((hi >> 8) & 0xFF);
        }
}

const int8_t *mmf_prepare(int path, const int8_t *x, int64_t Kp, uint8_t *buf) {
    if (!mmf_path_layout(path)) return x;
    for (int64_t c = 0; c < Kp / MMF_CHUNK_K; c++) lut_tables(x + c * MMF_CHUNK_K, buf + c * 256);
    return (const int8_t *)buf;
}

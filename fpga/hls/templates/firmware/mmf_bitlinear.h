// Shared building blocks of the exported token-step kernels (MLGRU and RWKV-4): weight access
// (on chip or streamed from DRAM), sigmoid / SiLU table lookups, the ternary product, the
// BitLinear (RMSNorm, int8 quantization, output scale) and the parameter-blob decoders.
// Included once, by firmware/mmf_kernel.cpp, after mmf_params.h and mmf_tables.h; the integer
// steps are those of fpga/FORMATS.md sections 3 and 4.1-4.6, bit for bit.
#ifndef MMF_BITLINEAR_H
#define MMF_BITLINEAR_H

#include <cstdint>

#include "mmf_arith.h"
#include "mmf_kernel.h"
#include "mmf_tables.h"

namespace {

using mmf::iabs;
using mmf::round_shift;
using mmf::saturate;

// ------------------------------------------------------------------ weight access (on chip or DRAM)
// MMF_GMEM_PARAM / MMF_GMEM_ARG pass the DRAM pointer down the call tree only when streaming,
// so that the on-chip build has no m_axi access below the LOAD routine.
#if MMF_STREAM_WEIGHTS
#define MMF_WEIGHTS(ROWS, WORDS) const mmf_word_t *wsrc, uint32_t woff
#define MMF_WFWD wsrc, woff
#define MMF_W(array, offset) params, (offset)
#define MMF_GMEM_PARAM , const mmf_word_t *params
#define MMF_GMEM_ARG , params
#else
#define MMF_WEIGHTS(ROWS, WORDS) const mmf_word_t wsrc[ROWS][WORDS]
#define MMF_WFWD wsrc
#define MMF_W(array, offset) array
#define MMF_GMEM_PARAM
#define MMF_GMEM_ARG
#endif

// ------------------------------------------------------------------ lookups (FORMATS section 3)
constexpr int64_t LUT_HALF = static_cast<int64_t>(1) << (MMF_LUT_BITS - 1);

inline int64_t lut_j(int64_t y) { return round_shift(y, MMF_ACT_FRAC - MMF_LUT_FRAC); }

inline int64_t sigmoid_lut(int64_t y) {  // u16 Q15
    const int64_t j = lut_j(y);
    const int64_t c = j < -LUT_HALF ? -LUT_HALF : (j > LUT_HALF - 1 ? LUT_HALF - 1 : j);
    return MMF_SIGMOID[c + LUT_HALF];
}

inline int64_t silu_lut(int64_t y) {  // Q(MMF_ACT_FRAC)
    const int64_t j = lut_j(y);
    if (j > LUT_HALF - 1) return y;
    if (j < -LUT_HALF) return 0;
    return MMF_SILU[j + LUT_HALF];
}

// ------------------------------------------------------------------ ternary product (FORMATS 4.4)
// 16 weights of one word against 16 int8 activations: add (+1), subtract (-1) or skip (0).
inline int32_t dot16(mmf_word_t w, const int8_t xq[], int k) {
    int32_t s = 0;
DOT16:
    for (int i = 0; i < 16; ++i) {
#pragma HLS UNROLL
        const uint32_t code = (w >> (2 * i)) & 3u;
        const int32_t x = xq[16 * k + i];
        s += code == 1u ? x : (code == 3u ? -x : 0);
    }
    return s;
}

// One flattened pipelined loop over (row group, word): no pipeline refill per row, and in the
// streaming build one sequential burst over the whole matrix. acc_s = round_shift(acc, ASH).
template <int ROWS, int WORDS, int ASH>
void ternary_matvec(const int8_t xq[WORDS * 16], MMF_WEIGHTS(ROWS, WORDS), int32_t acc[ROWS], int32_t acc_s[ROWS]) {
#if MMF_STREAM_WEIGHTS
    constexpr int RP = 1;
#else
    constexpr int RP = ROWS % MMF_ROW_PAR == 0 ? MMF_ROW_PAR : 1;  // rows computed in parallel
#endif
    int32_t a[RP];
#pragma HLS ARRAY_PARTITION variable=a complete
MV_CLEAR:
    for (int r = 0; r < RP; ++r) a[r] = 0;
    int j0 = 0, k = 0;
MV:
    for (int it = 0; it < (ROWS / RP) * WORDS; ++it) {
#pragma HLS PIPELINE II=1
    MV_LANES:
        for (int r = 0; r < RP; ++r) {
#pragma HLS UNROLL
#if MMF_STREAM_WEIGHTS
            const mmf_word_t w = wsrc[woff + static_cast<uint32_t>(it)];  // rows are contiguous in the blob
#else
            const mmf_word_t w = wsrc[j0 + r][k];
#endif
            a[r] = (k == 0 ? 0 : a[r]) + dot16(w, xq, k);
            if (k == WORDS - 1) {
                acc[j0 + r] = a[r];
                acc_s[j0 + r] = static_cast<int32_t>(round_shift(a[r], ASH));
            }
        }
        if (k == WORDS - 1) {
            k = 0;
            j0 += RP;
        } else {
            ++k;
        }
    }
}

// ------------------------------------------------------------------ BitLinear (FORMATS 4.2-4.5)
struct Scale {
    int64_t q_m;  // u17 mantissa of the per-token output scale
    int E;        // its exponent: output ~= acc_s * q_m * 2^E
};

// max |x[i]| over a vector (the leading-one input of normalize16).
template <int N, typename T>
uint64_t max_abs(const T x[N]) {
    uint64_t mx = 0;
MAX_ABS:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II=1
        const uint64_t v = static_cast<uint64_t>(iabs(x[i]));
        if (v > mx) mx = v;
    }
    return mx;
}

// Outer RMSNorm, scale-free (FORMATS 4.1): t = normalize16(x) * gain.
template <int N>
void int_gain(const int32_t x[N], const int16_t gain[N], int32_t t[N]) {
    const int k = mmf::norm16_shift(max_abs<N>(x));
GAIN_MUL:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II=1
        t[i] = static_cast<int32_t>(saturate(round_shift(x[i], k), 16) * gain[i]);
    }
}

// One BitLinear on an integer input t of any scale: RMSNorm (rsqrt table), int8 absmax
// quantization (reciprocal table), ternary product, accumulator shift and output scale.
template <int DIN, int DOUT, int ASH, typename TIN>
void bitlinear(const TIN t[DIN], const int16_t gain[DIN], uint32_t k_m, int32_t k_e,
               MMF_WEIGHTS(DOUT, (DIN + 15) / 16), int32_t acc[DOUT], int32_t acc_s[DOUT], Scale &sc) {
    constexpr int W = (DIN + 15) / 16;
    int32_t z[DIN];
    int8_t xq[W * 16];
#pragma HLS ARRAY_PARTITION variable=xq cyclic factor=16
    const int k = mmf::norm16_shift(max_abs<DIN>(t));
    int64_t sumsq = 0, amax = 0;
BL_NORM:
    for (int i = 0; i < DIN; ++i) {
#pragma HLS PIPELINE II=1
        const int64_t xn = saturate(round_shift(t[i], k), 16);
        const int64_t zi = xn * gain[i];
        z[i] = static_cast<int32_t>(zi);
        sumsq += xn * xn;
        if (iabs(zi) > amax) amax = iabs(zi);
    }
    int64_t r_m, recip, m;
    int r_e, e;
    mmf::rsqrt_lookup(sumsq, MMF_RSQRT, r_m, r_e);
    mmf::recip_lookup(amax, MMF_RECIP, recip, m, e);
BL_QUANT:
    for (int i = 0; i < W * 16; ++i) {
#pragma HLS PIPELINE II=1
        if (i < DIN) {
            const int64_t z2 = saturate(round_shift(z[i], e - 17), 18);
            xq[i] = static_cast<int8_t>(saturate(round_shift(z2 * recip, 26), 8));
        } else {
            xq[i] = 0;
        }
    }
    ternary_matvec<DOUT, W, ASH>(xq, MMF_WFWD, acc, acc_s);
    int64_t p_m, q_m;
    int p_e, q_e;
    mmf::fp_norm((2 * m + 1) * r_m, p_m, p_e);
    mmf::fp_norm(p_m * static_cast<int64_t>(k_m), q_m, q_e);
    sc.q_m = q_m;
    sc.E = ASH + (e - 12) + r_e + k_e + p_e + q_e;
}

// A BitLinear without inner norm (RWKV's projections, fpga/FORMATS.md 7.1) on an input t in its
// own unit: int8 absmax quantization (reciprocal table), ternary product, accumulator shift and
// output scale (q_m, E) with acc_s * q_m * 2^E in the output unit.
template <int DIN, int DOUT, int ASH, typename TIN>
void bitlinear_plain(const TIN t[DIN], uint32_t k_m, int32_t k_e, MMF_WEIGHTS(DOUT, (DIN + 15) / 16),
                     int32_t acc[DOUT], int32_t acc_s[DOUT], Scale &sc) {
    constexpr int W = (DIN + 15) / 16;
    int8_t xq[W * 16];
#pragma HLS ARRAY_PARTITION variable=xq cyclic factor=16
    int64_t recip, m;
    int e;
    mmf::recip_lookup(static_cast<int64_t>(max_abs<DIN>(t)), MMF_RECIP, recip, m, e);
BLP_QUANT:
    for (int i = 0; i < W * 16; ++i) {
#pragma HLS PIPELINE II=1
        if (i < DIN) {
            const int64_t z2 = saturate(round_shift(t[i], e - 17), 18);
            xq[i] = static_cast<int8_t>(saturate(round_shift(z2 * recip, 26), 8));
        } else {
            xq[i] = 0;
        }
    }
    ternary_matvec<DOUT, W, ASH>(xq, MMF_WFWD, acc, acc_s);
    int64_t q_m;
    int q_e;
    mmf::fp_norm((2 * m + 1) * static_cast<int64_t>(k_m), q_m, q_e);
    sc.q_m = q_m;
    sc.E = ASH + (e - 12) + k_e + q_e;
}

// ------------------------------------------------------------------ loading the parameter blob
inline int32_t s16(uint32_t u) { return static_cast<int32_t>(u & 0xFFFFu) - ((u & 0x8000u) ? 65536 : 0); }
inline int32_t s8(uint32_t u) { return static_cast<int32_t>(u & 0xFFu) - ((u & 0x80u) ? 256 : 0); }
inline int32_t s32(uint32_t u) { return static_cast<int32_t>(static_cast<int64_t>(u) - ((u >> 31) ? 4294967296LL : 0)); }

template <int N>
void load_gain(const mmf_word_t *p, uint32_t off, int16_t dst[N]) {  // two int16 per word, low half first
LOAD_GAIN:
    for (int w = 0; w < (N + 1) / 2; ++w) {
#pragma HLS PIPELINE II=1
        const uint32_t word = p[off + w];
        dst[2 * w] = static_cast<int16_t>(s16(word));
        if (2 * w + 1 < N) dst[2 * w + 1] = static_cast<int16_t>(s16(word >> 16));
    }
}

#if !MMF_STREAM_WEIGHTS
template <int ROWS, int WORDS>
void load_w(const mmf_word_t *p, uint32_t off, mmf_word_t dst[ROWS][WORDS]) {
LOAD_W:
    for (int j = 0; j < ROWS; ++j) {
        for (int k = 0; k < WORDS; ++k) {
#pragma HLS PIPELINE II=1
            dst[j][k] = p[off + j * WORDS + k];
        }
    }
}
#endif

}  // namespace

#endif  // MMF_BITLINEAR_H

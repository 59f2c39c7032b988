// Integer primitives of the MatMul-free token step (fpga/FORMATS.md section 2).
//
// Every function mirrors the Python integer reference (matmulfree.fpga.fixed / .luts, NumPy
// int64 semantics) bit for bit. Only adds, compares, shifts, leading-one detection and small
// multiplies are used. Shifts of negative numbers go through uint64_t so that the code is
// well defined in C++14 (no signed-overflow or negative-left-shift undefined behaviour).
#ifndef MMF_ARITH_H
#define MMF_ARITH_H

#include <cstdint>

// Loop labels name the loops in the HLS reports; g++ would warn that they are never jumped to.
#if defined(__GNUC__) && !defined(__SYNTHESIS__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-label"
#endif

namespace mmf {

// Two's complement reinterpretation (modulo 2^64, as NumPy int64 arithmetic wraps).
static inline int64_t wrap64(uint64_t u) {
    return u >= 0x8000000000000000ULL ? -static_cast<int64_t>(~u) - 1 : static_cast<int64_t>(u);
}

// x * 2^s (wrapping like NumPy left_shift), 0 <= s <= 63.
static inline int64_t shl(int64_t x, int s) { return wrap64(static_cast<uint64_t>(x) << s); }

// Arithmetic right shift (floor division by 2^s); s >= 64 gives the sign, as NumPy does.
static inline int64_t asr(int64_t x, int s) {
    if (s >= 64) return x < 0 ? -1 : 0;
    return x >> s;  // arithmetic on GCC, Clang and Vitis HLS (defined behaviour since C++20)
}

// The only rounding rule: x * 2^-s rounded half up; x << min(-s, 62) for s <= 0 (FORMATS 2).
static inline int64_t round_shift(int64_t x, int s) {
    if (s > 0) {
        const uint64_t half = (s - 1) < 64 ? (1ULL << (s - 1)) : 0ULL;
        return asr(wrap64(static_cast<uint64_t>(x) + half), s);
    }
    return shl(x, -s < 62 ? -s : 62);
}

// Clamp to the signed `bits`-bit range.
static inline int64_t saturate(int64_t x, int bits) {
    const int64_t lim = static_cast<int64_t>(1) << (bits - 1);
    return x < -lim ? -lim : (x > lim - 1 ? lim - 1 : x);
}

static inline int64_t iabs(int64_t x) { return x < 0 ? -x : x; }

// Position of the leading one (0 for 0): a priority encoder.
static inline int bitlength(uint64_t x) {
    int n = 0;
BITLEN:
    for (int i = 0; i < 64; ++i) {
#pragma HLS UNROLL
        if ((x >> i) & 1ULL) n = i + 1;
    }
    return n;
}

// Pseudo-float p ~= m * 2^e with m in [2^16, 2^17); p == 0 -> (0, 0) (fixed.fp_norm).
static inline void fp_norm(int64_t p, int64_t &m, int &e) {
    if (p == 0) {
        m = 0;
        e = 0;
        return;
    }
    e = bitlength(static_cast<uint64_t>(p)) - 17;
    m = round_shift(p, e);
    if ((m >> 17) & 1) {
        m >>= 1;
        e += 1;
    }
}

// Shift that brings a row with maximum magnitude `mx` to signed 16 bits (fixed.normalize16).
static inline int norm16_shift(uint64_t mx) { return mx == 0 ? 0 : bitlength(mx) - 15; }

// 1/sqrt(S) ~= r_m * 2^r_e by table (luts.rsqrt_lut); S == 0 -> (0, 0).
static inline void rsqrt_lookup(int64_t S, const uint32_t table[768], int64_t &r_m, int &r_e) {
    if (S == 0) {
        r_m = 0;
        r_e = 0;
        return;
    }
    const int b = bitlength(static_cast<uint64_t>(S));
    const int h = b >= 9 ? (b - 9) / 2 : -((10 - b) / 2);  // floor((b - 9) / 2)
    const int sh = 2 * h;
    const int64_t ms = sh >= 0 ? asr(S, sh) : shl(S, -sh);
    r_m = table[ms - 256];
    r_e = -21 - h;
}

// Reciprocal mantissa of a > 0: e = bitlength(a), m = a >> (e - 11) in [1024, 2048) (luts.recip_lookup).
static inline void recip_lookup(int64_t a, const uint32_t table[1024], int64_t &recip, int64_t &m, int &e) {
    e = bitlength(static_cast<uint64_t>(a));
    const int sh = e - 11;
    m = sh >= 0 ? asr(a, sh) : shl(a, -sh);
    if (a == 0) m = 1024;
    recip = table[m - 1024];
}

// y = sat_bits(round_shift(acc_s * q_m, -E)) (intref.requant).
static inline int64_t requant(int64_t acc_s, int64_t q_m, int E, int bits) {
    const int64_t p = acc_s * q_m;
    if (E < 0) return saturate(round_shift(p, -E), bits);
    const int64_t lim = static_cast<int64_t>(1) << 31;
    const int64_t pc = p < -lim ? -lim : (p > lim ? lim : p);
    return saturate(shl(pc, E < 31 ? E : 31), bits);
}

}  // namespace mmf

#if defined(__GNUC__) && !defined(__SYNTHESIS__)
#pragma GCC diagnostic pop
#endif

#endif  // MMF_ARITH_H

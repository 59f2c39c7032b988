"""A small C kernel for ternary x int8 products read straight from 2-bit weights (CPU).

The source below is compiled once with the system C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``; about a second) into a cache folder and called through :mod:`ctypes`, so no PyTorch
headers or build step are needed. Where no compiler is found, :func:`load` returns ``None`` with
the reason and callers fall back to the int8 path.

Weight layout (``pack_blocks``): each row of ``K`` ternary weights is padded to ``Kp``, a multiple
of 128, and cut into blocks of 128; block byte ``j`` (0..31) holds ``u = w + 1`` in {0, 1, 2} of
weights ``j, j+32, j+64, j+96`` in bits 0-1, 2-3, 4-5, 6-7. Still 2 bits per weight; the layout lets
AVX2 unpack 32 weights with one shift and one mask. Products use ``vpmaddubsw`` (unsigned ``u`` x
signed int8 ``x``, pairs summed to int16: at most 2 * 2 * 128 = 512, no saturation) and
``vpmaddwd`` to int32, and ``sum(w x) = sum(u x) - sum(x)``. All arithmetic is integer, so results
are exact. A portable scalar loop is used when the CPU has no AVX2.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..quant import ACT_ABSMAX, activation_scale, unpack_ternary

#: Weights per block of the kernel's layout.
BLOCK = 128

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMF_X86 1
#endif

/* w: N x nb x 32 bytes, x: M x (nb*128) int8, xsum: M int32, out: M x N int32 */
static void mm_scalar(const uint8_t *w, const int8_t *x, const int32_t *xsum, int32_t *out,
                      int64_t M, int64_t N, int64_t nb) {
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *wr = w + n * nb * 32;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = x + m * nb * 128;
            int32_t acc = 0;
            for (int64_t b = 0; b < nb; b++)
                for (int j = 0; j < 32; j++) {
                    uint8_t v = wr[b * 32 + j];
                    for (int s = 0; s < 4; s++)
                        acc += (int32_t)((v >> (2 * s)) & 3) * (int32_t)xr[b * 128 + s * 32 + j];
                }
            out[m * N + n] = acc - xsum[m];
        }
    }
}

#ifdef MMF_X86
__attribute__((target("avx2")))
static void mm_avx2(const uint8_t *w, const int8_t *x, const int32_t *xsum, int32_t *out,
                    int64_t M, int64_t N, int64_t nb) {
    const __m256i mask = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
        int64_t mb = M - m0 < 4 ? M - m0 : 4;
        for (int64_t n = 0; n < N; n++) {
            const uint8_t *wr = w + n * nb * 32;
            __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                              _mm256_setzero_si256()};
            for (int64_t b = 0; b < nb; b++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(wr + b * 32));
                __m256i u0 = _mm256_and_si256(v, mask);
                __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask);
                __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                __m256i u3 = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask);
                for (int64_t i = 0; i < mb; i++) {
                    const int8_t *xb = x + (m0 + i) * nb * 128 + b * 128;
                    __m256i s = _mm256_maddubs_epi16(u0, _mm256_loadu_si256((const __m256i *)xb));
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u1, _mm256_loadu_si256((const __m256i *)(xb + 32))));
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u2, _mm256_loadu_si256((const __m256i *)(xb + 64))));
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u3, _mm256_loadu_si256((const __m256i *)(xb + 96))));
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(s, ones));
                }
            }
            for (int64_t i = 0; i < mb; i++) {
                __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc[i]), _mm256_extracti128_si256(acc[i], 1));
                h = _mm_hadd_epi32(h, h);
                h = _mm_hadd_epi32(h, h);
                out[(m0 + i) * N + n] = _mm_cvtsi128_si32(h) - xsum[m0 + i];
            }
        }
    }
}
#endif

int mmf_has_avx2(void) {
#ifdef MMF_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

static void mm_one(const uint8_t *w, const int8_t *x, int32_t *out, int64_t M, int64_t N, int64_t nb, int avx2) {
    int32_t xsum[64];
    for (int64_t m0 = 0; m0 < M; m0 += 64) {
        int64_t mb = M - m0 < 64 ? M - m0 : 64;
        for (int64_t i = 0; i < mb; i++) {
            const int8_t *xr = x + (m0 + i) * nb * 128;
            int32_t s = 0;
            for (int64_t k = 0; k < nb * 128; k++) s += xr[k];
            xsum[i] = s;
        }
#ifdef MMF_X86
        if (avx2) { mm_avx2(w, x + m0 * nb * 128, xsum, out + m0 * N, mb, N, nb); continue; }
#endif
        mm_scalar(w, x + m0 * nb * 128, xsum, out + m0 * N, mb, N, nb);
    }
}

/* P BitLinear projections of one input x (M x K fp32) after its RMSNorm factor r (M): for each p,
   t = (x * r) * gain_p, s_x = 127 / max(max|t|, eps) (as PyTorch rounds it: see scale_div),
   x_q = clamp(rint(t * s_x), -128, 127),
   out_p = (float)(x_q @ W_p^T) / (s_x * s_w[p]) -- the reference's fp32 operations in its order. */
void mmf_bitlinear(const float *x, const float *r, const float *gain, const float *s_w, float eps, int scale_div,
                   const uint8_t *w, float *out, int64_t P, int64_t M, int64_t K, int64_t N, int64_t nb, int avx2) {
    int64_t Kp = nb * 128;
    int8_t *xq = (int8_t *)calloc((size_t)(M * Kp), 1);
    int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * (size_t)(M * N));
    float *sx = (float *)malloc(sizeof(float) * (size_t)M);
    for (int64_t p = 0; p < P; p++) {
        const float *g = gain + p * K;
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float rm = r[m], amax = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                float t = fabsf((xr[k] * rm) * g[k]);
                amax = t > amax ? t : amax;
            }
            if (!(amax >= eps)) amax = eps;
            float s = scale_div ? 127.0f / amax : (1.0f / amax) * 127.0f;
            sx[m] = s;
            for (int64_t k = 0; k < K; k++) {
                float q = nearbyintf(((xr[k] * rm) * g[k]) * s);
                xq[m * Kp + k] = (int8_t)(q > 127.0f ? 127.0f : (q < -128.0f ? -128.0f : q));
            }
        }
        mm_one(w + p * N * nb * 32, xq, acc, M, N, nb, avx2);
        for (int64_t m = 0; m < M; m++) {
            float den = sx[m] * s_w[p];
            for (int64_t n = 0; n < N; n++) out[(p * M + m) * N + n] = (float)acc[m * N + n] / den;
        }
    }
    free(xq); free(acc); free(sx);
}

/* P independent products: w P x N x nb x 32, x P x M x nb*128, out P x M x N */
void mmf_ternary_mm(const uint8_t *w, const int8_t *x, int32_t *out, int64_t P, int64_t M, int64_t N,
                    int64_t nb, int avx2) {
    for (int64_t p = 0; p < P; p++)
        mm_one(w + p * N * nb * 32, x + p * M * nb * 128, out + p * M * N, M, N, nb, avx2);
}
"""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    """``$MATMULFREE_CACHE`` or ``$XDG_CACHE_HOME/matmulfree`` (default ``~/.cache/matmulfree``)."""
    root = os.environ.get("MATMULFREE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / ("" if os.environ.get("MATMULFREE_CACHE") else "matmulfree") / "ckernel"


class Kernel:
    """The loaded library (see :meth:`mm`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.lib.mmf_ternary_mm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
        self.lib.mmf_ternary_mm.restype = None
        self.lib.mmf_bitlinear.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_float, ctypes.c_int] + \
            [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 5 + [ctypes.c_int]
        self.lib.mmf_bitlinear.restype = None
        self.avx2 = int(self.lib.mmf_has_avx2())
        self.scale_div = 0

    def mm(self, w_blocks: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
        """``P`` independent products: ``w_blocks`` uint8 ``(P, N, Kp / 4)`` from :func:`pack_blocks`
        (contiguous), ``x_q`` int8 ``(P, M, Kp)`` contiguous -> ``x_q @ W^T`` int32 ``(P, M, N)``."""
        P, M, Kp = x_q.shape
        N = w_blocks.shape[1]
        if w_blocks.shape != (P, N, Kp // 4) or x_q.dtype != torch.int8 or not x_q.is_contiguous():
            raise ValueError(f"ckernel.mm: weights {tuple(w_blocks.shape)}, x {tuple(x_q.shape)} {x_q.dtype} "
                             "do not match")
        out = torch.empty(P, M, N, dtype=torch.int32)
        self.lib.mmf_ternary_mm(w_blocks.data_ptr(), x_q.data_ptr(), out.data_ptr(), P, M, N, Kp // BLOCK, self.avx2)
        return out

    def bitlinear(self, x: torch.Tensor, r: torch.Tensor, gain: torch.Tensor, s_w: torch.Tensor, eps: float,
                  w_blocks: torch.Tensor) -> torch.Tensor:
        """Fused RMSNorm gain, per-token int8 quantization, ternary product and rescale of ``P``
        projections reading one input: ``x`` fp32 ``(M, K)``, ``r`` fp32 ``(M, 1)`` (the RMSNorm
        factor ``rsqrt(mean(x^2) + eps)``), ``gain`` fp32 ``(P, K)``, ``s_w`` fp32 ``(P,)``, ``eps`` the
        quantization floor, ``w_blocks`` ``(P, N, Kp / 4)`` -> fp32 ``(P, M, N)``."""
        M, K = x.shape
        P, N, kq = w_blocks.shape
        if x.dtype != torch.float32 or gain.shape != (P, K) or kq * 4 != padded_k(K) or r.numel() != M:
            raise ValueError(f"ckernel.bitlinear: shapes x {tuple(x.shape)} {x.dtype}, gain {tuple(gain.shape)}, "
                             f"weights {tuple(w_blocks.shape)} do not match")
        x, r = x.contiguous(), r.contiguous()
        out = torch.empty(P, M, N, dtype=torch.float32)
        self.lib.mmf_bitlinear(x.data_ptr(), r.data_ptr(), gain.data_ptr(), s_w.data_ptr(), eps, self.scale_div,
                               w_blocks.data_ptr(), out.data_ptr(), P, M, K, N, kq // 32, self.avx2)  # fmt: skip
        return out


def scale_rounding() -> int | None:
    """How :func:`matmulfree.quant.activation_scale` rounds ``127 / m`` in this PyTorch: ``0`` as
    ``(1 / m) * 127`` (a reciprocal, then a product), ``1`` as one correctly rounded division,
    ``None`` if neither matches (then the fused kernel would not be exact and is not used)."""
    m = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 100 + 1e-3
    got = activation_scale(m.unsqueeze(-1)).squeeze(-1)
    if torch.equal(got, m.reciprocal() * ACT_ABSMAX):
        return 0
    if torch.equal(got, torch.full_like(m, ACT_ABSMAX) / m):
        return 1
    return None


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Kernel | None, str | None]:
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    flags = ["-O2", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off", "-fno-fast-math"]
    key = hashlib.sha256((SOURCE + " ".join(flags) + cc).encode()).hexdigest()[:16]
    folder = cache_dir()
    path = folder / f"ternary_{key}.so"
    try:
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                src = Path(tmp) / "ternary.c"
                src.write_text(SOURCE)
                so = Path(tmp) / "ternary.so"
                proc = subprocess.run([cc, *flags, str(src), "-o", str(so), "-lm"], capture_output=True, text=True)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["?"])[0]
                    return None, f"C kernel did not compile with {cc}: {err}"
                os.replace(so, path)
        kernel = Kernel(path)
        mode = scale_rounding()
        if mode is None:
            return None, "activation_scale rounds 127/m in neither known way; the fused kernel would not be exact"
        kernel.scale_div = mode
        return kernel, None
    except OSError as e:
        return None, f"C kernel unavailable: {e}"


def load() -> tuple[Kernel | None, str | None]:
    """``(kernel, None)`` or ``(None, reason)``; compiles on first use (cached)."""
    if os.environ.get("MATMULFREE_NO_CKERNEL"):
        return None, "disabled by MATMULFREE_NO_CKERNEL"
    return _load()


def padded_k(k: int) -> int:
    """``k`` rounded up to a whole number of blocks."""
    return -(-k // BLOCK) * BLOCK


def pack_blocks(w_q: torch.Tensor) -> torch.Tensor:
    """Ternary ``(N, K)`` (values in {-1, 0, 1}) -> the kernel's uint8 layout ``(N, Kp / 4)``."""
    n, k = w_q.shape
    u = torch.ones(n, padded_k(k), dtype=torch.uint8)  # padding: w = 0
    u[:, :k] = (w_q.to(torch.int16) + 1).to(torch.uint8)
    u = u.view(n, -1, 4, 32)  # (N, blocks, s, j): weight s*32 + j of the block
    shifts = (torch.arange(4, dtype=torch.uint8) * 2).view(1, 1, 4, 1)
    return (u << shifts).sum(dim=2, dtype=torch.int32).to(torch.uint8).reshape(n, -1).contiguous()


def pack_blocks_from_storage(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The kernel layout from the project's 2-bit storage code (``quant.pack_ternary`` output)."""
    return pack_blocks(unpack_ternary(packed, k))


__all__ = ["BLOCK", "Kernel", "cache_dir", "load", "pack_blocks", "pack_blocks_from_storage", "padded_k"]

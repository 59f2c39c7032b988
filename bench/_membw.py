"""Memory bandwidth of this machine, STREAM-style, measured in C compiled at run time.

Why C and not numpy: numpy evaluates ``a = b + s * c`` as two passes with a temporary array (5 array
streams instead of 3), and its speed depends on its allocator; a triad compiled here with
``-O3 -march=native`` and run on ``threads`` pthreads (each on its own contiguous slice, as the
engines split their rows) is what a compiled engine can reach, counted the STREAM way (3 arrays
of ``n`` fp32 per pass: 2 read, 1 written), best of ``repeats`` passes after a first touch.

Two kernels: ``triad`` (``a[i] = b[i] + s * c[i]``) and ``read`` (a sum over one array with eight
independent accumulators, read-only like a decode's weight stream). ``footprint_bytes`` is the total
over the arrays the kernel touches: pass the bytes of weights a decode step reads to measure the
bandwidth that a working set of that size gets here (from DRAM or from a last-level cache, whichever
serves it), and a multiple of the last-level cache for DRAM alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { float *a, *b, *c; int64_t n0, n1; int mode; double sum; } slice;

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

static void *run(void *p) {
    slice *s = (slice *)p;
    if (s->mode == 0) {
        for (int64_t i = s->n0; i < s->n1; i++) s->a[i] = s->b[i] + 3.0f * s->c[i];
    } else {
        const int64_t *v = (const int64_t *)(s->b + s->n0);
        int64_t n = (s->n1 - s->n0) / 2, acc[8] = {0};
        for (int64_t i = 0; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; k++) acc[k] += v[i + k];
        s->sum = (double)(acc[0] + acc[1] + acc[2] + acc[3] + acc[4] + acc[5] + acc[6] + acc[7]);
    }
    return 0;
}

/* best seconds of `repeats` passes of `mode` (0 triad, 1 read) over n floats per array, on `threads` */
double mmf_stream(int64_t n, int threads, int repeats, int mode) {
    size_t bytes = (size_t)n * 4;
    float *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes), *c = aligned_alloc(64, bytes);
    if (!a || !b || !c) return -1.0;
    for (int64_t i = 0; i < n; i++) { a[i] = 0.0f; b[i] = 1.0f; c[i] = 2.0f; }
    double best = 1e30;
    pthread_t th[64];
    slice sl[64];
    if (threads > 64) threads = 64;
    for (int r = 0; r <= repeats; r++) {
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            int64_t n0 = n * t / threads / 16 * 16, n1 = t + 1 == threads ? n : n * (t + 1) / threads / 16 * 16;
            sl[t] = (slice){a, b, c, n0, n1, mode, 0.0};
            pthread_create(&th[t], 0, run, &sl[t]);
        }
        for (int t = 0; t < threads; t++) pthread_join(th[t], 0);
        double dt = now() - t0;
        if (r > 0 && dt < best) best = dt; /* pass 0 is the first touch */
    }
    free(a); free(b); free(c);
    return best;
}
"""


def _library(folder: Path) -> ctypes.CDLL:
    cc = next((shutil.which(c) for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc, clang) for the bandwidth kernel")
    key = hashlib.sha256((SOURCE + cc).encode()).hexdigest()[:12]
    path = folder / f"membw_{key}.so"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "membw.c"
            src.write_text(SOURCE)
            so = Path(tmp) / "membw.so"
            proc = subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", "-pthread", str(src), "-o", str(so)],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"bandwidth kernel did not compile: {proc.stderr.strip()[:300]}")
            so.replace(path)
    lib = ctypes.CDLL(str(path))
    lib.mmf_stream.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.mmf_stream.restype = ctypes.c_double
    return lib


def bandwidth(footprint_bytes: int, threads: int, repeats: int = 5, kernel: str = "triad",
              cache: Path | None = None) -> float:  # fmt: skip
    """Bytes per second of ``kernel`` (``"triad"`` or ``"read"``) over ``footprint_bytes`` in all."""
    lib = _library(cache or Path(tempfile.gettempdir()) / "matmulfree-membw")
    if kernel == "triad":
        n, moved = footprint_bytes // 12, 12
    elif kernel == "read":
        n, moved = footprint_bytes // 4, 4
    else:
        raise ValueError(f"kernel must be 'triad' or 'read', got {kernel!r}")
    n = max(n // 16 * 16, 16)
    seconds = lib.mmf_stream(n, threads, repeats, 0 if kernel == "triad" else 1)
    if seconds <= 0:
        raise MemoryError(f"could not allocate {footprint_bytes} bytes for the bandwidth kernel")
    return moved * n / seconds


__all__ = ["bandwidth"]

/* Test harness for the tile kernels on another architecture (cross-compiled, run under qemu-user by
   tests/test_cpu_engine.py): argv: PATH_ID IN OUT. IN holds int64 ntile, M, Kc, then the tiles
   (ntile * Kc * 64 bytes) and x (M * Kc * 16 int8); OUT gets raw int32 (ntile, M, 16).
   Exit 2: the path is not supported by the (emulated) CPU. */
#include <stdio.h>
#include <stdlib.h>

#include "tmm.h"

int main(int argc, char **argv) {
    if (argc != 4) return 1;
    mmf_tile_fn fn = mmf_tile_kernel(atoi(argv[1]));
    if (!fn) return 2;
    FILE *f = fopen(argv[2], "rb");
    int64_t hdr[3];
    if (!f || fread(hdr, 8, 3, f) != 3) return 1;
    int64_t ntile = hdr[0], M = hdr[1], Kc = hdr[2];
    uint8_t *w = malloc((size_t)(ntile * Kc * 64));
    int8_t *x = malloc((size_t)(M * Kc * 16));
    int32_t *raw = malloc(sizeof(int32_t) * (size_t)(ntile * M * 16));
    if (fread(w, 1, (size_t)(ntile * Kc * 64), f) != (size_t)(ntile * Kc * 64)) return 1;
    if (fread(x, 1, (size_t)(M * Kc * 16), f) != (size_t)(M * Kc * 16)) return 1;
    fclose(f);
    for (int64_t t = 0; t < ntile; t++)
        for (int64_t m0 = 0; m0 < M; m0 += MMF_MB) {
            int mb = (int)(M - m0 < MMF_MB ? M - m0 : MMF_MB);
            fn(w + t * Kc * 64, x + m0 * Kc * 16, Kc * 16, mb, Kc, raw + (t * M + m0) * 16);
        }
    FILE *o = fopen(argv[3], "wb");
    if (!o || fwrite(raw, sizeof(int32_t), (size_t)(ntile * M * 16), o) != (size_t)(ntile * M * 16)) return 1;
    fclose(o);
    return 0;
}

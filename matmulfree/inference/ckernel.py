"""The C library behind the CPU engine: exact int8 x ternary products read straight from 2-bit weights,
with runtime CPU dispatch and a thread pool.

The sources in ``csrc/`` are compiled once with the system C compiler (``$CC``, ``cc``, ``gcc`` or
``clang``; a few seconds) into a cache folder and called through :mod:`ctypes`, so no PyTorch headers
or build step are needed. Where no compiler is found, :func:`load` returns ``None`` with the reason
and callers fall back to PyTorch.

Weight layout (:func:`pack_tiles`, described in ``csrc/tmm.h``): rows padded to a multiple of 16, columns
to a multiple of 16; a 16-row tile is a run of 64-byte chunks of 16 columns, where byte ``4r + j``
holds in bits ``2s`` the code ``u = w + 1`` of row ``r``, column ``4s + j``. Still 2 bits per weight;
one shift and one mask give, per 32-bit lane, four weights of one row, ready for a VNNI dot-product
step against four broadcast activations (16 rows at once, no horizontal sums).
``sum(w x) = sum(u x) - sum(x)``; all arithmetic is integer, so every path gives the same exact result.

Dispatch paths (:data:`PATHS`): ``avx512vnni`` (``vpdpbusd`` on 512 bits), ``avxvnni`` (256-bit
``vpdpbusd``), ``avx2`` (``vpmaddubsw`` + ``vpmaddwd``), ``neon-dotprod`` (``sdot``), ``neon``
(``smlal``), ``scalar``. x86 paths are compiled into every x86 build with per-function target
attributes; NEON paths only into aarch64 builds. :meth:`Kernel.best_path` picks the fastest the CPU
runs; ``MATMULFREE_CPU_PATH=NAME`` forces one.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from ..quant import ACT_ABSMAX, QUANT_EPS, ROUNDING_MODES, activation_scale, unpack_ternary

#: Rows per tile and columns per 64-byte chunk of the layout.
TILE_ROWS = 16
CHUNK_K = 16
#: Dispatch paths by id (the order of the C enum), and the preference order.
PATHS = ("scalar", "avx2", "avxvnni", "avx512vnni", "neon", "neon-dotprod", "avx2-lut")
PREFERENCE = ("avx512vnni", "avxvnni", "avx2-lut", "avx2", "neon-dotprod", "neon", "scalar")
SOURCES = ("tmm_kernels.c", "tmm_pool.c", "tmm_group.c", "mlgru_engine.c")
CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-pthread")

_p, _i64, _i32, _f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
#: Bit of the C quantization mode selecting ties-away-from-zero rounding (``MMF_ROUND_HALF_AWAY`` in tmm.h).
ROUND_HALF_AWAY_FLAG = 2


class Lin(ctypes.Structure):
    """``mmf_lin``: one ternary matrix in tile layout with its BitLinear gain, weight scale and eps."""

    _fields_ = [("tiles", _p), ("gain", _p), ("s_w", _f32), ("eps", _f32),
                ("N", _i64), ("K", _i64), ("Np", _i64), ("Kp", _i64)]  # fmt: skip


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cache_dir() -> Path:
    """``$MATMULFREE_CACHE`` or ``$XDG_CACHE_HOME/matmulfree`` (default ``~/.cache/matmulfree``)."""
    root = os.environ.get("MATMULFREE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(root) / ("" if os.environ.get("MATMULFREE_CACHE") else "matmulfree") / "ckernel"


def padded(n: int, multiple: int = CHUNK_K) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def pack_tiles(w_q: torch.Tensor, lut: bool = False) -> torch.Tensor:
    """Ternary ``(N, K)`` (values in {-1, 0, 1}) -> the tile layout, uint8 ``(Np / 16, Kp * 4)``
    (``Kp / 16`` chunks of 64 bytes per tile; padding weights are 0). ``lut``: the look-up-table
    paths' layout (:meth:`Kernel.lut_layout`), the same bytes with each chunk's ``(r, j)`` order
    transposed to ``(j, r)``."""
    n, k = w_q.shape
    np_, kp = padded(n, TILE_ROWS), padded(k, CHUNK_K)
    u = torch.ones(np_, kp, dtype=torch.uint8)
    u[:n, :k] = (w_q.to(torch.int16) + 1).to(torch.uint8)
    u = u.view(np_ // 16, 16, kp // 16, 4, 4)  # (tile, r, chunk, s, j): column 16c + 4s + j
    u = u.permute(0, 2, 1, 4, 3)  # (tile, chunk, r, j, s)
    shifts = (torch.arange(4, dtype=torch.uint8) * 2).view(1, 1, 1, 1, 4)
    b = (u << shifts).sum(dim=-1, dtype=torch.int32).to(torch.uint8)  # (tile, chunk, r, j)
    if lut:
        b = b.transpose(2, 3)  # (tile, chunk, j, r)
    return b.reshape(np_ // 16, -1).contiguous()


def pack_tiles_from_storage(packed: torch.Tensor, k: int) -> torch.Tensor:
    """The tile layout from the project's 2-bit storage code (``quant.pack_ternary`` output)."""
    return pack_tiles(unpack_ternary(packed, k))


def unpack_tiles(tiles: torch.Tensor, n: int, k: int, lut: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_tiles` (for tests): int8 ``(n, k)``."""
    t = tiles.shape[0]
    b = tiles.reshape(t, -1, 4, 16).transpose(2, 3) if lut else tiles.reshape(t, -1, 16, 4)
    b = b.unsqueeze(-1)  # (tile, chunk, r, j, 1)
    u = (b >> (torch.arange(4, dtype=torch.uint8) * 2).view(1, 1, 1, 1, 4)) & 3  # (tile, chunk, r, j, s)
    w = u.permute(0, 2, 1, 4, 3).reshape(t * 16, -1).to(torch.int8) - 1
    return w[:n, :k]


class ThreadPool:
    """A persistent pool of ``threads`` C threads (the caller is one of them); one task at a time."""

    def __init__(self, kernel: Kernel, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.lib = kernel.lib
        self.ptr = self.lib.mmf_pool_new(threads)
        if not self.ptr:
            raise MemoryError("could not create the C thread pool")
        self.threads = self.lib.mmf_pool_threads(self.ptr)
        self.lock = threading.Lock()

    def __del__(self) -> None:
        ptr, self.ptr = getattr(self, "ptr", None), None
        if ptr:
            self.lib.mmf_pool_free(ptr)


class Kernel:
    """The loaded library: integer products (:meth:`mm`), grouped BitLinears (:meth:`group_forward`),
    thread pools (:meth:`pool`) and the dispatch paths of this CPU."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = self.lib = ctypes.CDLL(str(path))
        sig = {
            "mmf_path_supported": ([_i32], _i32), "mmf_path_compiled": ([_i32], _i32), "mmf_best_path": ([], _i32),
            "mmf_path_layout": ([_i32], _i32),
            "mmf_pool_new": ([_i32], _p), "mmf_pool_free": ([_p], None), "mmf_pool_threads": ([_p], _i32),
            "mmf_mm": ([_p, _p, _p, _i64, _i64, _i64, _i64, _i32, _p], _i32),
            "mmf_group_forward": ([_p, _i64, _p, _p, _i64, _p, _f32, _i32, _i32, _p], _i32),
            "mmf_engine_new": ([_p, _p, _i32], _p), "mmf_engine_free": ([_p], None),
            "mmf_engine_forward": ([_p, _p, _i64, _i64, _p, _p], _i32),
        }  # fmt: skip
        for name, (args, res) in sig.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        self.scale_div = 0
        self._pools: dict[int, ThreadPool] = {}

    # -- dispatch ------------------------------------------------------------------------------
    def compiled_paths(self) -> list[str]:
        """Paths built into this library (whether or not this CPU runs them)."""
        return [p for i, p in enumerate(PATHS) if self.lib.mmf_path_compiled(i)]

    def supported_paths(self) -> list[str]:
        """Paths this CPU runs, fastest first."""
        return [p for p in PREFERENCE if self.lib.mmf_path_supported(PATHS.index(p))]

    def best_path(self) -> str:
        """``MATMULFREE_CPU_PATH`` if set (must be supported), else the fastest supported path."""
        forced = os.environ.get("MATMULFREE_CPU_PATH")
        return self.check_path(forced) if forced else PATHS[self.lib.mmf_best_path()]

    def check_path(self, path: str | None) -> str:
        """``path`` (``None``: :meth:`best_path`) if this CPU runs it, else a ``ValueError`` naming it."""
        if path is None:
            return self.best_path()
        if path not in PATHS:
            raise ValueError(f"unknown CPU path {path!r}; expected one of {PATHS}")
        if path not in self.supported_paths():
            built = "compiled in" if path in self.compiled_paths() else "not compiled into this build"
            raise ValueError(f"CPU path {path!r} is not supported by this CPU ({built}); supported: "
                             f"{self.supported_paths()}")  # fmt: skip
        return path

    def lut_layout(self, path: str | None) -> bool:
        """Whether ``path`` (``None``: :meth:`best_path`) reads weights in the look-up-table layout
        (``pack_tiles(w, lut=True)``)."""
        return bool(self.lib.mmf_path_layout(PATHS.index(self.check_path(path))))

    def pool(self, threads: int) -> ThreadPool:
        """The shared pool of ``threads`` threads (created on first use)."""
        if threads not in self._pools:
            self._pools[threads] = ThreadPool(self, threads)
        return self._pools[threads]

    # -- products ------------------------------------------------------------------------------
    def mm(self, tiles: torch.Tensor, x_q: torch.Tensor, n: int, path: str | None = None,
           threads: int = 1) -> torch.Tensor:  # fmt: skip
        """``P`` independent products: ``tiles`` uint8 ``(P, Np / 16, Kp * 4)`` from :func:`pack_tiles`
        (in ``path``'s layout, :meth:`lut_layout`), ``x_q`` int8 ``(P, M, Kp)`` -> ``x_q @ W^T`` int32
        ``(P, M, n)``."""
        P, M, kp = x_q.shape
        if (tiles.dim() != 3 or tiles.shape[0] != P or tiles.shape[2] != kp * 4 or tiles.shape[1] * 16 < n
                or x_q.dtype != torch.int8 or tiles.dtype != torch.uint8 or kp % CHUNK_K):
            raise ValueError(f"ckernel.mm: tiles {tuple(tiles.shape)} {tiles.dtype}, x {tuple(x_q.shape)} {x_q.dtype}"
                             f", n={n} do not match")  # fmt: skip
        x_q, tiles = x_q.contiguous(), tiles.contiguous()
        out = torch.empty(P, M, n, dtype=torch.int32)
        pool = self.pool(threads)
        with pool.lock:
            rc = self.lib.mmf_mm(tiles.data_ptr(), x_q.data_ptr(), out.data_ptr(), P, M, n, kp // CHUNK_K,
                                 PATHS.index(self.check_path(path)), pool.ptr)  # fmt: skip
        if rc:
            raise RuntimeError("ckernel.mm failed")
        return out

    def quant_mode(self, rounding: str = "half_even") -> int:
        """The C quantization mode: this PyTorch's scale rule (bit 0) and the tie rule ``rounding``
        (:data:`matmulfree.quant.ROUNDING_MODES`; bit 1 for ``"half_away"``)."""
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"unknown activation rounding {rounding!r}; expected one of {ROUNDING_MODES}")
        return self.scale_div | (ROUND_HALF_AWAY_FLAG if rounding == "half_away" else 0)

    def group_forward(self, lins: ctypes.Array, x: torch.Tensor, r: torch.Tensor, n: int, eps: float = QUANT_EPS,
                      path: str | None = None, threads: int = 1,
                      rounding: str = "half_even") -> torch.Tensor:  # fmt: skip
        """``P = len(lins)`` BitLinears (same ``K`` and ``N = n``) of one input ``x`` fp32 ``(M, K)`` after
        its RMSNorm factor ``r`` fp32 ``(M,)``: per-token int8 quantization (tie rule ``rounding``), exact
        product and rescale in the reference's fp32 order -> fp32 ``(P, M, n)``."""
        M = x.shape[0]
        out = torch.empty(len(lins), M, n, dtype=torch.float32)
        x, r = x.contiguous(), r.contiguous()
        pool = self.pool(threads)
        with pool.lock:
            rc = self.lib.mmf_group_forward(ctypes.addressof(lins), len(lins), x.data_ptr(), r.data_ptr(), M,
                                            out.data_ptr(), eps, self.quant_mode(rounding),
                                            PATHS.index(self.check_path(path)),
                                            pool.ptr)  # fmt: skip
        if rc:
            raise RuntimeError("ckernel.group_forward failed")
        return out


def scale_rounding() -> int | None:
    """How :func:`matmulfree.quant.activation_scale` rounds ``127 / m`` in this PyTorch: ``0`` as
    ``(1 / m) * 127`` (a reciprocal, then a product), ``1`` as one correctly rounded division,
    ``None`` if neither matches (then the C quantization would not be exact and is not used)."""
    m = torch.rand(4096, generator=torch.Generator().manual_seed(0)) * 100 + 1e-3
    got = activation_scale(m.unsqueeze(-1)).squeeze(-1)
    if torch.equal(got, m.reciprocal() * ACT_ABSMAX):
        return 0
    if torch.equal(got, torch.full_like(m, ACT_ABSMAX) / m):
        return 1
    return None


def _compile(cc: str, out: Path) -> str | None:
    """Compile the library to ``out``; ``None`` or the compiler's first error line."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        so = Path(tmp) / "lib.so"
        cmd = [cc, *FLAGS, *[str(CSRC / s) for s in SOURCES], "-o", str(so), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "error" in ln] or proc.stderr.splitlines() or ["?"]
            return lines[0].strip()
        os.replace(so, out)
    return None


@functools.lru_cache(maxsize=1)
def _load() -> tuple[Kernel | None, str | None]:
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found ($CC, cc, gcc, clang)"
    try:
        text = "".join((CSRC / name).read_text() for name in (*SOURCES, "tmm.h"))
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
        key = hashlib.sha256((text + " ".join(FLAGS) + cc + version).encode()).hexdigest()[:16]
        folder = cache_dir()
        path = folder / f"tmm_{key}.so"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            err = _compile(cc, path)
            if err is not None:
                return None, f"C kernel did not compile with {cc}: {err}"
        kernel = Kernel(path)
        mode = scale_rounding()
        if mode is None:
            return None, "activation_scale rounds 127/m in neither known way; the C quantization would not be exact"
        kernel.scale_div = mode
        return kernel, None
    except OSError as e:
        return None, f"C kernel unavailable: {e}"


def load() -> tuple[Kernel | None, str | None]:
    """``(kernel, None)`` or ``(None, reason)``; compiles on first use (cached)."""
    if os.environ.get("MATMULFREE_NO_CKERNEL"):
        return None, "disabled by MATMULFREE_NO_CKERNEL"
    return _load()


__all__ = ["CHUNK_K", "PATHS", "TILE_ROWS", "Kernel", "Lin", "ThreadPool", "cache_dir", "load", "pack_tiles",
           "pack_tiles_from_storage", "padded", "unpack_tiles"]

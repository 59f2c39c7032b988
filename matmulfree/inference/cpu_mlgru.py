"""The CPU engine for MatMul-free models: the whole forward pass (decode and prefill) in one C call.

:class:`MLGRUEngine` hands a packed :class:`~matmulfree.models.MatMulFreeLM` to the C library of
:mod:`.ckernel` (``csrc/mlgru_engine.c``): every BitLinear's RMSNorm, int8 quantization, exact product
from 2-bit weights and rescale, the MLGRU recurrence and output gate, the GLU and the residual adds
run in C on a persistent pool of ``threads`` threads, in four phases per layer (the f/c/g product
with the recurrence fused into its epilogue, o with the residual, the GLU's in-projection with
``SiLU(g) * u``, down with the residual). Threads split the output rows of every product into
16-row tiles (one cache line of outputs each); the tile kernel is chosen at run time
(:data:`ckernel.PATHS`).

Decode is batch ``B``, one token per sequence. Prefill is the parallel form: each phase's product
covers all prompt tokens at once (weights read once per chunk of up to 64 rows instead of once per
token) and the recurrence is scanned along time in the product's epilogue.

The integer products are exact; the element-wise math is fp32 with its own exp and sums, so logits
are close to the reference model's (not bit-equal, unlike
:class:`~matmulfree.inference.cpu.PackedCPUDecoder`); the tests bound the difference and check that
greedy tokens agree.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..layers import BitLinear
from ..models.base import sample_next
from ..quant import QUANT_EPS
from . import ckernel
from .cpu import lin_struct


class EngineUnavailable(RuntimeError):
    """The C engine cannot run here (no compiler, or a model it does not cover); the message says why."""


class MLGRULayer(ctypes.Structure):
    """``mmf_mlgru_layer`` of ``csrc/mlgru_engine.c``."""

    _fields_ = [*[(n, ckernel.Lin) for n in ("f", "c", "g", "o", "gin", "uin", "down")],
                ("mixer_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p), ("mixer_eps", ctypes.c_float),
                ("mlp_eps", ctypes.c_float), ("g_norm", ctypes.c_void_p), ("g_eps", ctypes.c_float),
                ("lb", ctypes.c_void_p)]  # fmt: skip


class MLGRUModel(ctypes.Structure):
    """``mmf_mlgru_model`` of ``csrc/mlgru_engine.c``."""

    _fields_ = [("L", ctypes.c_int64), ("d", ctypes.c_int64), ("l", ctypes.c_int64), ("V", ctypes.c_int64),
                ("embed", ctypes.c_void_p), ("layers", ctypes.c_void_p), ("final_norm", ctypes.c_void_p),
                ("final_eps", ctypes.c_float), ("head", ctypes.c_void_p), ("qeps", ctypes.c_float),
                ("scale_div", ctypes.c_int)]  # fmt: skip


def default_threads() -> int:
    """``torch.get_num_threads()`` (it follows ``OMP_NUM_THREADS``), at most the CPUs of this process."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus))


def engine_unavailable_reason(model) -> str | None:
    """``None`` when :class:`MLGRUEngine` can run ``model`` here, else why not (one line)."""
    if model.config.architecture != "matmulfree":
        return f"the C engine runs MatMul-free models, not {model.config.architecture!r}"
    if not model.config.quantize_activations:
        return "the C engine computes int8 activations; config field 'quantize_activations' is false"
    if model.embed.weight.device.type != "cpu":
        return f"the C engine runs on the CPU; the model is on {model.embed.weight.device}"
    kernel, reason = ckernel.load()
    return reason if kernel is None else None


class MLGRUEngine:
    """Packed ternary MatMul-free model on the CPU, whole forward pass in C (see module docs).

    Args:
        model: a :class:`~matmulfree.models.MatMulFreeLM` on the CPU (packed or not: unpacked layers
            are quantized by the same rule; ``model.pack()`` first saves memory).
        threads: C threads (default :func:`default_threads`).
        path: C dispatch path (default the fastest this CPU runs; ``MATMULFREE_CPU_PATH`` forces one).

    Raises :class:`EngineUnavailable` with the reason where the C library cannot be built.
    Follows the model's step contract: ``step(tokens (B,), state) -> (logits (B, V), state)``, the
    state one fp32 ``h (B, d)`` per layer (``None`` before the first token).
    """

    def __init__(self, model, threads: int | None = None, path: str | None = None) -> None:
        reason = engine_unavailable_reason(model)
        if reason is not None:
            raise EngineUnavailable(reason)
        self.kernel, _ = ckernel.load()
        self.path = self.kernel.check_path(path)
        self.threads = threads or default_threads()
        self.model = model
        cfg = model.config
        self.L, self.d, self.l, self.V = cfg.n_layers, cfg.d_model, cfg.intermediate_size, cfg.vocab_size
        self._keep: list[torch.Tensor] = []  # tensors the C structs point to
        self.embed = self._f32(model.embed.weight)
        layers = []
        for layer, lb in zip(model.layers, model.forget_lower_bounds()):
            mx, mlp = layer.mixer, layer.mlp
            w_in, s_in = mlp.w_in.ternary_weight()
            gain_in = self._f32(mlp.w_in.norm.weight)
            halves = [self._lin_from(w, s_in, gain_in, mlp.w_in.norm.eps) for w in w_in.split(self.l)]
            layers.append(MLGRULayer(
                self._lin(mx.f_proj), self._lin(mx.c_proj), self._lin(mx.g_proj), self._lin(mx.o_proj),
                halves[0], halves[1], self._lin(mlp.w_down),
                self._f32(layer.mixer_norm.weight).data_ptr(), self._f32(layer.mlp_norm.weight).data_ptr(),
                layer.mixer_norm.eps, layer.mlp_norm.eps,
                self._f32(mx.g_norm.weight).data_ptr() if mx.g_norm is not None else None,
                mx.g_norm.eps if mx.g_norm is not None else 0.0,
                self._f32(lb).data_ptr() if lb is not None else None,
            ))  # fmt: skip
        self._layers = (MLGRULayer * self.L)(*layers)
        head = model.lm_head
        self._head = self._lin(head) if isinstance(head, BitLinear) else None
        self.head_w = None if self._head is not None else head.weight.detach().float()
        self._model = MLGRUModel(self.L, self.d, self.l, self.V, self.embed.data_ptr(), ctypes.addressof(self._layers),
                                 self._f32(model.norm.weight).data_ptr(), model.norm.eps,
                                 ctypes.addressof(self._head) if self._head is not None else None, QUANT_EPS,
                                 self.kernel.quant_mode(cfg.act_rounding))  # fmt: skip
        self.pool = ckernel.ThreadPool(self.kernel, self.threads)
        self.threads = self.pool.threads
        self._ptr = self.kernel.lib.mmf_engine_new(ctypes.addressof(self._model), self.pool.ptr,
                                                   ckernel.PATHS.index(self.path))  # fmt: skip
        if not self._ptr:
            raise MemoryError("mmf_engine_new failed")

    # -- construction helpers ----------------------------------------------------------------
    def _f32(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().float().contiguous()
        self._keep.append(t)
        return t

    def _lin_from(self, w_q: torch.Tensor, s_w: torch.Tensor, gain: torch.Tensor, eps: float) -> ckernel.Lin:
        tiles = ckernel.pack_tiles(w_q, self.kernel.lut_layout(self.path))
        self._keep.append(tiles)
        return lin_struct(tiles, gain, float(s_w), eps, w_q.shape[0], w_q.shape[1])

    def _lin(self, m: BitLinear) -> ckernel.Lin:
        w_q, s_w = m.ternary_weight()
        return self._lin_from(w_q, s_w, self._f32(m.norm.weight), m.norm.eps)

    def __del__(self) -> None:
        ptr, self._ptr = getattr(self, "_ptr", None), None
        if ptr:
            self.kernel.lib.mmf_engine_free(ptr)

    # -- forward -------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens ``(B, T)`` (``T = 1``: a decode step; more: prefill in parallel form) and state ->
        logits of the last position ``(B, V)`` fp32 and the next state."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"MLGRUEngine.forward: need token ids (B, T) with T >= 1, got {tuple(input_ids.shape)}")
        ids = input_ids.to(torch.int64).contiguous()
        B, T = ids.shape
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.V):
            raise ValueError(f"MLGRUEngine: token ids must be in [0, {self.V}), "
                             f"got [{int(ids.min())}, {int(ids.max())}]")  # fmt: skip
        if state is None:
            h = torch.zeros(self.L, B, self.d, dtype=torch.float32)
        else:
            if len(state) != self.L or any(s is not None and tuple(s.shape) != (B, self.d) for s in state):
                raise ValueError(f"MLGRUEngine: state must be {self.L} tensors of shape ({B}, {self.d})")
            h = torch.stack([torch.zeros(B, self.d) if s is None else s.float() for s in state]).contiguous()
        out = torch.empty(B, self.V if self._head is not None else self.d, dtype=torch.float32)
        with self.pool.lock:
            rc = self.kernel.lib.mmf_engine_forward(self._ptr, ids.data_ptr(), B, T, h.data_ptr(), out.data_ptr())
        if rc:
            raise MemoryError(f"MLGRUEngine: out of memory for batch {B} x {T} tokens")
        if self._head is None:
            out = F.linear(out, self.head_w)
        return out, list(h.unbind(0))

    def step(self, token_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One token per sequence: ``(B,)`` -> logits ``(B, V)`` and the next state."""
        return self.forward(token_ids.reshape(-1, 1), state)

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prompt ``(B, T)`` in parallel form -> last logits ``(B, V)`` and the state."""
        return self.forward(input_ids, None)

    @torch.no_grad()
    def stream(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None
               ) -> Iterator[torch.Tensor]:  # fmt: skip
        """Yield each new token ``(B,)``, as :meth:`LanguageModel.stream` does (same sampling rule)."""
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, state = self.prefill(input_ids)
        for i in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            yield token
            if i + 1 < max_new_tokens:
                logits, state = self.step(token, state)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Prompt ``(B, T)`` (or ``(T,)``) -> prompt plus ``max_new_tokens`` tokens."""
        squeeze = input_ids.dim() == 1
        ids = input_ids.unsqueeze(0) if squeeze else input_ids
        new = list(self.stream(ids, max_new_tokens, **sampling))
        out = torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids
        return out[0] if squeeze else out

    def weight_bytes(self) -> int:
        """Bytes of projection weights read per decode step (2-bit tiles, padding included; the
        embedding row and the norms excluded; a full-precision head at its fp32 size)."""
        n = sum(t.numel() for t in self._keep if t.dtype == torch.uint8)
        return n + (self.head_w.numel() * 4 if self.head_w is not None else 0)


__all__ = ["EngineUnavailable", "MLGRUEngine", "default_threads", "engine_unavailable_reason"]

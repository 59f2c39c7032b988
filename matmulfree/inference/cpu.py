"""Fast CPU decoding of MatMul-free models: packed ternary weights, int8 activations, exact
integer products; and a dense fp32 twin with the same structure (the speed baseline).

:class:`PackedCPUDecoder` computes exactly what the reference model's recurrent step
(``MatMulFreeLM.step`` with ``BitLinear.forward_reference`` on packed weights) computes: the same
fp32 operations in the same order, with the ternary products in integers, so its logits and
states are equal, not close (tests check ``torch.equal``). Each group of projections reading one
input (f/c/g of the MLGRU; o; the GLU's in and down; the head) is one call of the C kernel
(:mod:`.ckernel`): RMSNorm gain, per-token int8 quantization, the product read straight from
2-bit weights, and the rescale; only the RMSNorm factor ``rsqrt(mean(x^2) + eps)`` is computed by
PyTorch, as in the reference. Without a C compiler the same arithmetic runs as
:func:`~matmulfree.quant.activation_quantize` plus :class:`~matmulfree.inference.ternary_mm.TernaryMatmul`
(FBGEMM int8, or fp32 on integers).

:class:`DenseCPUDecoder` is the same model with dense fp32 weights ``W_q / s_w`` (what an fp32
deployment of it runs): per projection the model's RMSNorm and ``F.linear`` / ``bmm``, no
activation quantization (so its outputs differ from the ternary model's by the activation
rounding). The two share the step code below, so a speed ratio between them isolates the weight
format and the integer arithmetic.

Both follow the model's step contract: ``step(tokens (B,), state) -> (logits (B, V), state)`` with
the state a list of per-layer fp32 ``h (B, d)`` (``None`` before the first token). Threads: the C
products use ``threads`` threads; PyTorch's element-wise work uses ``torch.get_num_threads()``. The
fastest engine, with the whole step in C, is :class:`~matmulfree.inference.cpu_mlgru.MLGRUEngine`
(close to, not bit-equal with, the reference: its element-wise math is its own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import rms_norm
from ..layers import BitLinear
from ..quant import QUANT_EPS, activation_quantize
from . import ckernel
from .ternary_mm import TernaryMatmul


class _Group:
    """Projections that read the same (block-normalised) input ``x (B, d)``; each applies its own
    BitLinear RMSNorm gain. ``gain (P, 1, d)``, ``eps`` shared."""

    def __init__(self, layers: list[BitLinear]) -> None:
        self.has_norm = layers[0].norm is not None
        if any((m.norm is not None) != self.has_norm for m in layers):
            raise ValueError("projections in one group must all have an inner RMSNorm or all have none")
        self.eps = layers[0].norm.eps if self.has_norm else layers[0].eps
        if any(m.eps != self.eps or m.in_features != layers[0].in_features for m in layers):
            raise ValueError("projections in one group must share in_features and eps")
        if any(not m.quantize_activations for m in layers):
            raise ValueError("the CPU engine computes int8 activations; a BitLinear has quantize_activations=False")
        self.P = len(layers)
        self.out = [m.out_features for m in layers]
        # no inner norm: unit gains and a unit factor, so x * 1 * 1 passes the input through exactly
        gains = [m.norm.weight.detach().float() if self.has_norm else torch.ones(m.in_features) for m in layers]
        self.gain = torch.stack(gains).unsqueeze(1)
        ternary = [m.ternary_weight() for m in layers]
        self.w_q = [w for w, _ in ternary]
        self.s_w = torch.stack([s.float().reshape(()) for _, s in ternary]).reshape(self.P, 1, 1)

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """The RMSNorm output of every projection, ``(P, B, d)``: ``rms_norm(x) * gain_p`` exactly
        as ``rms_norm(x, gain_p)`` computes it (``x`` itself for projections without a norm)."""
        if not self.has_norm:
            return x.float().expand(self.P, *x.shape)
        return rms_norm(x, None, self.eps) * self.gain


def lin_struct(tiles: torch.Tensor, gain: torch.Tensor, s_w: float, eps: float, n: int, k: int) -> ckernel.Lin:
    """The C description of one ternary matrix (the tensors must outlive it)."""
    return ckernel.Lin(tiles.data_ptr(), gain.data_ptr(), float(s_w), float(eps), n, k, ckernel.padded(n, 16),
                       ckernel.padded(k))  # fmt: skip


class PackedGroup(_Group):
    """``P`` BitLinears reading one input, on packed 2-bit weights: ``x (B, K)`` -> ``(P, B, N)`` fp32,
    equal (``torch.equal``) to each layer's ``forward_reference`` on its packed weights.

    The generic building block of the CPU engine (any model whose projections share an input can
    use it: the MLGRU's f/c/g, an RWKV block's r/k/v/g, ...). All ``P`` layers need one ``in_features``,
    ``out_features`` and eps. With the C kernel, one call does every layer's RMSNorm gain, per-token
    int8 quantization, the exact product from 2-bit weights on ``threads`` threads (they split the
    output rows) and the rescale, in the reference's fp32 order; only the RMSNorm factor
    ``rsqrt(mean(x^2) + eps)`` is computed by PyTorch, as in the reference. Without it (or with
    ``backend`` ``"int8"``/``"float"``) the same arithmetic runs as
    :func:`~matmulfree.quant.activation_quantize` plus :class:`TernaryMatmul`.

    Args:
        layers: the BitLinears (packed or not; unpacked ones are quantized by the same rule).
        backend: ``"auto"`` (C kernel if it loads), ``"c"`` (required), ``"int8"`` or ``"float"``.
        threads: C threads for the products.
        path: C dispatch path (:data:`ckernel.PATHS`; default the fastest this CPU runs).
    """

    def __init__(self, layers: list[BitLinear], backend: str = "auto", threads: int = 1,
                 path: str | None = None) -> None:  # fmt: skip
        super().__init__(layers)
        if len(set(self.out)) != 1:
            raise ValueError(f"projections in one group must share out_features, got {self.out}")
        kernel, reason = ckernel.load() if backend in ("auto", "c") else (None, f"backend {backend!r} requested")
        self.kernel, self.threads = kernel, threads
        if kernel is not None:
            self.path = kernel.check_path(path)
            self.tiles = [ckernel.pack_tiles(w) for w in self.w_q]
            self.gains = [g.reshape(-1).contiguous() for g in self.gain]
            n, k = self.out[0], layers[0].in_features
            self.lins = (ckernel.Lin * self.P)(*[lin_struct(t, g, s, self.eps, n, k) for t, g, s in
                                                zip(self.tiles, self.gains, self.s_w.flatten().tolist())])  # fmt: skip
            self.backend, self.fallback_reason = "c", None
        else:
            if backend == "c":
                raise RuntimeError(f"PackedGroup: C kernel unavailable: {reason}")
            self.mm = TernaryMatmul(self.w_q, "auto" if backend == "auto" else backend)
            self.backend, self.path = self.mm.backend, None
            self.fallback_reason = self.mm.fallback_reason if backend == "auto" else None
            if backend == "auto":
                self.fallback_reason = "; ".join(r for r in (reason, self.fallback_reason) if r)
        del self.w_q

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, K)`` -> ``(P, B, N)`` fp32."""
        if self.kernel is not None:
            if self.has_norm:
                r = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # as functional.rms_norm computes it
            else:
                r = torch.ones(x.shape[0], 1)
            return self.kernel.group_forward(self.lins, x.float(), r.reshape(-1), self.out[0], QUANT_EPS, self.path,
                                             self.threads)  # fmt: skip
        x_q, s_x = activation_quantize(self.normed(x))  # (P, B, d) int8, (P, B, 1)
        return self.mm(x_q) / (s_x * self.s_w)

    def weight_bytes(self) -> int:
        """Bytes of weights read per call (2 bits per padded weight for the C kernel)."""
        return sum(t.numel() for t in self.tiles) if self.kernel is not None else self.mm.weight_bytes()


#: Former private name, kept for callers of the first version.
_PackedGroup = PackedGroup


class _DenseGroup(_Group):
    def __init__(self, layers: list[BitLinear]) -> None:
        super().__init__(layers)
        w = [(w_q.float() / s).contiguous() for w_q, s in zip(self.w_q, self.s_w.flatten())]
        del self.w_q
        self.w = w[0] if self.P == 1 else None
        self.w_t = None if self.P == 1 else torch.stack([wi.t() for wi in w]).contiguous()  # (P, d, N)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xn = self.normed(x)
        if self.P == 1:
            return F.linear(xn[0], self.w).unsqueeze(0)
        return torch.bmm(xn, self.w_t)

    def weight_bytes(self) -> int:
        return 4 * (self.w.numel() if self.w is not None else self.w_t.numel())


class _DecoderBase:
    """One recurrent step of a :class:`~matmulfree.models.MatMulFreeLM` from precomputed groups."""

    name = ""

    def __init__(self, model) -> None:
        if model.config.architecture != "matmulfree":
            raise ValueError(f"{type(self).__name__} needs a MatMul-free model, got {model.config.architecture!r}")
        if not model.config.quantize_activations:
            raise ValueError(f"{type(self).__name__} computes int8 activations; this model has config field "
                             "'quantize_activations'=false (run it with the reference model instead)")
        if model.embed.weight.device.type != "cpu":
            raise ValueError(f"{type(self).__name__} runs on the CPU; the model is on {model.embed.weight.device}")
        self.model = model
        self.embed = model.embed.weight.detach()
        self.layers = []
        for layer, lb in zip(model.layers, model.forget_lower_bounds()):
            mx, mlp = layer.mixer, layer.mlp
            self.layers.append(dict(
                mixer_norm=(layer.mixer_norm.weight.detach(), layer.mixer_norm.eps),
                fcg=self._group([mx.f_proj, mx.c_proj, mx.g_proj]),
                lb=None if lb is None else lb.detach(),
                g_norm=None if mx.g_norm is None else (mx.g_norm.weight.detach(), mx.g_norm.eps),
                o=self._group([mx.o_proj]),
                mlp_norm=(layer.mlp_norm.weight.detach(), layer.mlp_norm.eps),
                w_in=self._group([mlp.w_in]),
                w_down=self._group([mlp.w_down]),
            ))  # fmt: skip
        self.final_norm = (model.norm.weight.detach(), model.norm.eps)
        head = model.lm_head
        self.head = self._group([head]) if isinstance(head, BitLinear) else None
        self.head_w = None if self.head is not None else head.weight.detach()

    def _group(self, layers: list[BitLinear]):
        raise NotImplementedError

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens ``(B,)`` and state -> logits ``(B, V)`` fp32 and the next state."""
        x = F.embedding(token_ids, self.embed)
        hs = state if state is not None else [None] * len(self.layers)
        new_state = []
        for p, h in zip(self.layers, hs):
            xm = rms_norm(x, *p["mixer_norm"])
            y = p["fcg"](xm)
            f = torch.sigmoid(y[0])
            if p["lb"] is not None:
                f = p["lb"] + (1 - p["lb"]) * f
            b = (1 - f) * F.silu(y[1])
            h = b if h is None else f * h + b
            if p["g_norm"] is not None:
                o = rms_norm(y[2], *p["g_norm"]) * F.silu(h)
            else:
                o = y[2] * torch.sigmoid(h)
            x = x + p["o"](o)[0]
            g, u = p["w_in"](rms_norm(x, *p["mlp_norm"]))[0].chunk(2, dim=-1)
            x = x + p["w_down"](F.silu(g) * u)[0]
            new_state.append(h)
        xn = rms_norm(x, *self.final_norm)
        logits = self.head(xn)[0] if self.head is not None else F.linear(xn, self.head_w)
        return logits, new_state

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Prompt ``(B, T)`` through the model's parallel path -> last logits ``(B, V)``, state."""
        out = self.model(input_ids)
        return out.logits[:, -1], out.state

    def weight_bytes(self) -> int:
        """Bytes of projection weights read per step (embedding row and norms excluded)."""
        groups = [g for p in self.layers for g in (p["fcg"], p["o"], p["w_in"], p["w_down"])]
        n = sum(g.weight_bytes() for g in groups)
        if self.head is not None:
            n += self.head.weight_bytes()
        else:
            n += self.head_w.numel() * self.head_w.element_size()
        return n


class PackedCPUDecoder(_DecoderBase):
    """Packed ternary decode on the CPU, equal to the reference step (see module docs).

    Args:
        model: a :class:`~matmulfree.models.MatMulFreeLM` on the CPU, packed or not (unpacked
            models are quantized with the same rule; ``model.pack()`` first to save memory).
        backend: ``"auto"``, ``"c"``, ``"int8"`` or ``"float"`` (see :class:`PackedGroup`).
        threads: C threads per product; path: C dispatch path (default the fastest here).
    """

    name = "packed"

    def __init__(self, model, backend: str = "auto", threads: int = 1, path: str | None = None) -> None:
        self.backend_request, self.threads, self.path_request = backend, threads, path
        super().__init__(model)
        first = self.layers[0]["fcg"]
        self.backend, self.fallback_reason = first.backend, first.fallback_reason

    def _group(self, layers):
        return PackedGroup(layers, self.backend_request, self.threads, self.path_request)


class DenseCPUDecoder(_DecoderBase):
    """The same model with dense fp32 weights ``W_q / s_w`` and ``F.linear`` (the baseline)."""

    name = "dense-fp32"

    def _group(self, layers):
        return _DenseGroup(layers)


__all__ = ["DenseCPUDecoder", "PackedCPUDecoder"]

"""Fused decoding: the MLGRU step kernel and per-token step helpers captured in CUDA graphs.

:class:`MatMulFreeDecoder` runs one token of a packed :class:`~matmulfree.models.MatMulFreeLM` in 8
launches per layer (norm+quantize of the f/c/g inputs, one packed GEMV for f/c/g, the fused MLGRU
step with the o-projection's norm+quantize, the o GEMV with the residual add, and the same three
for the GLU) on static buffers, and captures the whole step in a CUDA graph.
:class:`TransformerDecoder` gives the Transformer++ baseline the same treatment (static bf16 KV
cache written in place, graph-captured step), so speed comparisons stay fair. Both feed the greedy
next token back into their input buffer inside the graph, so repeated :meth:`replay` decodes with
no host round trip. Graph capture needs CUDA; the eager step also runs under the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from matmulfree.layers import BitLinear, rms_norm
from matmulfree.quant import QUANT_EPS, activation_quantize

from ._common import activation_scale, autotune, check_device, next_pow2, quantize_activation, round_to
from .norm_quant import rmsnorm_quantize_multi, tl_dtype
from .packed import packed_matmul

# ----------------------------------------------------------------------------------------------
# MLGRU single-step kernel
# ----------------------------------------------------------------------------------------------


def _step_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w) for w in (1, 2, 4, 8, 16)]


@autotune(_step_configs(), key=["D", "HAS_LB", "RELEASED"], interpret=triton.Config({}, num_warps=4),
          restore_value=["h_ptr"])  # fmt: skip
@triton.jit
def _mlgru_step_kernel(
    y_ptr, h_ptr, lb_ptr, gn_ptr, og_ptr, q_ptr, sx_ptr, D, stride_y, eps, qeps,
    HAS_LB: tl.constexpr, RELEASED: tl.constexpr, DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One token: pre-activations ``y = [y_f | y_c | y_g]`` and state ``h`` (updated in place) ->
    int8 input of the o-projection (its RMSNorm and per-token quantization fused)."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    m = d < D
    yb = y_ptr + row * stride_y
    yf = tl.load(yb + d, mask=m, other=0.0).to(tl.float32)
    yc = tl.load(yb + D + d, mask=m, other=0.0).to(tl.float32)
    yg = tl.load(yb + 2 * D + d, mask=m, other=0.0).to(tl.float32)
    f = tl.sigmoid(yf)
    if HAS_LB:
        lb = tl.load(lb_ptr + d, mask=m, other=0.0).to(tl.float32)
        f = lb + (1 - lb) * f
    c = yc * tl.sigmoid(yc)
    h = tl.load(h_ptr + row * D + d, mask=m, other=0.0)
    h = f * h + (1 - f) * c
    tl.store(h_ptr + row * D + d, h, mask=m)
    if RELEASED:  # o' = RMSNorm(g) * SiLU(h)
        gw = tl.load(gn_ptr + d, mask=m, other=0.0).to(tl.float32)
        yg = round_to(yg, DTYPE)
        rg = tl.rsqrt(tl.sum(yg * yg, axis=0) / D + eps)
        o = round_to(yg * rg * gw, DTYPE) * (h * tl.sigmoid(h))
    else:  # o' = g * sigmoid(h)
        o = yg * tl.sigmoid(h)
    o = round_to(o, DTYPE)
    og = tl.load(og_ptr + d, mask=m, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(o * o, axis=0) / D + eps)
    xn = round_to(o * r * og, DTYPE)
    sx = activation_scale(tl.max(tl.abs(xn), axis=0), qeps)
    q = quantize_activation(xn, sx, tl.float32)
    tl.store(q_ptr + row * D + d, q.to(tl.int8), mask=m)
    tl.store(sx_ptr + row, sx)


def mlgru_step(
    y: torch.Tensor,
    h: torch.Tensor,
    o_gain: torch.Tensor,
    eps: float,
    lower_bound: torch.Tensor | None = None,
    g_norm: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused MLGRU decode step (kernel).

    Args:
        y: ``(B, 3D)`` outputs of the f, c and g projections (concatenated).
        h: fp32 state ``(B, D)``, updated in place to ``f h + (1 - f) SiLU(c)``.
        o_gain: RMSNorm gain ``(D,)`` of the o-projection; ``eps`` its epsilon.
        lower_bound: forget-gate lower bound ``(D,)`` or None; ``g_norm``: gain of the output-gate
            RMSNorm (the "released" gate ``RMSNorm(g) SiLU(h)``), None for the paper's ``g sigmoid(h)``.
        dtype: activation dtype the reference rounds ``o'`` and the normalised input to.
    Returns:
        ``(x_q int8 (1, B, D), s_x fp32 (1, B))``: the o-projection's quantized input.
    """
    check_device(y, h)
    B, D = h.shape
    if h.dtype != torch.float32 or not h.is_contiguous() or y.shape != (B, 3 * D) or y.stride(-1) != 1:
        raise ValueError(f"mlgru_step: need y (B, 3D) and a contiguous fp32 state h (B, D); got {tuple(y.shape)}, "
                         f"{tuple(h.shape)} {h.dtype}")  # fmt: skip
    q = torch.empty(1, B, D, dtype=torch.int8, device=h.device)
    sx = torch.empty(1, B, dtype=torch.float32, device=h.device)
    _mlgru_step_kernel[(B,)](
        y, h, lower_bound if lower_bound is not None else h, g_norm if g_norm is not None else o_gain, o_gain,
        q, sx, D, y.stride(0), float(eps), QUANT_EPS,
        HAS_LB=lower_bound is not None, RELEASED=g_norm is not None, DTYPE=tl_dtype(dtype), BLOCK_D=next_pow2(D),
    )  # fmt: skip
    return q, sx


def mlgru_step_naive(y, h, o_gain, eps, lower_bound=None, g_norm=None, dtype=torch.float32):
    """Reference of :func:`mlgru_step` (the arithmetic of ``MLGRU.step``); returns ``(h', x_q, s_x)``
    without modifying ``h``."""
    yf, yc, yg = y.float().chunk(3, dim=-1)
    f = torch.sigmoid(yf)
    if lower_bound is not None:
        f = lower_bound + (1 - lower_bound) * f
    h = f * h + (1 - f) * F.silu(yc)
    o = rms_norm(yg.to(dtype), g_norm, eps) * F.silu(h) if g_norm is not None else yg * torch.sigmoid(h)
    q, sx = activation_quantize(rms_norm(o.to(dtype), o_gain, eps))
    return h, q.unsqueeze(0), sx.reshape(1, -1)


# ----------------------------------------------------------------------------------------------
# CUDA graph capture
# ----------------------------------------------------------------------------------------------


class GraphedStep:
    """Captures ``fn()`` (which reads and writes only static buffers) in a CUDA graph.

    ``save``/``restore`` snapshot the buffers that ``fn`` mutates, so the warm-up runs before the
    capture (compilation and autotuning happen there, never inside the capture) leave no trace.
    """

    def __init__(self, fn: Callable[[], None], save: Callable[[], object], restore: Callable[[object], None],
                 warmup: int = 2) -> None:  # fmt: skip
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graph capture needs a CUDA device")
        snapshot = save()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn()
        restore(snapshot)
        torch.cuda.synchronize()

    def replay(self) -> None:
        self.graph.replay()


class _DecoderBase:
    """Static input/output buffers, eager or graph-replayed steps, greedy feedback."""

    tokens: torch.Tensor
    logits: torch.Tensor
    _graph: GraphedStep | None = None

    def _run(self) -> None:  # computes self.logits from self.tokens, updates the state
        raise NotImplementedError

    def _save(self) -> object:
        raise NotImplementedError

    def _restore(self, snapshot: object) -> None:
        raise NotImplementedError

    def _run_and_feed(self) -> None:
        self._run()
        self.tokens.copy_(self.logits.argmax(dim=-1))

    def capture(self) -> _DecoderBase:
        """Capture one step (and its greedy feedback) in a CUDA graph; later steps replay it."""
        self._graph = GraphedStep(self._run_and_feed, self._save, self._restore)
        return self

    @property
    def graphed(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def step(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """One token for each sequence: ``tokens (B,)`` (default: the greedy choice of the last step)
        -> logits ``(B, V)`` (a static buffer, overwritten by the next step)."""
        if tokens is not None:
            self.tokens.copy_(tokens.reshape(self.tokens.shape))
        if self._graph is not None:
            self._graph.replay()
        else:
            self._run_and_feed()
        return self.logits

    @torch.no_grad()
    def replay(self, n: int) -> None:
        """``n`` greedy steps back to back (no host synchronisation)."""
        for _ in range(n):
            self.step()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy generation: prefill ``(B, T)`` with the parallel path, then graph/eager steps."""
        logits = self.prefill(input_ids)
        self.tokens.copy_(logits.argmax(-1))
        new = [self.tokens.clone()]
        for _ in range(max_new_tokens - 1):
            self.step()
            new.append(self.tokens.clone())
        return torch.cat([input_ids, torch.stack(new[:max_new_tokens], dim=1)], dim=1)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MatMulFreeDecoder(_DecoderBase):
    """Per-token step of a packed MatMulFreeLM on fused kernels and static buffers.

    Args:
        model: a :class:`~matmulfree.models.MatMulFreeLM` after ``model.pack()``.
        batch_size: sequences decoded together (the GEMV path covers 1-16).
    """

    def __init__(self, model, batch_size: int = 1) -> None:
        cfg = model.config
        bitlinears = [m for m in model.modules() if isinstance(m, BitLinear)]
        if not bitlinears or not all(m.packed for m in bitlinears):
            raise ValueError("MatMulFreeDecoder needs a packed model: call model.pack() first")
        self.model, self.B = model, batch_size
        self.eps = cfg.norm_eps
        dev = model.embed.weight.device
        check_device(model.embed.weight)
        self.dtype = model.embed.weight.dtype
        self.layers = []
        for layer, lb in zip(model.layers, model.forget_lower_bounds()):
            mx, mlp = layer.mixer, layer.mlp
            fcg = (mx.f_proj, mx.c_proj, mx.g_proj)
            self.layers.append(dict(
                mixer_norm=layer.mixer_norm.weight.detach(),
                fcg_gain=torch.stack([p.norm.weight.detach() for p in fcg]),
                fcg_packed=torch.cat([p.weight_packed for p in fcg]),
                fcg_scale=torch.stack([p.weight_scale.float() for p in fcg]).contiguous(),
                lb=None if lb is None else lb.detach().float().contiguous(),
                g_norm=None if mx.g_norm is None else mx.g_norm.weight.detach(),
                o=self._lin(mx.o_proj),
                mlp_norm=layer.mlp_norm.weight.detach(),
                w_in=self._lin(mlp.w_in),
                w_down=self._lin(mlp.w_down),
            ))  # fmt: skip
        self.final_norm = model.norm.weight.detach()
        self.head = self._lin(model.lm_head) if isinstance(model.lm_head, BitLinear) else None
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=dev)
        self.h = torch.zeros(cfg.n_layers, batch_size, cfg.d_model, dtype=torch.float32, device=dev)
        self.logits = torch.zeros(batch_size, cfg.vocab_size, dtype=self.dtype, device=dev)

    @staticmethod
    def _lin(m: BitLinear) -> dict:
        return dict(gain=m.norm.weight.detach().unsqueeze(0), packed=m.weight_packed,
                    scale=m.weight_scale.float().reshape(1), k=m.in_features)  # fmt: skip

    def _gemv(self, q, sx, lin, out_dtype, residual=None):
        return packed_matmul(q, lin["packed"], sx, lin["scale"], lin["k"], out_dtype, residual=residual)

    def _run(self) -> None:
        eps, dt = self.eps, self.dtype
        x = F.embedding(self.tokens, self.model.embed.weight)
        for i, p in enumerate(self.layers):
            q, sx, _ = rmsnorm_quantize_multi(x, p["fcg_gain"], eps, outer=p["mixer_norm"])
            y = packed_matmul(q, p["fcg_packed"], sx, p["fcg_scale"], x.shape[1], torch.float32)
            q, sx = mlgru_step(y, self.h[i], p["o"]["gain"][0], eps, p["lb"], p["g_norm"], dt)
            x = self._gemv(q, sx, p["o"], dt, residual=x)
            q, sx, _ = rmsnorm_quantize_multi(x, p["w_in"]["gain"], eps, outer=p["mlp_norm"])
            u = self._gemv(q, sx, p["w_in"], dt)
            q, sx, _ = rmsnorm_quantize_multi(u, p["w_down"]["gain"], eps, glu=True)
            x = self._gemv(q, sx, p["w_down"], dt, residual=x)
        if self.head is not None:
            q, sx, _ = rmsnorm_quantize_multi(x, self.head["gain"], eps, outer=self.final_norm)
            logits = self._gemv(q, sx, self.head, dt)
        else:
            logits = self.model.lm_head(rms_norm(x, self.final_norm, eps))
        self.logits.copy_(logits)

    def _save(self) -> object:
        return self.h.clone(), self.tokens.clone()

    def _restore(self, snapshot) -> None:
        self.h.copy_(snapshot[0])
        self.tokens.copy_(snapshot[1])

    def reset(self, state: list[torch.Tensor | None] | None = None) -> None:
        """Set the recurrent state (a model state: one ``(B, d)`` per layer) or zero it."""
        self.h.zero_()
        for i, s in enumerate(state or []):
            if s is not None:
                self.h[i].copy_(s)

    def state(self) -> list[torch.Tensor]:
        """The current state in the model's format (copies)."""
        return [h.clone() for h in self.h]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``(B, T)`` through the parallel path (packed GEMM + scan kernels), load
        the state, return the last logits ``(B, V)``."""
        out = self.model(input_ids)
        self.reset(out.state)
        return out.logits[:, -1]

    def weight_bytes(self) -> int:
        """Bytes of packed ternary weights (and scales) read per token."""
        n = sum(p["fcg_packed"].numel() + p["o"]["packed"].numel() + p["w_in"]["packed"].numel()
                + p["w_down"]["packed"].numel() + 16 for p in self.layers)  # fmt: skip
        if self.head is not None:
            n += self.head["packed"].numel() + 4
        else:
            n += self.model.lm_head.weight.numel() * self.model.lm_head.weight.element_size()
        return n


class TransformerDecoder(_DecoderBase):
    """Per-token step of a :class:`~matmulfree.models.TransformerLM` with a static KV cache.

    Keys and values live in preallocated ``(layers, B, H, max_len, head_dim)`` buffers in the model's
    dtype, written in place at a position held on the device, with attention masked to the filled
    prefix, so the step can be captured in a CUDA graph.
    """

    def __init__(self, model, batch_size: int = 1, max_len: int | None = None) -> None:
        cfg = model.config
        self.model, self.B = model, batch_size
        self.max_len = max_len or cfg.max_seq_len
        dev, dt = model.embed.weight.device, model.embed.weight.dtype
        self.H, self.hd = cfg.n_heads, cfg.d_model // cfg.n_heads
        shape = (cfg.n_layers, batch_size, self.H, self.max_len, self.hd)
        self.k = torch.zeros(shape, dtype=dt, device=dev)
        self.v = torch.zeros(shape, dtype=dt, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.arange = torch.arange(self.max_len, device=dev)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=dev)
        self.logits = torch.zeros(batch_size, cfg.vocab_size, dtype=dt, device=dev)

    def _run(self) -> None:
        from matmulfree.models.transformer import apply_rope, rope_tables

        m, B, H, hd = self.model, self.B, self.H, self.hd
        d = H * hd
        x = m.embed(self.tokens)[:, None]
        cos, sin = rope_tables(hd, self.pos, m.config.rope_theta)
        mask = (self.arange <= self.pos)[None, None, None, :]
        for i, layer in enumerate(m.layers):
            q, k, v = layer.attn.qkv(layer.attn_norm(x)).view(B, 1, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.k[i].index_copy_(2, self.pos, k)
            self.v[i].index_copy_(2, self.pos, v)
            y = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask)
            x = x + layer.attn.o_proj(y.transpose(1, 2).reshape(B, 1, d))
            x = x + layer.mlp(layer.mlp_norm(x))
        self.logits.copy_(m.lm_head(m.norm(x))[:, -1])
        self.pos.add_(1)

    def _save(self) -> object:
        return self.pos.clone(), self.tokens.clone()

    def _restore(self, snapshot) -> None:
        self.pos.copy_(snapshot[0])
        self.tokens.copy_(snapshot[1])

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Parallel path over the prompt ``(B, T)``; its KV cache is copied into the static one."""
        T = input_ids.shape[1]
        if T >= self.max_len:
            raise ValueError(f"prompt of {T} tokens does not fit max_len={self.max_len}")
        out = self.model(input_ids)
        for i in range(len(self.model.layers)):
            self.k[i, :, :, :T].copy_(out.state.k[i])
            self.v[i, :, :, :T].copy_(out.state.v[i])
        self.pos.fill_(T)
        return out.logits[:, -1]

    def weight_bytes(self) -> int:
        """Bytes of weights read per token (all parameters except the embedding table)."""
        return sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if not n.startswith("embed"))

    def cache_bytes(self, context: int) -> int:
        """Bytes of K and V read per token at ``context`` cached tokens."""
        return 2 * self.k.shape[0] * self.B * self.H * context * self.hd * self.k.element_size()


__all__ = ["GraphedStep", "MatMulFreeDecoder", "TransformerDecoder", "mlgru_step", "mlgru_step_naive"]

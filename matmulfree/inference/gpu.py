"""GPU decoding: per-token steps on the fused Triton kernels with static buffers, captured in CUDA graphs.

:class:`MatMulFreeDecoder` runs one token of a packed :class:`~matmulfree.models.MatMulFreeLM` in 8
launches per layer (norm+quantize of the f/c/g inputs, one packed GEMV for f/c/g, the fused MLGRU
step with the o-projection's norm+quantize, the o GEMV with the residual add, and the same three
for the GLU) on static buffers, and captures the whole step in a CUDA graph.
:class:`FusedMatMulFreeDecoder` runs the same step in 4 launches per layer (norms, quantization and
element-wise work fused into the packed products' prologues and epilogues) on static buffers.
:class:`TransformerDecoder` gives the Transformer++ baseline the same treatment (static bf16 KV
cache written in place, graph-captured step), so speed comparisons stay fair. Both feed the greedy
next token back into their input buffer inside the graph, so repeated :meth:`~MatMulFreeDecoder.replay` decodes with
no host round trip. Graph capture needs CUDA; the eager step also runs under the Triton interpreter.
This module imports Triton (through :mod:`matmulfree.triton_kernels`); import it only where Triton exists.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from matmulfree.functional import rms_norm
from matmulfree.layers import BitLinear
from matmulfree.models.transformer import apply_rope, rope_tables
from matmulfree.triton_kernels._common import check_device
from matmulfree.triton_kernels.decode import mlgru_step
from matmulfree.triton_kernels.fused_decode import fused_bitlinear
from matmulfree.triton_kernels.norm_quant import rmsnorm_quantize_multi
from matmulfree.triton_kernels.packed import packed_matmul


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
        if not cfg.quantize_activations:
            raise ValueError("MatMulFreeDecoder computes int8 activations; config field 'quantize_activations' "
                             "is false (run the model itself instead)")
        bitlinears = [m for m in model.modules() if isinstance(m, BitLinear)]
        if not bitlinears or not all(m.packed for m in bitlinears):
            raise ValueError("MatMulFreeDecoder needs a packed model: call model.pack() first")
        if cfg.act_rounding != "half_even" or cfg.linear_eps != cfg.norm_eps:
            field = "act_rounding" if cfg.act_rounding != "half_even" else "bitlinear_eps"
            raise ValueError(f"MatMulFreeDecoder: config field '{field}'={getattr(cfg, field)!r} is not implemented by "
                             "the fused decode kernels (ties to even, one eps for every norm); use the PyTorch path "
                             "(model.step) or set act_rounding to half_even (differs only at exact rounding ties)")
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


class FusedMatMulFreeDecoder(MatMulFreeDecoder):
    """:class:`MatMulFreeDecoder` in ``4 L + 1`` launches: each BitLinear group's norms and int8
    quantization run in the prologue of its packed GEMV and the element-wise work in its epilogue
    (:func:`~matmulfree.triton_kernels.fused_decode.fused_bitlinear`). Per layer: f/c/g with the block
    norm, the recurrence and the output gate (layer 0 gathers the embedding rows itself); o with the
    released gate's norm and the residual; ``w_in`` with the MLP norm and ``SiLU(g) * u``; ``w_down``
    with the residual. Then the head with the final norm.

    Every intermediate lives in a static buffer (``buffers()``), so the step, argmax feedback
    included, is captured by ``capture()`` as one CUDA graph; without CUDA the same step runs
    eagerly (under ``TRITON_INTERPRET=1`` on the CPU).
    """

    def __init__(self, model, batch_size: int = 1) -> None:
        super().__init__(model, batch_size)
        cfg, dev = model.config, model.embed.weight.device
        B, d = batch_size, cfg.d_model
        for p in self.layers:
            w_in = p["w_in"]
            w_in["gain2"] = w_in["gain"].expand(2, -1).contiguous()
            w_in["scale2"] = w_in["scale"].expand(2).contiguous()
        self.released = self.layers[0]["g_norm"] is not None
        self.x = torch.zeros(B, d, dtype=self.dtype, device=dev)  # residual stream
        self.y = torch.zeros(B, d, dtype=self.dtype, device=dev)  # o-projection input (or released g)
        self.hs = torch.zeros(B, d, dtype=torch.float32, device=dev)  # SiLU(h) of the released gate
        self.p = torch.zeros(B, cfg.intermediate_size, dtype=self.dtype, device=dev)  # GLU output

    def buffers(self) -> dict[str, torch.Tensor]:
        """The static buffers one step reads and writes."""
        return {"tokens": self.tokens, "x": self.x, "y": self.y, "hs": self.hs, "p": self.p, "h": self.h,
                "logits": self.logits}  # fmt: skip

    def launches_per_step(self) -> int:
        """Fused kernel launches of one step (the argmax feedback and a full-precision head aside)."""
        return 4 * len(self.layers) + (1 if self.head is not None else 0)

    def _run(self) -> None:
        eps, dt, d, l = self.eps, self.dtype, self.x.shape[1], self.p.shape[1]
        for i, p in enumerate(self.layers):
            src = dict(tokens=self.tokens, x_copy=self.x) if i == 0 else {}
            fused_bitlinear(self.model.embed.weight if i == 0 else self.x, p["fcg_gain"], p["fcg_packed"],
                            p["fcg_scale"], d, eps, self.y, epilogue="mlgru", outer=p["mixer_norm"], h=self.h[i],
                            lower_bound=p["lb"], gate_out=self.hs if self.released else None, dtype=dt, **src)
            o = p["o"]
            fused_bitlinear(self.y, o["gain"], o["packed"], o["scale"], d, eps, self.x, epilogue="residual",
                            residual=self.x, gate_in=(p["g_norm"], self.hs) if self.released else None, dtype=dt)
            w_in, down = p["w_in"], p["w_down"]
            fused_bitlinear(self.x, w_in["gain2"], w_in["packed"], w_in["scale2"], d, eps, self.p, epilogue="glu",
                            outer=p["mlp_norm"], dtype=dt)
            fused_bitlinear(self.p, down["gain"], down["packed"], down["scale"], l, eps, self.x,
                            epilogue="residual", residual=self.x, dtype=dt)
        if self.head is not None:
            hd = self.head
            fused_bitlinear(self.x, hd["gain"], hd["packed"], hd["scale"], d, eps, self.logits, outer=self.final_norm,
                            dtype=dt)
        else:
            self.logits.copy_(self.model.lm_head(rms_norm(self.x, self.final_norm, eps)))


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


__all__ = ["FusedMatMulFreeDecoder", "GraphedStep", "MatMulFreeDecoder", "TransformerDecoder"]

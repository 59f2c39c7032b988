"""Packed ternary decode of MatMul-free RWKV-4 models on the CPU.

:class:`PackedRWKVDecoder` runs :meth:`matmulfree.models.RWKVLM.step` with every BitLinear
replaced by a :class:`~matmulfree.inference.cpu.PackedGroup` (2-bit weights, int8 activations,
exact integer products: the C kernel, or FBGEMM int8 / fp32 on integers without a compiler). The
element-wise work (LayerNorms, token shift, WKV step, sigmoid, squared ReLU) is the model's own
PyTorch code in the same order, so its logits and states are *equal* to the reference step on
packed weights (tests check ``torch.equal``). Each projection is its own group: the time-mixing
projections read different token-shifted mixes, so none share an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import BitLinear
from ..models.rwkv import RWKVLayerState, _mix
from ..wkv import wkv_step
from .cpu import PackedGroup


def _ln(ln: torch.nn.LayerNorm):
    w, b = ln.weight.detach(), ln.bias.detach()
    return lambda x: F.layer_norm(x, ln.normalized_shape, w, b, ln.eps)


class PackedRWKVDecoder:
    """``step(tokens (B,), state) -> (logits (B, V) fp32, state)`` on packed ternary weights.

    Args:
        model: an :class:`~matmulfree.models.RWKVLM` on the CPU, packed or not, with
            ``quantize_activations`` on.
        backend: ``"auto"``, ``"c"``, ``"int8"`` or ``"float"`` (see :class:`PackedGroup`).
        threads: C threads per product; path: C dispatch path (default the fastest here).
    """

    name = "packed"

    def __init__(self, model, backend: str = "auto", threads: int = 1, path: str | None = None) -> None:
        cfg = model.config
        if cfg.architecture != "rwkv":
            raise ValueError(f"PackedRWKVDecoder needs an RWKV model, got {cfg.architecture!r}")
        if not cfg.quantize_activations:
            raise ValueError("PackedRWKVDecoder computes int8 activations; this model has config field "
                             "'quantize_activations'=false (run it with the reference model instead)")
        if model.embed.weight.device.type != "cpu":
            raise ValueError(f"PackedRWKVDecoder runs on the CPU; the model is on {model.embed.weight.device}")
        self.model = model
        group = lambda m: PackedGroup([m], backend, threads, path)  # noqa: E731
        self.embed = model.embed.weight.detach()
        self.ln_in, self.ln_out = _ln(model.ln_in), _ln(model.norm)
        self.layers = []
        for block in model.layers:
            att, ffn = block.att, block.ffn
            self.layers.append(dict(
                ln1=_ln(block.ln1), ln2=_ln(block.ln2),
                att_mix=[p.detach() for p in (att.time_mix_r, att.time_mix_k, att.time_mix_v)],
                decay=att.decay().detach(), first=att.time_first.detach(),
                att=[group(m) for m in (att.receptance, att.key, att.value, att.output)],
                gate=None if att.gate is None else group(att.gate),
                ffn_mix=[p.detach() for p in (ffn.time_mix_r, ffn.time_mix_k)],
                ffn=[group(m) for m in (ffn.receptance, ffn.key, ffn.value)],
            ))  # fmt: skip
        head = model.lm_head
        self.head = group(head) if isinstance(head, BitLinear) else None
        self.head_w = None if self.head is not None else head.weight.detach()
        first = self.layers[0]["att"][0]
        self.backend, self.fallback_reason = first.backend, first.fallback_reason

    def _groups(self) -> list[PackedGroup]:
        out = [g for p in self.layers for g in (*p["att"], *p["ffn"]) + ((p["gate"],) if p["gate"] else ())]
        return out + ([self.head] if self.head is not None else [])

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, list[RWKVLayerState]]:
        """Tokens ``(B,)`` and state (``None``: empty) -> logits ``(B, V)`` and the next state."""
        state = state if state is not None else self.model.initial_state(token_ids.shape[0])
        x = self.ln_in(F.embedding(token_ids, self.embed))
        new_state = []
        for p, s in zip(self.layers, state):
            xa = p["ln1"](x)
            prev = s.att_x.to(xa.dtype)
            R, K, V, O = p["att"]
            mu_r, mu_k, mu_v = p["att_mix"]
            r = torch.sigmoid(R(_mix(xa, prev, mu_r))[0])
            k = K(_mix(xa, prev, mu_k))[0].float()
            v = V(_mix(xa, prev, mu_v))[0].float()
            wkv, (aa, bb, pp) = wkv_step(p["decay"], p["first"], k, v, s.wkv)
            y = r * wkv.to(r.dtype)
            if p["gate"] is not None:
                y = y * F.silu(p["gate"](xa)[0])
            x = x + O(y)[0]
            xf = p["ln2"](x)
            fr, fk, fv = p["ffn"]
            mr, mk = p["ffn_mix"]
            prev_f = s.ffn_x.to(xf.dtype)
            rr = torch.sigmoid(fr(_mix(xf, prev_f, mr))[0])
            kk = torch.relu(fk(_mix(xf, prev_f, mk))[0]).square()
            x = x + rr * fv(kk)[0]
            new_state.append(RWKVLayerState(xa, aa, bb, pp, xf))
        xn = self.ln_out(x)
        logits = self.head(xn)[0] if self.head is not None else F.linear(xn, self.head_w)
        return logits, new_state

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[RWKVLayerState]]:
        """Prompt ``(B, T)`` through the model's parallel path -> last logits ``(B, V)``, state."""
        out = self.model(input_ids)
        return out.logits[:, -1], out.state

    def weight_bytes(self) -> int:
        """Bytes of projection weights read per step (embedding row, norms and mixes excluded)."""
        n = sum(g.weight_bytes() for g in self._groups())
        if self.head_w is not None:
            n += self.head_w.numel() * self.head_w.element_size()
        return n


__all__ = ["PackedRWKVDecoder"]

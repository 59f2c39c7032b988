"""Transformer++ baseline (Llama-style): RMSNorm, RoPE, SwiGLU, causal SDPA attention, KV cache.

Full precision, same width/depth/vocabulary fields as the MatMul-free model, so the two differ
only in what the paper changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from ..layers import RMSNorm
from .base import LanguageModel, ModelOutput, init_weights
from .registry import register_model


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(T, head_dim / 2)`` for integer ``positions (T,)``."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., :h/2], x[..., h/2:])`` of ``x (B, H, T, hd)``."""
    x1, x2 = x.float().chunk(2, dim=-1)
    y = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return y.to(x.dtype)


class KVCache:
    """Per-layer keys/values ``(B, H, T, hd)`` grown as tokens arrive."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    def length(self, layer: int = 0) -> int:
        """Tokens cached for ``layer``."""
        return 0 if self.k[layer] is None else self.k[layer].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        d, self.n_heads = config.d_model, config.n_heads
        self.head_dim, self.layer_idx = d // config.n_heads, layer_idx
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos, sin, cache: KVCache) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = cache.length(self.layer_idx)
        k, v = cache.append(self.layer_idx, k, v)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # queries at positions past..past+T-1 see keys 0..past+i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Linear(d, 2 * hidden, bias=False)
        self.w_down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.w_in(x).chunk(2, dim=-1)
        return self.w_down(F.silu(g) * u)


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.intermediate_size)

    def forward(self, x, cos, sin, cache):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


@register_model
class TransformerLM(LanguageModel):
    """Token ids ``(B, T)`` -> logits ``(B, T, V)``; the state is a :class:`KVCache`."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.init_std)

    def preserve_function(self, new: set[str]) -> dict[str, str]:
        """Added blocks start as the identity (zero ``attn.o_proj`` and ``mlp.w_down``)."""
        return self._zero_new_blocks(new, ("attn.o_proj.weight", "mlp.w_down.weight"))

    def forward(self, input_ids, labels=None, state=None, loss_reduction: str = "mean") -> ModelOutput:
        cache = state if state is not None else KVCache(len(self.layers))
        T = input_ids.shape[1]
        if cache.length() + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {cache.length() + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        pos = torch.arange(cache.length(), cache.length() + T, device=input_ids.device)
        cos, sin = rope_tables(self.config.d_model // self.config.n_heads, pos, self.config.rope_theta)
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        logits = self.lm_head(self.norm(x))
        return self._finish(logits, labels, cache, loss_reduction)

    def step(self, token_ids: torch.Tensor, state: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        out = self.forward(token_ids[:, None], state=state)
        return out.logits[:, -1], out.state

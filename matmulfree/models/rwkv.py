"""MatMul-free RWKV-4: embedding + LayerNorm, N x (time mixing + channel mixing) blocks, LayerNorm, head.

Every projection is a :class:`~matmulfree.layers.BitLinear` without its inner RMSNorm (the block's
LayerNorm already normalises the token-shifted input). Shapes: ``B`` batch, ``T`` time, ``d`` width,
``l`` channel-mixing width. Equations, state and initialisation: ``docs/rwkv.md``.

* Time mixing: ``x'`` is the previous position's normed input (the state's ``att_x`` at the
  start), ``mix_c = mu_c * x + (1 - mu_c) * x'`` for ``c`` in r, k, v;
  ``r = sigmoid(R mix_r)``, ``k = K mix_k``, ``v = V mix_v``; WKV (:mod:`matmulfree.wkv`) with
  ``w = exp(time_decay)``, ``u = time_first``; output ``O(r * wkv)``, with ``rwkv_gate``
  ``O(r * wkv * silu(G x))``.
* Channel mixing: ``r = sigmoid(R mix_r)``, ``k = relu(K mix_k)^2``, output ``r * V k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import backend
from ..config import RWKVConfig
from ..layers import BitLinear
from ..wkv import WKVState, wkv_chunked, wkv_initial_state, wkv_step
from .base import LanguageModel, ModelOutput
from .registry import register_model


@dataclass
class RWKVLayerState:
    """Recurrent state of one block, all ``(B, d)``: the normed inputs of the last token seen by
    time mixing (``att_x``) and channel mixing (``ffn_x``), and the WKV sums ``aa, bb`` with their
    exponent ``pp`` (fp32, see :mod:`matmulfree.wkv`)."""

    att_x: torch.Tensor
    aa: torch.Tensor
    bb: torch.Tensor
    pp: torch.Tensor
    ffn_x: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, d: int, dtype: torch.dtype, device: torch.device) -> RWKVLayerState:
        aa, bb, pp = wkv_initial_state(batch, d, device)
        x = torch.zeros(batch, d, dtype=dtype, device=device)
        return cls(x, aa, bb, pp, x.clone())

    @property
    def wkv(self) -> WKVState:
        return self.aa, self.bb, self.pp


#: Recurrent state of the whole model: one :class:`RWKVLayerState` per block.
RWKVState = list


def run_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            state: WKVState) -> tuple[torch.Tensor, WKVState]:  # fmt: skip
    """The parallel WKV on the chosen backend (Triton kernel or :func:`~matmulfree.wkv.wkv_chunked`)."""
    if backend.use_triton(k):
        from matmulfree.triton_kernels import wkv

        return wkv(w, u, k, v, state)
    return wkv_chunked(w, u, k, v, state)


def _shift(x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Token shift: ``x (B, T, d)`` -> the previous position's ``x``, ``first (B, d)`` at ``t = 0``."""
    return torch.cat([first.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1)


def _mix(x: torch.Tensor, x_prev: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return x * mu + x_prev * (1 - mu)


class TimeMix(nn.Module):
    """RWKV-4 time mixing of layer ``layer_id`` (parameters named as in RWKV-4 checkpoints)."""

    def __init__(self, config: RWKVConfig, layer_id: int) -> None:
        super().__init__()
        d, eps, std, qa = config.d_model, config.norm_eps, config.init_std, config.quantize_activations
        self.time_decay = nn.Parameter(torch.zeros(d))
        self.time_first = nn.Parameter(torch.zeros(d))
        self.time_mix_k = nn.Parameter(torch.zeros(d))
        self.time_mix_v = nn.Parameter(torch.zeros(d))
        self.time_mix_r = nn.Parameter(torch.zeros(d))
        self.key = BitLinear(d, d, eps, std, qa, norm=False)
        self.value = BitLinear(d, d, eps, std, qa, norm=False)
        self.receptance = BitLinear(d, d, eps, std, qa, norm=False)
        self.output = BitLinear(d, d, eps, std, qa, norm=False)
        self.gate = BitLinear(d, d, eps, std, qa, norm=False) if config.rwkv_gate else None
        rwkv4_time_mix_init(self, layer_id, config.n_layers)

    def decay(self) -> torch.Tensor:
        """``w = exp(time_decay) > 0`` ``(d,)``, fp32: the per-token decay of the WKV sums is ``e^{-w}``."""
        return torch.exp(self.time_decay.float())

    def _projections(self, x: torch.Tensor, x_prev: torch.Tensor):
        r = torch.sigmoid(self.receptance(_mix(x, x_prev, self.time_mix_r)))
        k = self.key(_mix(x, x_prev, self.time_mix_k)).float()
        v = self.value(_mix(x, x_prev, self.time_mix_v)).float()
        return r, k, v

    def _out(self, x: torch.Tensor, r: torch.Tensor, wkv: torch.Tensor) -> torch.Tensor:
        y = r * wkv.to(r.dtype)
        if self.gate is not None:
            y = y * F.silu(self.gate(x))
        return self.output(y)

    def forward(self, x: torch.Tensor, state: RWKVLayerState) -> tuple[torch.Tensor, WKVState]:
        """Parallel path: normed ``x (B, T, d)`` -> ``(out (B, T, d), WKV state after the last token)``."""
        r, k, v = self._projections(x, _shift(x, state.att_x))
        wkv, wkv_state = run_wkv(self.decay(), self.time_first, k, v, state.wkv)
        return self._out(x, r, wkv), wkv_state

    def step(self, x: torch.Tensor, state: RWKVLayerState) -> tuple[torch.Tensor, WKVState]:
        """Recurrent path: normed ``x (B, d)`` -> ``(out (B, d), next WKV state)``."""
        r, k, v = self._projections(x, state.att_x.to(x.dtype))
        wkv, wkv_state = wkv_step(self.decay(), self.time_first, k, v, state.wkv)
        return self._out(x, r, wkv), wkv_state


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing: ``r = sigmoid(R mix_r)``, ``out = r * V(relu(K mix_k)^2)``."""

    def __init__(self, config: RWKVConfig, layer_id: int) -> None:
        super().__init__()
        d, l_ = config.d_model, config.intermediate_size
        eps, std, qa = config.norm_eps, config.init_std, config.quantize_activations
        self.time_mix_k = nn.Parameter(torch.zeros(d))
        self.time_mix_r = nn.Parameter(torch.zeros(d))
        self.key = BitLinear(d, l_, eps, std, qa, norm=False)
        self.receptance = BitLinear(d, d, eps, std, qa, norm=False)
        self.value = BitLinear(l_, d, eps, std, qa, norm=False)
        rwkv4_channel_mix_init(self, layer_id, config.n_layers)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
        """``x, x_prev`` normed, ``(..., d)`` -> ``(..., d)`` (same for the parallel and step paths)."""
        r = torch.sigmoid(self.receptance(_mix(x, x_prev, self.time_mix_r)))
        k = torch.relu(self.key(_mix(x, x_prev, self.time_mix_k))).square()
        return r * self.value(k)


def _ratios(layer_id: int, n_layers: int) -> tuple[float, float]:
    """RWKV-4's depth ratios: ``layer_id / (L - 1)`` (0 -> 1; 0 for a single layer) and
    ``1 - layer_id / L`` (1 -> almost 0)."""
    r01 = layer_id / (n_layers - 1) if n_layers > 1 else 0.0
    return r01, 1.0 - layer_id / n_layers


@torch.no_grad()
def rwkv4_time_mix_init(m: TimeMix, layer_id: int, n_layers: int) -> None:
    """RWKV-4's layer-dependent initialisation of the time-mixing parameters (channel ``h`` of ``d``):

    * ``time_decay[h] = -5 + 8 (h / (d-1))^(0.7 + 1.3 r01)``: decay rates spread from slow to fast,
      the spread skewed towards slow channels in deeper layers;
    * ``time_first[h] = log(0.3) + 0.5 ((h+1) mod 3 - 1)``: a bonus for the current token, zig-zag over channels;
    * ``time_mix_k = (h/d)^r10``, ``time_mix_v = (h/d)^r10 + 0.3 r01``, ``time_mix_r = (h/d)^(0.5 r10)``:
      early layers mix in much of the previous token, deep layers mostly keep the current one.

    ``r01 = layer_id / (L-1)``, ``r10 = 1 - layer_id / L``.
    """
    d = m.time_decay.numel()
    r01, r10 = _ratios(layer_id, n_layers)
    h = torch.arange(d, dtype=torch.float32)
    m.time_decay.copy_(-5 + 8 * (h / max(d - 1, 1)) ** (0.7 + 1.3 * r01))
    zigzag = ((h + 1) % 3 - 1) * 0.5
    m.time_first.copy_(math.log(0.3) + zigzag)
    frac = h / d
    m.time_mix_k.copy_(frac**r10)
    m.time_mix_v.copy_(frac**r10 + 0.3 * r01)
    m.time_mix_r.copy_(frac ** (0.5 * r10))


@torch.no_grad()
def rwkv4_channel_mix_init(m: ChannelMix, layer_id: int, n_layers: int) -> None:
    """RWKV-4's channel-mixing mixes: ``time_mix_k = time_mix_r = (h/d)^(1 - layer_id / L)``."""
    d = m.time_mix_k.numel()
    _, r10 = _ratios(layer_id, n_layers)
    frac = torch.arange(d, dtype=torch.float32) / d
    m.time_mix_k.copy_(frac**r10)
    m.time_mix_r.copy_(frac**r10)


class RWKVBlock(nn.Module):
    """``x = x + TimeMix(LN1(x)); x = x + ChannelMix(LN2(x))``."""

    def __init__(self, config: RWKVConfig, layer_id: int) -> None:
        super().__init__()
        d, eps = config.d_model, config.norm_eps
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x: torch.Tensor, state: RWKVLayerState) -> tuple[torch.Tensor, RWKVLayerState]:
        xa = self.ln1(x)
        o, (aa, bb, pp) = self.att(xa, state)
        x = x + o
        xf = self.ln2(x)
        x = x + self.ffn(xf, _shift(xf, state.ffn_x))
        return x, RWKVLayerState(xa[:, -1], aa, bb, pp, xf[:, -1])

    def step(self, x: torch.Tensor, state: RWKVLayerState) -> tuple[torch.Tensor, RWKVLayerState]:
        xa = self.ln1(x)
        o, (aa, bb, pp) = self.att.step(xa, state)
        x = x + o
        xf = self.ln2(x)
        x = x + self.ffn(xf, state.ffn_x.to(xf.dtype))
        return x, RWKVLayerState(xa, aa, bb, pp, xf)


@register_model
class RWKVLM(LanguageModel):
    """Token ids ``(B, T)`` -> logits ``(B, T, V)``; every projection a BitLinear, O(1) state per layer."""

    config_class = RWKVConfig

    def __init__(self, config: RWKVConfig) -> None:
        super().__init__(config)
        d, eps, std = config.d_model, config.norm_eps, config.init_std
        self.embed = nn.Embedding(config.vocab_size, d)
        self.ln_in = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(RWKVBlock(config, i) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(d, eps=eps)
        if config.ternary_head:
            self.lm_head = BitLinear(d, config.vocab_size, eps, std, config.quantize_activations, norm=False)
        else:
            self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=std)
        nn.init.normal_(self.embed.weight, std=std)

    def initial_state(self, batch: int) -> RWKVState:
        """The state before the first token: zero shifted inputs, empty WKV sums."""
        p = self.embed.weight
        return [RWKVLayerState.zeros(batch, self.config.d_model, p.dtype, p.device) for _ in self.layers]

    def forward(self, input_ids, labels=None, state=None, loss_reduction: str = "mean") -> ModelOutput:
        """Parallel path. ``state`` (a list of :class:`RWKVLayerState`) continues an earlier call."""
        state = state if state is not None else self.initial_state(input_ids.shape[0])
        x = self.ln_in(self.embed(input_ids))
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer(x, s)
            new_state.append(s)
        logits = self.lm_head(self.norm(x))
        return self._finish(logits, labels, new_state, loss_reduction)

    def step(self, token_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, RWKVState]:
        """Recurrent path: tokens ``(B,)`` -> logits ``(B, V)`` and the next state."""
        state = state if state is not None else self.initial_state(token_ids.shape[0])
        x = self.ln_in(self.embed(token_ids))
        new_state = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new_state.append(s)
        return self.lm_head(self.norm(x)), new_state

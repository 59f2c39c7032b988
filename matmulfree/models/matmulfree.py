"""MatMul-free language model: embedding, N x (MLGRU + GLU) blocks, final RMSNorm, ternary head."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import MatMulFreeConfig
from ..layers import GLU, MLGRU, BitLinear, RMSNorm
from .base import LanguageModel, ModelOutput, init_weights
from .registry import register_model

#: Recurrent state: one fp32 ``h (B, d)`` per layer (``None`` before the first token).
MatMulFreeState = list


class MatMulFreeBlock(nn.Module):
    """``x = x + MLGRU(RMSNorm(x)); x = x + GLU(RMSNorm(x))``."""

    def __init__(self, config: MatMulFreeConfig) -> None:
        super().__init__()
        d, eps, std = config.d_model, config.norm_eps, config.init_std
        lin_eps, rounding = config.linear_eps, config.act_rounding
        self.mixer_norm = RMSNorm(d, eps)
        qa = config.quantize_activations
        self.mixer = MLGRU(d, config.gate, eps, std, qa, lin_eps, rounding)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = GLU(d, config.intermediate_size, lin_eps, std, qa, rounding)

    def forward(self, x, h0=None, lower_bound=None):
        o, h = self.mixer(self.mixer_norm(x), h0, lower_bound)
        x = x + o
        return x + self.mlp(self.mlp_norm(x)), h

    def step(self, x, h, lower_bound=None):
        o, h = self.mixer.step(self.mixer_norm(x), h, lower_bound)
        x = x + o
        return x + self.mlp(self.mlp_norm(x)), h


@register_model
class MatMulFreeLM(LanguageModel):
    """Token ids ``(B, T)`` -> logits ``(B, T, V)``. Every projection is a BitLinear; the recurrence
    is element-wise, so generation keeps O(1) state per layer."""

    config_class = MatMulFreeConfig
    warm_start_fields = {"forget_lower_bound": "lower_bounds"}

    def __init__(self, config: MatMulFreeConfig) -> None:
        super().__init__(config)
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(MatMulFreeBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(d, config.norm_eps)
        if config.ternary_head:
            self.lm_head = BitLinear(d, config.vocab_size, config.linear_eps, config.init_std,
                                     config.quantize_activations, rounding=config.act_rounding)
        else:
            self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        # Forget-gate lower bounds (released form): raw logits per layer and channel.
        self.lower_bounds = nn.Parameter(torch.zeros(config.n_layers, d)) if config.forget_lower_bound else None
        init_weights(self, config.init_std)

    def forget_lower_bounds(self) -> list[torch.Tensor | None]:
        """Per-layer lower bound ``lb_l`` (cumulative softmax over layers, 0 for layer 0)."""
        if self.lower_bounds is None:
            return [None] * self.config.n_layers
        p = self.lower_bounds.float().softmax(dim=0).cumsum(dim=0)
        lb = p - p[0]
        return list(lb.unbind(0))

    #: Raw lower-bound logit of layers 1.. for a warm start that adds the bound: the bounds start at
    #: about ``l * exp(-16) ~ l * 1.1e-7`` (below fp32 rounding of the forget gate) and learn from there.
    WARM_START_BOUND_LOGIT = -16.0

    def preserve_function(self, new: set[str]) -> dict[str, str]:
        """Added blocks start as the identity (zero ``mixer.o_proj`` and ``mlp.w_down``); added forget
        lower bounds start at ~0 (layer 0 holds the softmax mass)."""
        notes = self._zero_new_blocks(new, ("mixer.o_proj.weight", "mlp.w_down.weight"))
        if "lower_bounds" in new and self.lower_bounds is not None:
            with torch.no_grad():
                self.lower_bounds.fill_(self.WARM_START_BOUND_LOGIT)
                self.lower_bounds[0] = 0.0
            start = math.exp(self.WARM_START_BOUND_LOGIT)
            notes["lower_bounds"] = f"bounds start at ~{start:.0e} x layer (forget gate unchanged)"
        return notes

    def forward(self, input_ids, labels=None, state=None, loss_reduction: str = "mean") -> ModelOutput:
        """Parallel path. ``state`` (list of ``h`` per layer) continues an earlier call."""
        x = self.embed(input_ids)
        hs = state if state is not None else [None] * len(self.layers)
        new_state = []
        for layer, h0, lb in zip(self.layers, hs, self.forget_lower_bounds()):
            x, h = layer(x, h0, lb)
            new_state.append(h)
        logits = self.lm_head(self.norm(x))
        return self._finish(logits, labels, new_state, loss_reduction)

    def step(self, token_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, MatMulFreeState]:
        """Recurrent path: tokens ``(B,)`` -> logits ``(B, V)`` and the next state."""
        x = self.embed(token_ids)
        hs = state if state is not None else [None] * len(self.layers)
        new_state = []
        for layer, h, lb in zip(self.layers, hs, self.forget_lower_bounds()):
            x, h = layer.step(x, h, lb)
            new_state.append(h)
        return self.lm_head(self.norm(x)), new_state

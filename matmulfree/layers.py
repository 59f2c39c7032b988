"""Building blocks: RMSNorm, BitLinear, the MLGRU token mixer and the ternary GLU channel mixer.

Every layer has a parallel (whole-sequence) path for training and prefill and a recurrent
single-step path with explicit state for generation; tests check that they agree.
Shapes: ``B`` batch, ``T`` time, ``d`` width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backend
from .cpu_train import bitlinear_train, scan_train, use_cpu_train_path
from .functional import linear_recurrence_scan, rms_norm
from .quant import (
    activation_quantize,
    activation_quantize_ste,
    pack_ternary,
    ternary_quantize,
    ternary_quantize_ste,
    unpack_ternary,
)


def _cpu_train(x: torch.Tensor) -> bool:
    """Take the fused CPU training path (:mod:`matmulfree.cpu_train`) unless the reference is forced."""
    return backend.kernel_backend() != "torch" and use_cpu_train_path(x)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable gain ``(d,)``."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class BitLinear(nn.Module):
    """Ternary linear layer ``in_features -> out_features`` with the RMSNorm inside (no bias).

    Training mode keeps latent fp32 weights ``(out, in)`` and fake-quantizes weights (absmean,
    ternary) and activations (per-token absmax, int8) with straight-through gradients.
    After :meth:`pack` the layer holds only the packed 2-bit weights ``(out, ceil(in/4))`` uint8 and
    the scale ``s_w`` and computes from them. Both paths compute
    ``y = (x_q @ W_q^T) / (s_x * s_w)`` with integer-valued operands, so they agree exactly.

    ``quantize_activations=False`` keeps the weights ternary but feeds the (normed) activations
    unrounded: ``y = (x_n @ W_q^T) / s_w`` (ablations; the exact check against the ``rwkv``
    package). ``norm=False`` drops the inner RMSNorm (``x_n = x``; RWKV, whose block LayerNorm
    already normalises every projection's input, and whose reference implementation has none).
    ``rounding`` is the activation tie rule; the Triton kernels implement ``"half_even"`` only, so a
    ``"half_away"`` layer always takes the PyTorch path.
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6, init_std: float = 0.02,
                 quantize_activations: bool = True, norm: bool = True,
                 rounding: str = "half_even") -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features, self.eps = in_features, out_features, eps
        self.quantize_activations = quantize_activations
        self.rounding = rounding  # activation tie rule (matmulfree.quant.ROUNDING_MODES)
        self.norm: RMSNorm | None = RMSNorm(in_features, eps) if norm else None
        self.weight: nn.Parameter | None = nn.Parameter(torch.randn(out_features, in_features) * init_std)
        self.packed = False

    # -- inference storage -------------------------------------------------------------
    @torch.no_grad()
    def pack(self) -> None:
        """Replace the latent weights by packed ternary weights and their scale (irreversible)."""
        if self.packed:
            return
        w_q, s_w = ternary_quantize(self.weight)
        self.weight = None
        self.register_buffer("weight_packed", pack_ternary(w_q))
        self.register_buffer("weight_scale", s_w.reshape(()).clone())
        self.packed = True

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_q int8 (out, in), s_w fp32 scalar)`` in either mode."""
        if self.packed:
            return unpack_ternary(self.weight_packed, self.in_features), self.weight_scale
        return ternary_quantize(self.weight)

    def _fused_cpu_train(self) -> bool:
        """Whether :func:`~matmulfree.cpu_train.bitlinear_train` computes this layer: a latent weight
        being trained, the inner RMSNorm, int8 activations rounded half to even."""
        return (not self.packed and self.weight.requires_grad and self.norm is not None
                and self.quantize_activations and self.rounding == "half_even")

    # -- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in) -> (..., out)``."""
        if self.rounding == "half_even" and backend.use_triton(x):
            from matmulfree.triton_kernels import bitlinear_dispatch

            return bitlinear_dispatch(self, x)
        if self._fused_cpu_train() and _cpu_train(x):
            return bitlinear_train(x, self.norm.weight, self.weight, self.norm.eps)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Plain PyTorch path (the reference every kernel is compared with)."""
        x_n = self.norm(x) if self.norm is not None else x
        if not self.quantize_activations:
            if self.packed:
                w_q = unpack_ternary(self.weight_packed, self.in_features, torch.float32)
                return (F.linear(x_n.float(), w_q) / self.weight_scale).to(x.dtype)
            w_int, s_w = ternary_quantize_ste(self.weight)
            return F.linear(x_n, w_int.to(x_n.dtype)) / s_w.to(x_n.dtype)
        if self.packed:
            x_q, s_x = activation_quantize(x_n, rounding=self.rounding)
            w_q = unpack_ternary(self.weight_packed, self.in_features, torch.float32)
            y = F.linear(x_q.float(), w_q) / (s_x * self.weight_scale)
            return y.to(x.dtype)
        x_int, s_x = activation_quantize_ste(x_n, rounding=self.rounding)
        w_int, s_w = ternary_quantize_ste(self.weight)
        y = F.linear(x_int, w_int.to(x_int.dtype)) / (s_x * s_w).to(x_int.dtype)
        return y

    def extra_repr(self) -> str:
        tie = "" if self.rounding == "half_even" else f", rounding={self.rounding}"
        return (f"in={self.in_features}, out={self.out_features}, packed={self.packed}, "
                f"quantize_activations={self.quantize_activations}, norm={self.norm is not None}{tie}")


class MLGRU(nn.Module):
    """MatMul-free linear gated recurrent unit (token mixer), four BitLinear ``d -> d`` projections.

    ``f = sigmoid(x W_f)`` (optionally ``lb + (1 - lb) f``), ``c = SiLU(x W_c)``,
    ``h_t = f_t h_{t-1} + (1 - f_t) c_t``, ``g = x W_g``, output gate ``g * sigmoid(h)`` ("paper")
    or ``RMSNorm(g) * SiLU(h)`` ("released"), then ``o = o' W_o``. State: ``h (B, d)`` in fp32.
    ``eps``: the gate norm's epsilon; ``lin_eps`` (default ``eps``) and ``rounding``: the BitLinears'.
    """

    def __init__(self, d: int, gate: str = "paper", eps: float = 1e-6, init_std: float = 0.02,
                 quantize_activations: bool = True, lin_eps: float | None = None,
                 rounding: str = "half_even") -> None:  # fmt: skip
        super().__init__()
        self.d, self.gate = d, gate
        qa, le = quantize_activations, (eps if lin_eps is None else lin_eps)
        self.f_proj = BitLinear(d, d, le, init_std, qa, rounding=rounding)
        self.c_proj = BitLinear(d, d, le, init_std, qa, rounding=rounding)
        self.g_proj = BitLinear(d, d, le, init_std, qa, rounding=rounding)
        self.o_proj = BitLinear(d, d, le, init_std, qa, rounding=rounding)
        self.g_norm = RMSNorm(d, eps) if gate == "released" else None

    def gates(
        self, x: torch.Tensor, lower_bound: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forget gate ``f``, recurrence input ``(1 - f) c`` and output gate ``g`` (all fp32)."""
        f = torch.sigmoid(self.f_proj(x).float())
        if lower_bound is not None:
            f = lower_bound + (1 - lower_bound) * f
        c = F.silu(self.c_proj(x).float())
        return f, (1 - f) * c, self.g_proj(x).float()

    def output(self, g: torch.Tensor, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.gate == "released":
            o = self.g_norm(g) * F.silu(h)
        else:
            o = g * torch.sigmoid(h)
        return self.o_proj(o.to(dtype))

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None, lower_bound: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parallel path: ``x (B, T, d)`` -> ``(o (B, T, d), h_T (B, d))``."""
        f, b, g = self.gates(x, lower_bound)
        if backend.use_triton(x):
            from matmulfree.triton_kernels import mlgru_scan

            h = mlgru_scan(f, b, h0)
        elif _cpu_train(f):
            h = scan_train(f, b, h0)
        else:
            h = linear_recurrence_scan(f, b, h0)
        return self.output(g, h, x.dtype), h[:, -1]

    def step(
        self, x: torch.Tensor, h: torch.Tensor | None, lower_bound: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent path: one token ``x (B, d)`` and state ``h (B, d)`` -> ``(o (B, d), h')``."""
        f, b, g = self.gates(x, lower_bound)
        h = b if h is None else f * h + b
        return self.output(g, h, x.dtype), h


class GLU(nn.Module):
    """Ternary GLU channel mixer: ``[g, u] = x W_in`` (one fused ``d -> 2l`` BitLinear),
    ``y = (SiLU(g) * u) W_down``. Stateless, so the step path is the parallel path. ``W_in`` is one
    matrix with one absmean scale (the released hgrn_bit ``gate_proj`` is stored and quantised the
    same way)."""

    def __init__(self, d: int, hidden: int, eps: float = 1e-6, init_std: float = 0.02,
                 quantize_activations: bool = True, rounding: str = "half_even") -> None:  # fmt: skip
        super().__init__()
        self.hidden = hidden
        self.w_in = BitLinear(d, 2 * hidden, eps, init_std, quantize_activations, rounding=rounding)
        self.w_down = BitLinear(hidden, d, eps, init_std, quantize_activations, rounding=rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.w_in(x).chunk(2, dim=-1)
        return self.w_down(F.silu(g) * u)

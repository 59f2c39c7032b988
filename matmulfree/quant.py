"""Ternary weights, int8 activations and the 2-bit storage code: the single source of truth.

Every other part of the project (layers, Triton kernels, the FPGA reference and exports) imports
these definitions. The math (``docs/design.md``, "BitLinear" and "Ternary storage"):

* weights, per tensor (absmean):  ``s_w = 1 / max(mean(|W|), eps)``,
  ``W_q = clamp(round(W * s_w), -1, 1)``, so ``W ~= W_q / s_w``;
* activations, per token (absmax): ``s_x = 127 / max(max(|x|), eps)``,
  ``x_q = clamp(round(x * s_x), -128, 127)``, so ``x ~= x_q / s_x``;
* a BitLinear output is ``y = (x_q @ W_q^T) / (s_x * s_w)``.

``round`` is round-half-to-even (``torch.round``) by default; every implementation must use the same
rule. Activations may instead round halfway cases away from zero (``"half_away"``, what the released
MMfreeLM checkpoints computed on the GPU with libdevice ``roundf``), chosen per model by the config
field ``act_rounding`` (:data:`ROUNDING_MODES`).

Storage code (2-bit two's complement): ``0 -> 0b00``, ``+1 -> 0b01``, ``-1 -> 0b11``
(``0b10`` never occurs). Four weights per byte, weight ``j`` of a row in bits
``2*(j % 4) .. 2*(j % 4)+1`` of byte ``j // 4``; rows are padded with zeros to whole bytes.
"""

from __future__ import annotations

import torch

#: Smallest denominator used by the scales (guards all-zero tensors and tokens).
QUANT_EPS = 1e-5
#: int8 activation range.
ACT_QMIN, ACT_QMAX = -128, 127
#: Absmax maps to this value (symmetric: -127..127 is used, -128 only by clamping).
ACT_ABSMAX = 127.0
#: Ternary weights per packed byte.
WEIGHTS_PER_BYTE = 4
#: Rounding rules of the activation quantization: ties to even (``torch.round``) or away from zero.
ROUNDING_MODES = ("half_even", "half_away")
#: 2-bit codes of the ternary values.
TERNARY_CODE = {0: 0b00, 1: 0b01, -1: 0b11}


def weight_scale(w: torch.Tensor, eps: float = QUANT_EPS) -> torch.Tensor:
    """Per-tensor absmean scale ``s_w = 1 / max(mean|W|, eps)`` (fp32 scalar tensor)."""
    return 1.0 / w.detach().float().abs().mean().clamp(min=eps)


def ternary_quantize(w: torch.Tensor, eps: float = QUANT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization.

    Args:
        w: latent weights, any shape.
    Returns:
        ``(w_q, s_w)``: ``w_q`` int8 tensor of ``w``'s shape with values in {-1, 0, 1};
        ``s_w`` fp32 scalar tensor with ``w ~= w_q / s_w``.
    """
    s_w = weight_scale(w, eps)
    w_q = torch.clamp(torch.round(w.detach().float() * s_w), -1, 1).to(torch.int8)
    return w_q, s_w


def activation_scale(x: torch.Tensor, eps: float = QUANT_EPS) -> torch.Tensor:
    """Per-token absmax scale ``s_x = 127 / max(max|x|, eps)`` over the last dim, shape ``(..., 1)``."""
    return ACT_ABSMAX / x.detach().float().abs().amax(dim=-1, keepdim=True).clamp(min=eps)


def round_activation(t: torch.Tensor, rounding: str = "half_even") -> torch.Tensor:
    """Nearest integer of ``t`` (float) with the tie rule ``rounding`` (one of :data:`ROUNDING_MODES`)."""
    if rounding == "half_even":
        return torch.round(t)
    if rounding == "half_away":
        a = t.abs()
        r = torch.floor(a)
        r = torch.where(a - r >= 0.5, r + 1, r)  # a - floor(a) is exact in binary floating point
        return torch.copysign(r, t)
    raise ValueError(f"unknown activation rounding {rounding!r}; expected one of {ROUNDING_MODES}")


def activation_quantize(
    x: torch.Tensor, eps: float = QUANT_EPS, rounding: str = "half_even"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization.

    Args:
        x: activations ``(..., d)``.
        rounding: tie rule, one of :data:`ROUNDING_MODES`.
    Returns:
        ``(x_q, s_x)``: ``x_q`` int8 ``(..., d)``, ``s_x`` fp32 ``(..., 1)`` with ``x ~= x_q / s_x``.
    """
    s_x = activation_scale(x, eps)
    x_q = torch.clamp(round_activation(x.detach().float() * s_x, rounding), ACT_QMIN, ACT_QMAX).to(torch.int8)
    return x_q, s_x


def ternary_quantize_ste(w: torch.Tensor, eps: float = QUANT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through ternary quantization for training.

    Returns ``(w_int, s_w)`` where ``w_int`` holds the integer values {-1, 0, 1} in ``w``'s float dtype
    and its gradient is that of ``w * s_w`` (``s_w`` detached), i.e. quantization acts as the
    identity in the backward pass once the result is divided by ``s_w``.
    """
    s_w = weight_scale(w, eps)
    scaled = w * s_w.to(w.dtype)
    w_int = scaled + (torch.clamp(torch.round(scaled.detach()), -1, 1) - scaled.detach())
    return w_int, s_w


def activation_quantize_ste(
    x: torch.Tensor, eps: float = QUANT_EPS, rounding: str = "half_even"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through per-token int8 quantization: ``(x_int, s_x)`` with ``x_int`` integer-valued
    floats in [-128, 127] whose gradient is that of ``x * s_x`` (``s_x`` detached); ``rounding`` as in
    :func:`activation_quantize`."""
    s_x = activation_scale(x, eps)
    scaled = x * s_x.to(x.dtype)
    q = torch.clamp(round_activation(scaled.detach(), rounding), ACT_QMIN, ACT_QMAX)
    x_int = scaled + (q - scaled.detach())
    return x_int, s_x


def fake_quant_weight(w: torch.Tensor, eps: float = QUANT_EPS) -> torch.Tensor:
    """``W_q / s_w`` with a straight-through gradient (``w + (q(w) - w).detach()``)."""
    w_int, s_w = ternary_quantize_ste(w, eps)
    return w_int / s_w.to(w.dtype)


def fake_quant_activation(x: torch.Tensor, eps: float = QUANT_EPS) -> torch.Tensor:
    """``x_q / s_x`` with a straight-through gradient."""
    x_int, s_x = activation_quantize_ste(x, eps)
    return x_int / s_x.to(x.dtype)


def packed_row_bytes(cols: int) -> int:
    """Bytes per packed row of ``cols`` ternary weights (rows padded to whole bytes)."""
    return (cols + WEIGHTS_PER_BYTE - 1) // WEIGHTS_PER_BYTE


def pack_ternary(w_q: torch.Tensor) -> torch.Tensor:
    """Pack a 2-D ternary tensor ``(rows, cols)`` into uint8 ``(rows, ceil(cols / 4))``.

    Raises ``ValueError`` if ``w_q`` is not 2-D or holds values outside {-1, 0, 1}.
    """
    if w_q.dim() != 2:
        raise ValueError(f"pack_ternary expects a 2-D tensor, got shape {tuple(w_q.shape)}")
    w = w_q.to(torch.int16)
    if w.numel() and (w.min() < -1 or w.max() > 1):
        raise ValueError(
            f"pack_ternary: values must be in {{-1, 0, 1}}, got range [{int(w.min())}, {int(w.max())}]"
        )
    rows, cols = w.shape
    nbytes = packed_row_bytes(cols)
    pad = nbytes * WEIGHTS_PER_BYTE - cols
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    codes = (w & 0b11).to(torch.uint8).view(rows, nbytes, WEIGHTS_PER_BYTE)
    shifts = torch.arange(WEIGHTS_PER_BYTE, device=w.device, dtype=torch.uint8) * 2
    return (codes << shifts).sum(dim=-1, dtype=torch.int32).to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, cols: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(rows, nbytes)`` -> ``(rows, cols)`` in ``dtype``.

    Raises ``ValueError`` on a shape that cannot hold ``cols`` weights or on the unused code ``0b10``.
    """
    if packed.dim() != 2 or packed.dtype != torch.uint8:
        raise ValueError(
            f"unpack_ternary expects a 2-D uint8 tensor, got {tuple(packed.shape)} {packed.dtype}"
        )
    if packed.shape[1] != packed_row_bytes(cols):
        raise ValueError(
            f"unpack_ternary: {packed.shape[1]} bytes per row cannot hold exactly {cols} weights "
            f"(expected {packed_row_bytes(cols)})"
        )
    shifts = torch.arange(WEIGHTS_PER_BYTE, device=packed.device, dtype=torch.uint8) * 2
    codes = (packed.unsqueeze(-1) >> shifts) & 0b11  # (rows, nbytes, 4)
    if bool((codes == 0b10).any()):
        raise ValueError("unpack_ternary: found the unused 2-bit code 0b10 (corrupt packed weights)")
    values = codes.to(torch.int8) - ((codes >> 1).to(torch.int8) << 2)  # sign-extend 2-bit
    return values.reshape(packed.shape[0], -1)[:, :cols].to(dtype)

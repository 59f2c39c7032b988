"""Memory per GPU of a recipe on N GPUs: ``matmulfree plan RECIPE --gpus N --gpu-memory 80GB``.

The estimate counts, per GPU (bytes; ``P`` parameters, ``N`` GPUs):

* ``ddp``: fp32 weights ``4P``, gradients ``4P``, AdamW's two fp32 moments ``8P``, all replicated;
* ``fsdp``: the same sharded (``/ N``), plus two gathered blocks in the compute dtype (the one
  running and the one prefetched);
* ``deepspeed`` ZeRO-2 with bf16: a replicated bf16 model ``2P``, bf16 gradients ``2P / N``, and
  fp32 masters + moments ``12P / N`` (without bf16: ``4P``, ``4P / N``, ``8P / N``);
* activations of one micro-batch: the tensors autograd saves for backward, measured by running the
  model's forward and loss on the ``meta`` device (no memory, no compute) at two short lengths and
  extrapolating linearly to ``seq_len`` (the MatMul-free model is linear in length; the Transformer++
  uses fused attention, also linear in memory). The PyTorch reference path is traced; the fused
  Triton kernels save less, so this is an upper bound for them.

The traced activations are those of the plain PyTorch path (every quantisation intermediate
saved); they dominate at 2048 tokens, so the plan also prints the largest micro-batch that fits.

A fixed ``overhead`` (CUDA context, allocator fragmentation, communication buffers) is added, and
a row is flagged when the total exceeds the GPU's memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .models import build_model
from .recipe import Recipe

#: Memory not accounted for by the terms above (CUDA context, fragmentation, NCCL buffers), bytes.
OVERHEAD_BYTES = 3 * 2**30
#: Sequence length the activation trace runs at before scaling to the recipe's ``seq_len``.
TRACE_TOKENS = 64
GIB = 2**30


def parse_memory(text: str) -> int:
    """``"80GB"`` / ``"80GiB"`` / ``"40G"`` -> bytes (GB read as GiB, as GPU vendors mean it)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(G|GB|GiB|M|MB|MiB)?\s*", text)
    if not m:
        raise ValueError(f"--gpu-memory {text!r}: expected a size such as 80GB or 40GiB")
    scale = GIB if (m.group(2) or "G").startswith("G") else 2**20
    return int(float(m.group(1)) * scale)


def _saved_bytes(model, batch: int, tokens: int) -> int:
    """Bytes autograd saves for the forward and loss of ``(batch, tokens)`` token ids on the meta device."""
    seen: dict[int, torch.Tensor] = {}  # holding the tensors keeps their ids unique

    def pack(t: torch.Tensor):
        seen[id(t)] = t
        return t

    ids = torch.zeros(batch, tokens + 1, dtype=torch.long, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids[:, :-1]).logits
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))
    return sum(t.numel() * t.element_size() for t in seen.values())


def activation_bytes(recipe: Recipe, vocab_size: int) -> tuple[int, int, int]:
    """``(fixed, per_sequence, parameters)``: bytes autograd saves for a micro-batch of ``b`` sequences of
    ``seq_len`` tokens are ``fixed + b · per_sequence``. Traced on the meta device at two short
    lengths and extrapolated linearly (``fixed`` holds what does not grow with tokens, e.g. the
    quantised weight copies)."""
    config = recipe.model_config(vocab_size)
    with torch.device("meta"):
        model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    if recipe.train.mixed_precision in ("bf16", "fp16"):
        model.to(torch.bfloat16 if recipe.train.mixed_precision == "bf16" else torch.float16)
    t1, t2 = TRACE_TOKENS // 2, TRACE_TOKENS
    a1, a2 = _saved_bytes(model, 1, t1), _saved_bytes(model, 1, t2)
    per_token = (a2 - a1) / (t2 - t1)
    fixed = max(0, int(a1 - per_token * t1))
    return fixed, int(per_token * recipe.data.seq_len), n_params


@dataclass
class Plan:
    """Memory per GPU, bytes, for one recipe, strategy and GPU count."""

    recipe: str
    strategy: str
    gpus: int
    parameters: int  # count
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    activations_per_sequence: int
    overhead_bytes: int
    gpu_memory: int
    global_batch: int
    tokens_per_step: int
    batch_size: int  # sequences per micro-batch per GPU

    @property
    def max_batch_size(self) -> int:
        """The largest micro-batch whose activations still fit beside the static memory (0: none)."""
        fixed = self.activations_bytes - self.batch_size * self.activations_per_sequence
        static = self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.overhead_bytes + fixed
        return max(0, int((self.gpu_memory - static) // max(1, self.activations_per_sequence)))

    @property
    def total_bytes(self) -> int:
        return (self.params_bytes + self.grads_bytes + self.optimizer_bytes + self.activations_bytes
                + self.overhead_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.gpu_memory

    def lines(self) -> list[str]:
        g = lambda n: f"{n / GIB:8.2f} GiB"  # noqa: E731
        out = [
            f"{self.recipe}: {self.parameters / 1e6:,.0f} M parameters, strategy {self.strategy}, {self.gpus} GPU(s)",
            f"  global batch {self.global_batch} sequences = {self.tokens_per_step:,} tokens per step",
            f"  parameters        {g(self.params_bytes)}",
            f"  gradients         {g(self.grads_bytes)}",
            f"  optimizer state   {g(self.optimizer_bytes)}",
            f"  activations       {g(self.activations_bytes)}  (one micro-batch)",
            f"  overhead          {g(self.overhead_bytes)}",
            f"  total per GPU     {g(self.total_bytes)}  of {self.gpu_memory / GIB:.0f} GiB",
            f"  largest micro-batch that fits: {self.max_batch_size} sequences (recipe: {self.batch_size})",
        ]
        if not self.fits:
            advice = (f"set train.batch_size <= {self.max_batch_size} and raise train.grad_accum to keep the global "
                      "batch" if self.max_batch_size else "even one sequence per micro-batch does not fit")
            if self.strategy != "fsdp":
                advice += "; distributed.strategy fsdp shards weights, gradients and optimizer state"
            out.append(f"  WARNING: does not fit: {self.total_bytes / GIB:.1f} GiB > {self.gpu_memory / GIB:.0f} GiB; "
                       f"{advice}; or use more GPUs / GPUs with more memory")
        return out


def plan(recipe: Recipe, gpus: int, gpu_memory: int, strategy: str | None = None, vocab_size: int = 32000) -> Plan:
    """Per-GPU memory of ``recipe`` on ``gpus`` GPUs (``strategy`` defaults to the recipe's)."""
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: must be at least 1")
    strategy = strategy or recipe.distributed.strategy
    fixed, per_sequence, P = activation_bytes(recipe, vocab_size)
    t = recipe.train
    if strategy == "fsdp":
        config = recipe.model_config(vocab_size)
        with torch.device("meta"):
            model = build_model(config)
        block = max(sum(p.numel() for p in b.parameters()) for b in model.layers)
        half = 2 if t.mixed_precision in ("bf16", "fp16") else 4
        params, grads, optim = 4 * P // gpus + 2 * half * block, 4 * P // gpus, 8 * P // gpus
    elif strategy == "deepspeed":
        # ZeRO-2: the model copy is replicated (bf16 with fp32 masters in the optimizer partition, or fp32),
        # gradients and optimizer state are partitioned (stage 1: gradients replicated).
        low = t.mixed_precision in ("bf16", "fp16")
        params = 2 * P if low else 4 * P
        grads = (2 if low else 4) * P // (gpus if recipe.distributed.zero_stage >= 2 else 1)
        optim = (12 if low else 8) * P // gpus
    else:
        params, grads, optim = 4 * P, 4 * P, 8 * P
    global_batch = t.batch_size * t.grad_accum * gpus
    acts = fixed + t.batch_size * per_sequence
    return Plan(recipe.name, strategy, gpus, P, params, grads, optim, acts, per_sequence, OVERHEAD_BYTES, gpu_memory,
                global_batch, global_batch * recipe.data.seq_len, t.batch_size)

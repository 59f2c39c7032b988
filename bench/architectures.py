"""The paper's architecture ablation at our scale: five models, one corpus split, one wall-clock budget.

    python bench/architectures.py [--seconds 90] [--threads 1] [--out bench/results/architectures.json]
                                  [--plot docs/img/architectures.png]

Models (the ``tiny`` preset shape: d_model 128, 4 layers, hidden width 384, bytes):

* MLGRU (ternary) and RWKV-4 (ternary): the shipped MatMul-free models;
* Transformer++ (full precision);
* MLGRU (fp) and RWKV-4 (fp): full-precision twins of the two recurrent models, every BitLinear
  replaced by a dense fp32 linear layer that keeps the BitLinear's inner RMSNorm where it has one
  (so the twins differ from the ternary models only in the quantisation).

Each trains on the Shakespeare byte corpus (train split: all plays but the held-out ones) with
batch 16 x 128 tokens, AdamW, a 30-step warmup and a cosine decay over the *wall-clock* budget
(ternary peak LR 4e-3, full precision 2e-3, as the shakespeare-tiny recipes), until the budget of
training time is spent (evaluation time is not counted). Every ``--eval-every`` seconds of
training it measures the validation loss (held-out plays, fixed batches) in nats per byte.

Table per model: validation nats/byte at the end, training tokens/s, CPU decode tokens/s (batch 1,
greedy, after a 16-token prompt; ternary models on the packed 2-bit engines, the others with
their fp32 reference step, each labelled), parameters and weight bytes (packed 2-bit for the
ternary models, fp32 for the rest). Prints the table and writes JSON and one plot of validation
loss against wall-clock training time. CPU-only; on a shared machine the speeds are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from matmulfree import build_model, preset
from matmulfree.layers import BitLinear, RMSNorm

SEQ_LEN, BATCH, WARMUP = 128, 16, 30


class DenseTwin(nn.Module):
    """A full-precision stand-in for a BitLinear: the same inner RMSNorm (if any) and latent weight,
    ``y = norm(x) @ W^T`` without quantisation."""

    def __init__(self, layer: BitLinear) -> None:
        super().__init__()
        self.norm = None
        if layer.norm is not None:
            self.norm = RMSNorm(layer.in_features, layer.norm.eps)
            self.norm.weight.data.copy_(layer.norm.weight.data)
        self.weight = nn.Parameter(layer.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x) if self.norm is not None else x, self.weight)


def full_precision_twin(model: nn.Module) -> nn.Module:
    """Replace every BitLinear of ``model`` (in place) by a :class:`DenseTwin`; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, BitLinear):
            setattr(model, name, DenseTwin(child))
        else:
            full_precision_twin(child)
    return model


def build(kind: str) -> tuple[nn.Module, float, bool]:
    """``(model, peak lr, ternary)`` for one of the five kinds."""
    arch = {"mlgru": "matmulfree", "rwkv": "rwkv", "transformer": "transformer"}[kind.split("-")[0]]
    model = build_model(preset("tiny", arch))
    if kind == "transformer":
        return model, 2e-3, False
    if kind.endswith("-fp"):
        return full_precision_twin(model), 2e-3, False
    return model, 4e-3, True


def load_tokens() -> tuple[np.ndarray, np.ndarray]:
    from matmulfree.data.tokenizer import ByteTokenizer
    from matmulfree.data.tokens import tokenize_split

    tok = ByteTokenizer()
    return (tokenize_split("shakespeare", tok, "train").tokens,
            tokenize_split("shakespeare", tok, "validation").tokens)  # fmt: skip


def batch(tokens: np.ndarray, starts: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + SEQ_LEN], dtype=np.int64) for s in starts]))


@torch.no_grad()
def val_nats_per_byte(model: nn.Module, val_batches: list[torch.Tensor]) -> float:
    model.eval()
    total = n = 0.0
    for ids in val_batches:
        out = model(ids, labels=ids, loss_reduction="sum")
        total += out.loss.item()
        n += out.n_tokens
    model.train()
    return total / n  # byte tokens: nats per token = nats per byte


def lr_at(step: int, frac: float, peak: float) -> float:
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def train(kind: str, train_tokens, val_batches, seconds: float, eval_every: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model, peak, ternary = build(kind)
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=peak, betas=(0.9, 0.95))
    rng = np.random.default_rng(seed)  # the same batches in the same order for every model
    curve = [{"seconds": 0.0, "step": 0, "val_nats_per_byte": val_nats_per_byte(model, val_batches)}]
    trained = 0.0
    step = 0
    next_eval = eval_every
    while trained < seconds:
        ids = batch(train_tokens, rng.integers(0, len(train_tokens) - SEQ_LEN, BATCH))
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, trained / seconds, peak)
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        trained += time.perf_counter() - t0
        step += 1
        if trained >= next_eval or trained >= seconds:
            curve.append({"seconds": trained, "step": step, "train_loss": loss.item(),
                          "val_nats_per_byte": val_nats_per_byte(model, val_batches)})  # fmt: skip
            next_eval += eval_every
    decode = decode_speed(model, kind, ternary)
    s = model.weight_summary() if hasattr(model, "weight_summary") and ternary else None
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": kind, "ternary": ternary, "peak_lr": peak, "steps": step, "train_seconds": trained,
        "train_tokens_per_s": step * BATCH * SEQ_LEN / trained,
        "val_nats_per_byte": curve[-1]["val_nats_per_byte"], "curve": curve,
        "parameters": s["parameters"] if s else params,
        "weight_bytes": s["packed_bytes"] if s else 4 * params,
        "weight_format": "2-bit ternary + fp32 rest" if ternary else "fp32",
        **decode,
    }  # fmt: skip


@torch.no_grad()
def decode_speed(model: nn.Module, kind: str, ternary: bool, prompt: int = 16, tokens: int = 64) -> dict:
    """Greedy batch-1 decode tokens/s: packed engines for the ternary models, else the fp32 step."""
    model.eval()
    ids = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(0))
    if ternary:
        from matmulfree.inference import PackedCPUDecoder, PackedRWKVDecoder

        model.pack()
        dec = PackedRWKVDecoder(model) if kind == "rwkv" else PackedCPUDecoder(model)
        prefill, step, engine = dec.prefill, dec.step, f"packed 2-bit ({dec.backend})"
    else:

        def prefill(x):
            out = model(x)
            return out.logits[:, -1], out.state

        step, engine = model.step, "fp32 reference step" + (", KV cache" if kind == "transformer" else "")
    best = 0.0
    for _ in range(2):  # best of two windows (the machine is shared)
        logits, state = prefill(ids)
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits, state = step(logits.argmax(-1), state)
        best = max(best, tokens / (time.perf_counter() - t0))
    return {"decode_tokens_per_s": best, "decode_engine": engine}


def write_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        xs = [p["seconds"] for p in r["curve"]]
        ys = [p["val_nats_per_byte"] for p in r["curve"]]
        ax.plot(xs, ys, marker="o", markersize=3, label=r["model"], linestyle="-" if r["ternary"] else "--")
    ax.set_xlabel("training wall-clock time (s, 2-core CPU, shared machine)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.set_title("Shakespeare bytes, tiny shape, same budget")
    ax.set_ylim(top=min(3.5, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=90.0, help="training wall-clock budget per model (s)")
    p.add_argument("--eval-every", type=float, default=10.0, help="seconds of training between evaluations")
    p.add_argument("--val-batches", type=int, default=8, help="validation batches of 16 x 128 bytes")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--models", nargs="+", default=["mlgru", "rwkv", "transformer", "mlgru-fp", "rwkv-fp"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/architectures.json")
    p.add_argument("--plot", default="docs/img/architectures.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_tokens, val_tokens = load_tokens()
    vrng = np.random.default_rng(1234)
    val_batches = [batch(val_tokens, vrng.integers(0, len(val_tokens) - SEQ_LEN, BATCH))
                   for _ in range(args.val_batches)]  # fmt: skip
    results = []
    for kind in args.models:
        r = train(kind, train_tokens, val_batches, args.seconds, args.eval_every, args.seed)
        results.append(r)
        print(f"{kind:12s} val {r['val_nats_per_byte']:.3f} nats/byte  train {r['train_tokens_per_s']:7.0f} tok/s  "
              f"decode {r['decode_tokens_per_s']:6.1f} tok/s ({r['decode_engine']})  params {r['parameters']:,}  "
              f"weights {r['weight_bytes']:,} B", flush=True)  # fmt: skip
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds_per_model": args.seconds, "threads": args.threads,
            "seq_len": SEQ_LEN, "batch": BATCH, "corpus": "shakespeare bytes (train / held-out plays)",
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "torch": torch.__version__,
            "note": "2-core machine; speeds depend on what else runs (see load_average); losses after a short budget"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    write_plot(results, Path(args.plot))
    print(f"wrote {out} and {args.plot}")


if __name__ == "__main__":
    main()

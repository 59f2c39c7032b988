"""Maximum |logit| difference between the parallel path and token-by-token recurrent stepping.

    python bench/parallel_vs_recurrent.py [--presets tiny small] [--tokens 256] [--out FILE]

Prints and saves JSON: for each preset and architecture, the max absolute and relative
difference of the logits of one sequence computed in parallel vs with ``model.step``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from matmulfree import build_model, preset


def compare(name: str, arch: str, tokens: int, **extra) -> dict:
    torch.manual_seed(0)
    model = build_model(preset(name, arch, **extra)).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, tokens))
    with torch.no_grad():
        full = model(ids).logits
        state, steps = None, []
        for t in range(tokens):
            logits, state = model.step(ids[:, t], state)
            steps.append(logits)
    diff = (torch.stack(steps, 1) - full).abs().max().item()
    return {
        "preset": name,
        "architecture": arch,
        **extra,
        "tokens": tokens,
        "max_abs_diff": diff,
        "max_abs_logit": full.abs().max().item(),
        "max_rel_diff": diff / full.abs().max().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--out", default="bench/results/parallel_vs_recurrent.json")
    args = p.parse_args()
    rows = []
    for name in args.presets:
        for arch, extra in [("matmulfree", {}), ("matmulfree", {"gate": "released", "forget_lower_bound": True}),
                            ("transformer", {})]:
            rows.append(compare(name, arch, args.tokens, **extra))
            print(json.dumps(rows[-1]))
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": rows}, indent=2))


if __name__ == "__main__":
    main()

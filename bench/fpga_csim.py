"""Vitis HLS export + g++ C-simulation of a checkpoint, with the figures for the closing note.

    python bench/fpga_csim.py [CHECKPOINT] [--out DIR] [--tokens 256] [--stream-weights]
        [--calib-text FILE] [--json FILE]

Without CHECKPOINT a random model of the ``fpga`` preset is exported (seed 0). Prints and saves
JSON: on-chip memory of the kernel in bits (``arch.memory_bits`` breakdown, the part's capacity
and utilization), the C-simulation result (token steps, tokens and logits equal to the integer
reference, compile and run seconds) and the modelled cycles per token (a model, not measured).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from matmulfree.fpga import arch, intref
from matmulfree.fpga.hls import ExportOptions, export_vitis, run_csim
from matmulfree.fpga.hls.cli import convert_checkpoint

import matmulfree


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=None, help="model folder (default: random 'fpga' preset)")
    ap.add_argument("--out", default=None, help="export folder (default: a temporary folder)")
    ap.add_argument("--tokens", type=int, default=256, help="token steps checked by the C-simulation")
    ap.add_argument("--stream-weights", action="store_true")
    ap.add_argument("--calib-text", default=None, help="text file whose bytes calibrate the integer formats")
    ap.add_argument("--json", default="bench/results/fpga_csim.json")
    args = ap.parse_args(argv)

    if args.checkpoint:
        P, source = convert_checkpoint(args.checkpoint, args.calib_text), args.checkpoint
    else:
        torch.manual_seed(0)
        P = intref.convert(matmulfree.build_model(matmulfree.preset("fpga")).eval())
        source = "random preset 'fpga' (seed 0)"
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mmf_hls_"))
    s = export_vitis(P, out, ExportOptions(stream_weights=args.stream_weights, tb_tokens=args.tokens), source=source)
    res = run_csim(out)
    mem = s["memory_bits"]
    result = {
        "source": source,
        "export_dir": str(out),
        "model": s["model"],
        "memory_bits_model": arch.memory_bits(P),
        "memory_bits_kernel": mem["kernel_on_chip"],
        "part": s["part"]["name"],
        "part_onchip_bits": s["part"]["onchip_bits"],
        "utilization": mem["fit"]["utilization"],
        "csim": {k: v for k, v in res.as_dict().items() if k != "output"},
        "cycles_model": s["cycles_model"],
        "greedy_text": bytes(int(t) % 256 for t in s["golden"]["tokens"][s["golden"]["prompt_tokens"]:]).decode(
            "latin-1") if P["vocab_size"] == 256 else None,
    }
    print(f"source: {source}; d={P['d_model']} L={P['n_layers']} V={P['vocab_size']} hidden={P['hidden']}")
    print(f"on-chip memory (arch.memory_bits): {result['memory_bits_model']['total']:,} bits "
          f"(weights {result['memory_bits_model']['weights']:,}); kernel {mem['kernel_on_chip']['total']:,} of "
          f"{result['part_onchip_bits']:,} on {result['part']} ({100 * result['utilization']:.2f} %)")
    print(f"csim {'PASS' if res.passed else 'FAIL'}: {res.steps} steps, tokens {res.tokens_ok}/{res.steps}, logits "
          f"{res.logits_ok}/{res.logits_total}; compile {res.compile_seconds} s, run {res.run_seconds} s")
    cyc = s["cycles_model"]
    print(f"modelled (not measured): {cyc['cycles_per_token']:,} cycles/token, "
          f"{cyc['tokens_per_s']:,.0f} tokens/s at {cyc['clock_mhz']:g} MHz")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=lambda o: o.item()
                                              if isinstance(o, np.generic) else str(o)) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()

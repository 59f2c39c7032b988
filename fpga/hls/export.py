"""Write the Vitis HLS export folder of an integer MatMul-free model.

``export_vitis(P, out, ExportOptions(...))`` writes::

    firmware/  mmf_kernel.cpp / .h (kernel), mmf_arith.h (integer primitives), mmf_bitlinear.h
               (BitLinear, table lookups, blob decoders; shared by the architectures' kernels),
               mmf_params.h (sizes, formats, blob offsets), mmf_tables.h (lookup-table ROMs)
    weights/   mmf_weights.bin (blob a host loads over AXI), mmf_weights.h (same words as a C
               initializer), manifest.json (sections), params.npz (the integer parameter dict)
    tb/        tb_mmf.cpp (testbench), tb_data.h (golden tokens and logits from the reference)
    scripts/   run_hls.tcl, Makefile, link.cfg, host.cpp
    README.md, export.json

``P`` is the parameter dict of :func:`matmulfree.fpga.intref.convert`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..convert import export_params
from . import cgen, cgen_rwkv
from .golden import DEFAULT_PROMPT, prompt_ids, reference_sequence
from .layout import BlobLayout
from .layout_rwkv import RWKVLayout
from .resources import (
    DEFAULT_CLOCK_MHZ,
    DEFAULT_PART,
    MemoryFitError,
    check_fit,
    cycles_per_token,
    cycles_per_token_rwkv,
    get_part,
    is_rwkv,
    kernel_memory_bits,
    weight_memory_blocks,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Kernel source template of each architecture (written as ``firmware/mmf_kernel.cpp``).
KERNEL_TEMPLATES = {"matmulfree": "firmware/mmf_kernel.cpp", "rwkv": "firmware/rwkv_kernel.cpp"}
#: Template files copied (with ``@@NAME@@`` substitution) into the export folder.
TEMPLATE_FILES = ("firmware/mmf_kernel.cpp", "firmware/mmf_kernel.h", "firmware/mmf_arith.h",
                  "firmware/mmf_bitlinear.h", "tb/tb_mmf.cpp",
                  "scripts/run_hls.tcl", "scripts/Makefile", "scripts/link.cfg", "scripts/host.cpp")
#: Every file an export folder holds (the C-simulation and the tests check these).
EXPORT_FILES = TEMPLATE_FILES + ("firmware/mmf_params.h", "firmware/mmf_tables.h", "weights/mmf_weights.bin",
                                 "weights/mmf_weights.h", "weights/manifest.json", "weights/params.npz",
                                 "tb/tb_data.h", "README.md", "export.json")


class ExportError(ValueError):
    """Bad export options or a model the kernel cannot hold (one-line message)."""


@dataclass
class ExportOptions:
    """Options of ``matmulfree export --target vitis`` (units in the names)."""

    part: str = DEFAULT_PART
    clock_mhz: float = DEFAULT_CLOCK_MHZ
    platform: str | None = None  # None: the part's default Vitis platform
    stream_weights: bool = False
    row_parallel: int = 4  # weight rows per cycle (x16 ternary weights each)
    dataflow: bool = True
    tb_tokens: int = 64
    tb_prompt: str = DEFAULT_PROMPT
    onchip_bits: int | None = None  # capacity override for an unlisted part

    def validate(self) -> None:
        if self.row_parallel < 1 or self.row_parallel > 64 or self.row_parallel & (self.row_parallel - 1):
            raise ExportError(f"--row-parallel must be a power of two in [1, 64], got {self.row_parallel}")
        if self.tb_tokens < 1:
            raise ExportError(f"--tb-tokens must be >= 1, got {self.tb_tokens}")
        if not self.clock_mhz > 0:
            raise ExportError(f"--clock-mhz must be positive, got {self.clock_mhz}")
        if self.onchip_bits is not None and self.onchip_bits <= 0:
            raise ExportError(f"--onchip-bits must be positive, got {self.onchip_bits}")


def render(text: str, values: dict[str, Any], name: str) -> str:
    """Replace every ``@@KEY@@``; a placeholder left over is a bug in the template or caller."""
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    if "@@" in text:
        i = text.index("@@")
        raise ExportError(f"template {name}: unfilled placeholder near {text[i: i + 40]!r}")
    return text


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def export_vitis(P: dict[str, Any], out: str | Path, opts: ExportOptions | None = None,
                 source: str = "") -> dict[str, Any]:
    """Write the export folder; returns the summary also saved as ``export.json``.

    Raises:
        ExportError: bad options, unknown part, or (without ``stream_weights``) a model larger
            than the part's on-chip memory; the message gives the bits needed and available.
    """
    opts = opts or ExportOptions()
    opts.validate()
    try:
        part = get_part(opts.part, opts.onchip_bits)
        fit = check_fit(P, part, opts.stream_weights)
    except (KeyError, MemoryFitError) as e:
        raise ExportError(str(e.args[0]) if e.args else str(e)) from None
    platform = opts.platform or part.platform
    out = Path(out)
    rwkv = is_rwkv(P)
    lay = RWKVLayout(P) if rwkv else BlobLayout(P)
    blob = lay.pack()
    prompt = prompt_ids(opts.tb_prompt, P["vocab_size"], opts.tb_tokens)
    tokens, logits = reference_sequence(P, prompt, opts.tb_tokens)

    mem = kernel_memory_bits(P, opts.stream_weights)
    impl = "uram" if part.uram and mem["weights"] > part.bram36 * 36 * 1024 // 4 else "bram"
    if rwkv:
        cyc = cycles_per_token_rwkv(P, opts.row_parallel, opts.stream_weights)
    else:
        cyc = cycles_per_token(P, opts.row_parallel, opts.stream_weights, opts.dataflow)
    values = {
        "PART": part.name, "CLOCK_MHZ": f"{opts.clock_mhz:g}", "PERIOD_NS": f"{1000.0 / opts.clock_mhz:.3f}",
        "PLATFORM": platform or "SET_PLATFORM_HERE", "BLOB_WORDS": lay.total_words, "TB_TOKENS": opts.tb_tokens,
        "LOGITS_DEPTH": opts.tb_tokens * P["vocab_size"], "ROW_PAR": opts.row_parallel, "WEIGHT_IMPL": impl,
        "COSIM_STEPS": min(4, opts.tb_tokens),
    }
    arch = "rwkv" if rwkv else "matmulfree"
    for rel in TEMPLATE_FILES:
        src = KERNEL_TEMPLATES[arch] if rel == "firmware/mmf_kernel.cpp" else rel
        _write(out / rel, render((TEMPLATES / src).read_text(), values, src))
    if rwkv:
        _write(out / "firmware/mmf_params.h", cgen_rwkv.params_header(
            P, lay, stream_weights=opts.stream_weights, row_par=opts.row_parallel, tb_tokens=opts.tb_tokens))
        _write(out / "firmware/mmf_tables.h", cgen_rwkv.tables_header(P))
    else:
        _write(out / "firmware/mmf_params.h", cgen.params_header(
            P, lay, stream_weights=opts.stream_weights, row_par=opts.row_parallel, dataflow=opts.dataflow,
            tb_tokens=opts.tb_tokens))
        _write(out / "firmware/mmf_tables.h", cgen.tables_header(P))
    _write(out / "weights/mmf_weights.bin", blob.astype("<u4").tobytes())
    _write(out / "weights/mmf_weights.h", cgen.weights_header(lay, blob))
    _write(out / "weights/manifest.json", json.dumps(
        {"word_bytes": 4, "byte_order": "little", "total_words": lay.total_words, "sections": lay.manifest()},
        indent=1) + "\n")
    np.savez(out / "weights/params.npz", **export_params(P))
    _write(out / "tb/tb_data.h", cgen.tb_data_header(prompt, tokens, logits))

    summary: dict[str, Any] = {
        "source": source,
        "model": {"architecture": arch, **{k: P[k] for k in (
            "d_model", "n_layers", "vocab_size", "hidden", "gate_released", "forget_lower_bound", "rwkv_gate",
            "format_version") if k in P}},
        "formats": {k: P[k] for k in ("act_frac", "act_bits", "lut_bits", "lut_frac", "res_shift", "res_bits",
                                      "logit_frac", "logit_bits", "ln_frac") if k in P},
        "options": {**asdict(opts), "platform": platform},
        "part": {"name": part.name, "board": part.board, "bram36": part.bram36, "uram": part.uram,
                 "dsp": part.dsp, "lut": part.lut, "onchip_bits": part.onchip_bits, "capacity": part.describe()},
        "memory_bits": {"kernel_on_chip": mem, "fit": fit, "weight_impl": impl,
                        "weight_memory_blocks": 0 if opts.stream_weights else
                        weight_memory_blocks(P, opts.row_parallel, impl)},
        "blob": {"words": lay.total_words, "bytes": 4 * lay.total_words},
        "cycles_model": {**cyc, "clock_mhz": opts.clock_mhz,
                         "tokens_per_s": opts.clock_mhz * 1e6 / cyc["cycles_per_token"]},
        "golden": {"steps": opts.tb_tokens, "prompt_tokens": len(prompt), "tokens": tokens.tolist()},
        "csim": None,
    }
    write_summary(out, summary)
    return summary


def write_summary(out: str | Path, summary: dict[str, Any]) -> None:
    """Save ``export.json`` and re-render ``README.md`` from it."""
    out = Path(out)
    _write(out / "export.json", json.dumps(summary, indent=1) + "\n")
    _write(out / "README.md", readme(summary))


def load_summary(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "export.json"
    if not path.is_file():
        raise ExportError(f"{out}: not a vitis export folder (no export.json); "
                          f"write one with 'matmulfree export CHECKPOINT OUT --target vitis'")
    return json.loads(path.read_text())


def _n(v: float) -> str:
    return f"{int(v):,}"


def readme(s: dict[str, Any]) -> str:
    """``README.md`` of an export folder, from its ``export.json`` summary."""
    m, o, pt, mem = s["model"], s["options"], s["part"], s["memory_bits"]
    k, fit, cyc = mem["kernel_on_chip"], mem["fit"], s["cycles_model"]
    csim = s.get("csim")
    if csim:
        verdict = (f"**{'PASS' if csim['passed'] else 'FAIL'}** with `{csim['compiler']}`: {csim['steps']} token "
                   f"steps, {csim['tokens_ok']}/{csim['steps']} tokens and {_n(csim['logits_ok'])}/"
                   f"{_n(csim['logits_total'])} logits equal to the Python integer reference "
                   f"(compiler warnings: {csim['warnings']}).")
    else:
        verdict = "not run yet: run `matmulfree fpga csim .` (needs only g++)."
    if m.get("architecture") == "rwkv":
        model_line = (f"RWKV-4 with ternary projections: d = {m['d_model']}, {m['n_layers']} layers, vocabulary "
                      f"{m['vocab_size']}, channel-mixing width {m['hidden']}, output gate: "
                      f"{'silu(G x)' if m['rwkv_gate'] else 'none'}.")
        kernel = ("one RWKV-4 token step per loop iteration (fixed-point LayerNorm, token shift, WKV recurrence "
                  "with exp and division by table, channel mixing)")
        tables = "reciprocal, 1/sqrt, sigmoid, SiLU, exp (two levels) and division tables (ROM)"
    else:
        gate = "released (RMSNorm(g)·SiLU(h))" if m["gate_released"] else "paper (g·σ(h))"
        model_line = (f"MLGRU + GLU: d = {m['d_model']}, {m['n_layers']} layers, vocabulary {m['vocab_size']}, GLU "
                      f"hidden {m['hidden']}, gate {gate}, forget lower bound: "
                      f"{'yes' if m['forget_lower_bound'] else 'no'}.")
        kernel = "one MLGRU + GLU token step per loop iteration"
        tables = "reciprocal, 1/sqrt, sigmoid and SiLU tables (ROM)"
    values = {
        "SOURCE": s["source"] or "(parameter dict)", "MODEL_LINE": model_line, "KERNEL": kernel, "TABLES": tables,
        "INTREF": "matmulfree.fpga.intref_rwkv" if m.get("architecture") == "rwkv" else "matmulfree.fpga.intref",
        "DATAFLOW": "" if m.get("architecture") == "rwkv" else ", DATAFLOW", "PART": pt["name"], "BOARD": pt["board"],
        "PLATFORM": o["platform"] or "(none: pass PLATFORM=...)", "CLOCK_MHZ": f"{o['clock_mhz']:g}",
        "MODE": "streamed from DRAM over m_axi at every token (--stream-weights)" if o["stream_weights"]
        else "on chip (copied once from DRAM by the LOAD call)",
        "ROW_PAR": o["row_parallel"], "TB_TOKENS": s["golden"]["steps"], "TB_PROMPT": s["golden"]["prompt_tokens"],
        "BLOB_WORDS": _n(s["blob"]["words"]), "BLOB_BYTES": _n(s["blob"]["bytes"]),
        "MEM_ROWS": "\n".join(f"| {name} | {_n(v)} |" for name, v in k.items()),
        "AVAIL": _n(pt["onchip_bits"]), "CAPACITY": pt["capacity"], "UTIL": f"{100 * fit['utilization']:.2f}",
        "WEIGHT_BITS": _n(fit["weight_bits"]), "WEIGHT_IMPL": mem["weight_impl"].upper(),
        "WEIGHT_BLOCKS": mem["weight_memory_blocks"], "CYCLES": _n(cyc["cycles_per_token"]),
        "LOWER": _n(cyc["lower_bound_cycles"]), "WPT": _n(cyc["ternary_weights_per_token"]),
        "TPS": _n(cyc["tokens_per_s"]), "CSIM": verdict, "WPC": cyc["weights_per_cycle"],
        "FCG": "f, c and g run concurrently under DATAFLOW" if cyc["fcg_concurrent"] else "one projection at a time",
        "DSP": pt["dsp"], "LUT": _n(pt["lut"]),
    }
    return render((TEMPLATES / "README.md").read_text(), values, "README.md")


__all__ = ["EXPORT_FILES", "ExportError", "ExportOptions", "export_vitis", "load_summary", "readme", "render",
           "write_summary"]

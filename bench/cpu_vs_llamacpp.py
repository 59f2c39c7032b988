"""CPU decode side by side: our C engine on the 370M MatMul-free shape vs llama.cpp on a Llama model of
the same shapes with ternary weights in GGUF's TQ2_0 / TQ1_0, plus the machine's memory bandwidth,
all in one run.

    pip install -e ".[bench]"       # gguf + llama-cpp-python built from its sdist (CPU only), see below
    python bench/cpu_vs_llamacpp.py                       # threads 1 and 2, context 32, 64 timed tokens
    python bench/cpu_vs_llamacpp.py --threads 2 --context 128 --tokens 128 --repeats 5

llama-cpp-python has to be built from source for this CPU (``CMAKE_ARGS="-DGGML_NATIVE=ON"
pip install --no-binary llama-cpp-python llama-cpp-python``; ``nice`` it on a shared machine; it
takes 20-40 minutes on 2 cores). It is a ``[bench]`` extra, never needed by the tests.

The Llama model: the 370M preset's matrices exactly (24 layers; attention q/k/v/o are d x d like
the MLGRU's f/c/g/o, with 16 heads of 64; SwiGLU gate/up/down like the GLU's w_in halves and
w_down; a 32,000 x 1,024 output head), random ternary values written through ``gguf.quants``
(TQ2_0: 2.0625 bits per weight; TQ1_0: 1.6875), an fp16 token embedding (one row is read per
token) and a 32,000-token SentencePiece-style vocabulary of placeholder pieces. Speed does not
depend on the values. The files are cached under ``--gguf-dir``.

Per thread count the engines are timed round-robin ``--repeats`` times (median reported): each
prefills the same ``--context`` random tokens, decodes 4 warm-up tokens, then ``--tokens`` timed
greedy tokens (ours: ``MLGRUEngine.step``; llama.cpp: ``Llama.eval`` of one token, which includes
its logits copy). The bandwidth bound is a STREAM triad in C compiled here (bench/_membw.py: why C,
and the byte count), on the same threads, over a footprint equal to our engine's weight bytes
(the working set a decode step streams; it may be served partly by the last-level cache) and
over 512 MiB (DRAM); a read-only pass over the same footprint is reported too. Fraction of the
bound = weight bytes per token x tokens/s / triad bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _membw import bandwidth  # noqa: E402

from matmulfree import build_model, preset  # noqa: E402
from matmulfree.checkpoint import atomic_write_text  # noqa: E402
from matmulfree.inference.cpu_mlgru import MLGRUEngine  # noqa: E402

FORMATS = ("TQ2_0", "TQ1_0")


# --------------------------------------------------------------------------------------- GGUF
def write_llama_gguf(path: Path, cfg, fmt: str, seed: int) -> None:
    """A Llama GGUF with ``cfg``'s matrices, random ternary weights quantized to ``fmt``."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, fmt)
    d, l, V, L = cfg.d_model, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers
    heads = d // 64
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".part")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(f"random ternary llama {fmt} (matmulfree 370m shapes)")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(l)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(d // heads)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_vocab_size(V)
    w.add_tokenizer_model("llama")
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    pieces += [f"\u2581p{i}" for i in range(V - len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
    w.add_token_list(pieces)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(V - 259)])
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def ternary(rows: int, cols: int) -> np.ndarray:
        q = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8).astype(np.float32)
        return gguf.quants.quantize(q * 0.02, qtype)

    w.add_tensor("token_embd.weight", (rng.standard_normal((V, d)) * 0.02).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    w.add_tensor("output.weight", ternary(V, d), raw_dtype=qtype)
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", ternary(d, d), raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", ternary(l, d), raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_up.weight", ternary(l, d), raw_dtype=qtype)
        w.add_tensor(f"blk.{i}.ffn_down.weight", ternary(d, l), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def gguf_weight_bytes(path: Path) -> int:
    """Bytes of every tensor a decode step reads in full (all but the token embedding)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors if t.name != "token_embd.weight")


# ------------------------------------------------------------------------------------ runners
class OurEngine:
    def __init__(self, model, threads: int) -> None:
        self.engine = MLGRUEngine(model, threads=threads)
        self.weight_bytes = self.engine.weight_bytes()

    def run(self, prompt: list[int], warmup: int, tokens: int) -> float:
        logits, state = self.engine.prefill(torch.tensor([prompt]))
        tok = logits.argmax(-1)
        for _ in range(warmup):
            logits, state = self.engine.step(tok, state)
            tok = logits.argmax(-1)
        t0 = time.perf_counter()
        for _ in range(tokens):
            logits, state = self.engine.step(tok, state)
            tok = logits.argmax(-1)
        return tokens / (time.perf_counter() - t0)


class LlamaCpp:
    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, n_gpu_layers=0, verbose=False, use_mmap=True)  # fmt: skip
        self.weight_bytes = gguf_weight_bytes(path)

    def run(self, prompt: list[int], warmup: int, tokens: int) -> float:
        llm = self.llm
        llm.reset()
        llm.eval(prompt)
        for _ in range(warmup):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        t0 = time.perf_counter()
        for _ in range(tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return tokens / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--context", type=int, default=32, help="prompt tokens before decoding (default 32)")
    ap.add_argument("--tokens", type=int, default=64, help="timed decode tokens per repeat (default 64)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--preset", default="370m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf-dir", default=str(Path.home() / ".cache" / "matmulfree" / "gguf"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_vs_llamacpp.json"))
    args = ap.parse_args()

    load0 = os.getloadavg()
    cfg = preset(args.preset)
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval().pack()
    folder = Path(args.gguf_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ggufs = {}
    for fmt in args.formats:
        path = folder / f"llama_{args.preset}_{fmt}_seed{args.seed}.gguf"
        if not path.is_file():
            print(f"writing {path} ...", flush=True)
            write_llama_gguf(path, cfg, fmt, args.seed)
        ggufs[fmt] = path
    rng = np.random.default_rng(args.seed + 1)
    prompt = [int(t) for t in rng.integers(259, cfg.vocab_size, size=args.context)]
    n_ctx = args.context + args.warmup + args.tokens + 8

    rows = []
    for threads in args.threads:
        engines = {"matmulfree C engine": OurEngine(model, threads)}
        for fmt, path in ggufs.items():
            engines[f"llama.cpp {fmt}"] = LlamaCpp(path, threads, n_ctx)
        ours_bytes = engines["matmulfree C engine"].weight_bytes
        bw = {"triad_footprint_bytes": ours_bytes,
              "triad_bytes_per_s": bandwidth(ours_bytes, threads, kernel="triad"),
              "read_bytes_per_s": bandwidth(ours_bytes, threads, kernel="read"),
              "triad_dram_512mib_bytes_per_s": bandwidth(512 << 20, threads, kernel="triad", repeats=3)}  # fmt: skip
        tps: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(args.repeats):
            for name, eng in engines.items():
                tps[name].append(eng.run(prompt, args.warmup, args.tokens))
        bw_after = bandwidth(ours_bytes, threads, kernel="triad")
        bound = max(bw["triad_bytes_per_s"], bw_after)
        for name, eng in engines.items():
            med = statistics.median(tps[name])
            rows.append({
                "engine": name, "threads": threads, "tokens_per_s": med, "tokens_per_s_all": tps[name],
                "weight_bytes_per_token": eng.weight_bytes,
                "bytes_per_s": eng.weight_bytes * med,
                "fraction_of_triad": eng.weight_bytes * med / bound,
                "fraction_of_dram_triad": eng.weight_bytes * med / bw["triad_dram_512mib_bytes_per_s"],
                "bandwidth": {**bw, "triad_bytes_per_s_after": bw_after, "bound_bytes_per_s": bound},
            })  # fmt: skip
            print(f"threads {threads}: {name:22s} {med:7.1f} tok/s  {eng.weight_bytes / 1e6:6.1f} MB/token  "
                  f"{eng.weight_bytes * med / 1e9:5.2f} GB/s = {rows[-1]['fraction_of_triad']:.0%} of the triad "
                  f"({bound / 1e9:.2f} GB/s; DRAM triad {bw['triad_dram_512mib_bytes_per_s'] / 1e9:.2f})", flush=True)
        ours = statistics.median(tps["matmulfree C engine"])
        for fmt in ggufs:
            theirs = statistics.median(tps[f"llama.cpp {fmt}"])
            print(f"threads {threads}: ours / llama.cpp {fmt} = {ours / theirs:.2f}x")
        del engines

    import llama_cpp

    result = {
        "benchmark": "cpu_vs_llamacpp", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "preset": args.preset,
        "context": args.context, "timed_tokens": args.tokens, "repeats": args.repeats, "batch": 1,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "load_average_before": load0, "load_average_after": os.getloadavg()},
        "versions": {"torch": torch.__version__, "llama_cpp_python": llama_cpp.__version__},
        "command": " ".join(["python", *sys.argv]),
        "rows": rows,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

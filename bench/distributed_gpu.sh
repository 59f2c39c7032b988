#!/usr/bin/env bash
# Distributed training on a GPU machine: the checks the CPU tests cannot make.
#   bash bench/distributed_gpu.sh [STEPS]        (default 300 steps; needs pip install -e ".[all,deepspeed]")
# 1. DeepSpeed ZeRO-2 on one GPU (bf16, RWKV-4's AdamW settings, cosine with warm-up) for STEPS steps.
# 2. FSDP2 (bf16 compute, fp32 masters and reductions) on every visible GPU for the same steps.
# 3. The consolidated FSDP checkpoint is loaded and evaluated.
# Losses and timings land in bench/results/distributed_gpu.json (from each run's metrics.json and log.csv).
set -euo pipefail
STEPS=${1:-300}
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$NGPU" -ge 1 ] || { echo "no GPU visible" >&2; exit 1; }
OUT=${OUT:-runs/distributed_gpu}
rm -rf "$OUT"; mkdir -p "$OUT" bench/results
COMMON=(--set train.steps=$STEPS --set train.warmup_steps=30 --set eval.every=100 --set sample.every=0
        --set checkpoint.every=100 --set log.every=10 --set log.progress=false)
# a small shape on the shipped byte-level corpus, so the script needs no hub download
SHAPE=(--set model.preset=small --set data.source=shakespeare --set data.tokenizer=bytes --set data.seq_len=512
       --set data.streaming=false --set data.max_train_tokens=null --set model.vocab_size=256 --set train.batch_size=8
       --set train.grad_accum=2 --set train.lr=1.5e-3)
accelerate launch --num_processes 1 -m matmulfree.cli train slimpajama-370m-zero2 "${COMMON[@]}" "${SHAPE[@]}" \
    --out "$OUT/zero2"
torchrun --nproc_per_node "$NGPU" -m matmulfree.cli train slimpajama-370m "${COMMON[@]}" "${SHAPE[@]}" \
    --set train.schedule=cosine --out "$OUT/fsdp"
matmulfree checkpoint consolidate "$OUT/fsdp" "$OUT/fsdp-merged"
matmulfree checkpoint consolidate "$OUT/zero2" "$OUT/zero2-merged"
python - "$OUT" <<'PY'
import csv, json, sys
from pathlib import Path
import torch
out = Path(sys.argv[1])
result = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "runs": {}}
for name in ("zero2", "fsdp"):
    rows = list(csv.DictReader(open(out / name / "log.csv")))
    result["runs"][name] = {"metrics": json.loads((out / name / "metrics.json").read_text()),
                            "losses": {r["step"]: float(r["loss"]) for r in rows if r["loss"]}}
Path("bench/results/distributed_gpu.json").write_text(json.dumps(result, indent=1))
print(json.dumps({k: v["metrics"] for k, v in result["runs"].items()}, indent=1))
PY

#!/usr/bin/env bash
# The GPU measurement of issue 13 (benchmarks/RESULTS.md, "train-speed"): bench_train.py's recipe rows on one
# H100/H200, then the loop rows, in about 10 minutes. Writes JSON + the printed tables under $OUT (default: .).
#
#   bash benchmarks/gpu_train_speed.sh
#
# Needs on the GPU machine: CUDA torch, and the training stack of `.[train]` (transformers, peft, trl, accelerate,
# datasets); optionally liger-kernel (the liger row) and flash-attn (the packed rows run varlen; without it they
# fall back to SDPA, which the row says). Without internet there, carry wheels in outputs/wheels (ignored by git):
#   pip download -d outputs/wheels --no-deps trl==1.16.0 accelerate==1.15.0 liger-kernel==0.8.2 ...
# and the Llama vocabulary, for LLaVA-665K-like token counts (else the tiny tokenizer is used, said in the output):
#   mkdir -p outputs/fixtures && cp ../shared/fixtures/llama-spm-vocab.gguf outputs/fixtures/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-.}"
if [ -d outputs/wheels ]; then
  python -m pip install -q --no-index --find-links outputs/wheels outputs/wheels/*.whl || true
fi
[ -f outputs/fixtures/llama-spm-vocab.gguf ] && export SQLLAVA_FIXTURES="$PWD/outputs/fixtures"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python - <<'EOF' | tee "$OUT/versions.txt"
import importlib
for name in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "liger_kernel", "flash_attn"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
        print(name, "absent")
EOF
# Recipe rows: 2 warm-up + 4 timed steps each (about 30-60 s per row at the 7B shape).
timeout 480 python benchmarks/bench_train.py --mode recipe --warmup 2 --steps 4 --json "$OUT/bench_train_recipe.json" \
  2>&1 | grep -v "it/s\]" | tee "$OUT/bench_train_recipe.txt"
# Loop rows without the no-checkpointing pair (already measured, benchmarks/RESULTS.md): the kernels' baseline.
timeout 120 python benchmarks/bench_train.py --steps 3 --no-nockpt --json "$OUT/bench_train_loop.json" \
  2>&1 | tee "$OUT/bench_train_loop.txt" || true

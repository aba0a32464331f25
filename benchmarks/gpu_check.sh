#!/usr/bin/env bash
# GPU check (issue 13), < 9 minutes on one GPU: environment, W4-shaped fedavg/fedsrd rows on cuda
# and on the CPU, one QLoRA round, one local step of a random-init Llama-3.2-3B, and the resident
# worker (issue 29): 5 + 2 rounds in one worker process on cuda, GPU memory flat, one model load.
#   bash benchmarks/gpu_check.sh [OUTDIR]
#   bash benchmarks/gpu_check.sh --resident-dry-run [OUTDIR]   # the resident case alone, on the CPU
#                                                                 # with the tiny model (no GPU needed)
# On a machine without internet, carry the wheels that its Python lacks in .whl/ (prepare them
# with `bash benchmarks/gpu_check.sh --fetch-wheels` where pip works); they install into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
# What fedsqueeze needs beyond a CUDA PyTorch image (torch, transformers, peft, safetensors, typer, rich).
WHEELS="pydantic pydantic-core annotated-types typing-inspection zstandard tomli-w gguf bitsandbytes"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  for w in $WHEELS; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl "$w" || echo "could not fetch $w"
  done
  du -sh .whl; exit 0
fi

if [ "${1:-}" = "--resident-dry-run" ]; then
  OUT_DIR=${2:-${OUT:-runs/gpu-check}}; mkdir -p "$OUT_DIR"
  export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
  timeout 300 $PY benchmarks/gpu_check.py "$OUT_DIR" --resident-dry-run 2>&1 | tee "$OUT_DIR/gpu_check_resident.log"
  exit "${PIPESTATUS[0]}"
fi

OUT_DIR=${1:-${OUT:-runs/gpu-check}}
mkdir -p "$OUT_DIR"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
{
  echo "== environment ($(date -u +%FT%TZ))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'
  $PY -c 'import bitsandbytes as b; print("bitsandbytes", b.__version__)' 2>/dev/null || echo "bitsandbytes: not installed (the QLoRA row will say so)"
  echo "== rows"
  timeout 530 $PY benchmarks/gpu_check.py "$OUT_DIR"
} 2>&1 | tee "$OUT_DIR/gpu_check.log"

#!/usr/bin/env bash
# Paired precision measurement (issue 13): the quickstart cut to one round of 2 local steps, run
# back to back with the default precision (auto) and with train.precision=fp32, on this machine.
#   bash benchmarks/precision_pair.sh            # this CPU as it is
#   EMULATE_AVX2=1 bash benchmarks/precision_pair.sh   # oneDNN and ATen kept to AVX2: a CPU
#                                                      # without native bf16, on any x86 machine
# Prints wall-clock seconds of each whole command, the run's own seconds and what auto chose.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/precision-pair}
CUT=(--set train.rounds=1 --set train.local_steps=2 --set data.eval_examples=4 --set data.max_examples=32)
if [ "${EMULATE_AVX2:-0}" = 1 ]; then export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2; fi
$BIN/python -c "from fedsqueeze.hardware import Capabilities as C; c = C.detect(); print('cpu capability', c.cpu_isa, '| native bf16', c.cpu_bf16)"
run() {  # name, extra args...
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  $BIN/fedsqueeze run examples/quickstart.toml --out "$OUT/$name" --overwrite "${CUT[@]}" "$@" > "$OUT/$name.log" 2>&1
  local t1; t1=$(date +%s.%N)
  $BIN/python - "$OUT/$name/summary.json" "$name" "$t0" "$t1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<8} wall {float(sys.argv[4]) - float(sys.argv[3]):7.1f} s | run {s['seconds']:6.1f} s | device {s['device']} "
      f"precision {s['precision']} | eval loss {s['final_eval_loss']:.4f} | peak RSS {s.get('peak_rss_mb', 0):.0f} MB")
PY
}
mkdir -p "$OUT"
$BIN/fedsqueeze data examples/quickstart.toml "${CUT[@]}" > /dev/null 2>&1 || true  # model cache warm before timing
run auto
run fp32 --set train.precision=fp32
if [ "${EMULATE_AVX2:-0}" != 1 ]; then run bf16 --set train.precision=bf16; fi

#!/usr/bin/env bash
# One GPU call: 300-step parity of the bf16 mode with --torch_compile at 12 layers (classic row from
# docs/parity-fp16.json, same settings), then the 48-layer benchmark with every row profiled at steps 12-13.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"  # where the results go
t0=$(date +%s)
timeout 190 python bench/parity.py --configs bf16-adam8bit-sr-compile --n_layer 12 --steps 300 \
  --classic_from docs/parity-fp16.json --out_prefix $OUT/parity-bf16-compile > $OUT/parity.log 2>&1
echo "parity rc=$? $(( $(date +%s) - t0 )) s"; tail -4 $OUT/parity.log
left=$(( 560 - ($(date +%s) - t0) ))
CLM_PROFILE=12-13 timeout $left python bench/throughput.py --n_layer 48 --steps 20 --timeout 170 \
  --configs classic,bf16-adam8bit-sr-compile,bf16-adam8bit-sr-compile-inbackward \
  --out_prefix $OUT/benchmark --log_dir /tmp/benchlogs
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
cp /tmp/clm-parity/logs/parity-bf16-adam8bit-sr-compile.log /tmp/benchlogs/ 2>/dev/null
tar czf $OUT/logs.tgz -C /tmp benchlogs
cat /tmp/benchlogs/*-profile.md

#!/usr/bin/env bash
# One GPU call: the 48-layer benchmark of the compiled bf16 mode, stepped after the backward and in it, every row
# profiled at steps 12-13; then, in the time left, 300-step parity of both at 12 layers (the classic row from
# docs/parity-fp16.json, same settings).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"  # where the results go
t0=$(date +%s)
CLM_PROFILE=12-13 timeout 330 python bench/throughput.py --n_layer 48 --steps 20 --timeout 150 \
  --configs classic,bf16-adam8bit-sr-compile,bf16-adam8bit-sr-compile-inbackward \
  --out_prefix $OUT/benchmark --log_dir /tmp/benchlogs
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
left=$(( 570 - ($(date +%s) - t0) ))
timeout $left python bench/parity.py --configs bf16-adam8bit-sr-compile,bf16-adam8bit-sr-compile-inbackward \
  --n_layer 12 --steps 300 --classic_from docs/parity-fp16.json --out_prefix $OUT/parity-compile > $OUT/parity.log 2>&1
echo "parity rc=$? $(( $(date +%s) - t0 )) s"; grep -a "eval_loss" $OUT/parity.log | tail -14
cp /tmp/clm-parity/logs/parity-*.log /tmp/benchlogs/ 2>/dev/null
tar czf $OUT/logs.tgz -C /tmp benchlogs
cat /tmp/benchlogs/*-profile.md

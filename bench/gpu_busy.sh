#!/usr/bin/env bash
# One GPU call: how busy the GPU is in each fast way of training, profiled at steps 14-16, and the parity of the
# changed ones against the classic recipe. N_LAYER=12 explores, N_LAYER=48 confirms; ROWS and PARITY pick the rows.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" /tmp/benchlogs
N_LAYER=${N_LAYER:-12}
ROWS=${ROWS:-mode-bf16,mode-bf16-in-backward,mode-fp16-t4,mode-fp16-t4-compile,mode-fp16-t4-mb16,mode-fp16-t4-compile-mb16}
t0=$(date +%s)
CLM_PROFILE=14-16 timeout ${BENCH_S:-360} python bench/throughput.py --n_layer "$N_LAYER" --steps 20 --timeout 150 \
  --without_classic --configs "$ROWS" --out_prefix "$OUT/benchmark-busy-$N_LAYER" --log_dir /tmp/benchlogs
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
grep -h "tokens_per_s" /tmp/benchlogs/*.log | cut -c1-300
for f in /tmp/benchlogs/*-profile.md; do echo "== $f"; head -30 "$f"; done
if [ -n "${PARITY:-}" ]; then
  t1=$(date +%s)
  timeout ${PARITY_S:-240} python bench/parity.py --configs "$PARITY" --steps 300 --n_layer 12 \
    --classic_from docs/parity-fp16.json --out_prefix "$OUT/parity-busy" --work_dir /tmp/clm-parity \
    > "$OUT/parity.log" 2>&1
  echo "parity rc=$? $(( $(date +%s) - t1 )) s"; tail -5 "$OUT/parity.log"; cat "$OUT"/parity-busy.md 2>/dev/null
fi
tar czf "$OUT/logs.tgz" -C /tmp benchlogs

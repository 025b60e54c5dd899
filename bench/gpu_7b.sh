#!/usr/bin/env bash
# The 7B shapes inside a 600 s GPU call (bench/gpu_families.sh), default: Llama-2-7B at micro-batch 2, 20 steps timed
# through its final save, then killed at step 10 after a checkpoint at step 8 and rerun (the drawn model is reused).
# Another call: `bash bench/gpu_7b.sh mistral7b-mb1`. PARITY (row names of bench/rows.py) runs the 300-step parity at
# 12 layers beside the rows.   OUT=/tmp/out PARITY=mode-bf16-in-backward bash bench/gpu_7b.sh [rows of gpu_families.sh]
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
t0=$(date +%s)
budget=${DEADLINE:-570}
left() { local s=$(( budget - ($(date +%s) - t0) )); echo $(( s > 1 ? s : 1 )); }
df -h /tmp | tail -1
if [ -n "${PARITY:-}" ]; then
  timeout $(left) python bench/parity.py --configs "$PARITY" --steps 300 --n_layer 12 \
    --classic_from docs/parity-fp16.json --out_prefix "$OUT/parity" --work_dir /tmp/clm-parity \
    > "$OUT/parity.log" 2>&1 &
  parity=$!
fi
DEADLINE=$(left) bash bench/gpu_families.sh ${@:-llama7b-mb2 llama7b-killed}
if [ -n "${PARITY:-}" ]; then
  wait $parity; echo "parity rc=$? $(( $(date +%s) - t0 )) s"; cat "$OUT/parity.md" 2>/dev/null
fi
echo "total $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# One GPU call: the README's command with no mode flags (--mode auto) beside the mode it takes there asked for by
# name, 48 layers, 20 steps a row, profiled at steps 14-16: capped at 16 GiB on a card with bf16, and acting as a T4
# (no bf16, 15 GiB). Then --plan of each machine, so that the table auto chose from is on record.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" /tmp/benchlogs
t0=$(date +%s)
CLM_PROFILE=14-16 timeout 420 python bench/throughput.py --n_layer 48 --steps 20 --timeout 130 --without_classic \
  --configs auto,mode-bf16-in-backward,auto-t4,mode-fp16-t4 --out_prefix "$OUT/benchmark-modes" \
  --log_dir /tmp/benchlogs
echo "bench rc=$? $(( $(date +%s) - t0 )) s"
model=/tmp/clm-bench/gpt2-xl-shapes-48-layers
plan() { python run_clm.py --model_name_or_path "$model" --train_file train.csv --validation_file validation.csv \
  --do_train --do_eval --output_dir /tmp/plan-out --per_device_train_batch_size 8 --gradient_accumulation_steps 2 \
  --plan "$@"; }
CLM_GPU_MEMORY_GIB=16 plan > "$OUT/plan-16gib.txt" 2>&1
CLM_GPU_MEMORY_GIB=15 CLM_ASSUME_NO_BF16=1 plan > "$OUT/plan-t4.txt" 2>&1
grep -h "^mode:\|^\*" "$OUT"/plan-*.txt
grep -h "^mode:\|differs from\|tokens_per_s" /tmp/benchlogs/*.log | cut -c1-300
tar czf "$OUT/logs.tgz" -C /tmp benchlogs
cat /tmp/benchlogs/*-profile.md 2>/dev/null | head -60

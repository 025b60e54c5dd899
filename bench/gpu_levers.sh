#!/usr/bin/env bash
# Quick side-by-side of speed levers on the GPT-2 XL-sized classic run, 16 GiB cap, in one invocation.
#   bash bench/gpu_levers.sh LOG_DIR [N_LAYER] [STEPS]
# Each row: name | ds config | extra flags. The classic recipe is the first row and the baseline.
set -uo pipefail
log_dir=${1:?usage: gpu_levers.sh LOG_DIR [N_LAYER] [STEPS]}
n_layer=${2:-48}
steps=${3:-14}
rows=(
  "classic|ds_config.json|--fp16"
  "big-buckets|bench/ds_offload_big_buckets.json|--fp16"
  "mb16-acc1-chunked|ds_config.json|--fp16 --chunked_loss --per_device_train_batch_size 16 --gradient_accumulation_steps 1"
  "bf16-chunked|ds_config.json|--bf16 --chunked_loss"
)
for row in "${rows[@]}"; do
  IFS='|' read -r name config flags <<< "$row"
  # The row names its own precision flag.
  sed -e "s#--deepspeed ds_config.json#--deepspeed $config#" -e "s#--do_eval --fp16#--do_eval#" \
    bench/gpu_classic.sh > /tmp/run_row.sh
  # shellcheck disable=SC2086
  bash /tmp/run_row.sh "/tmp/levers-$name" "$n_layer" --max_steps "$steps" --save_strategy no $flags \
    > "$log_dir/$name.log" 2>&1
  echo "$name exit=$? $(cat "/tmp/levers-$name/run_stats.json" 2>/dev/null | tr -d '\n ')"
  rm -rf "/tmp/levers-$name"
done

#!/usr/bin/env bash
# A bigger model on the 16 GiB cap: print its plan, then train it for a few steps with the classic flags.
#   bash bench/gpu_bigger.sh CONFIG_DIR RUN_DIR [ds config] [extra run_clm.py flags...]
# CONFIG_DIR holds a config.json (bench/configs/gpt-neo-2.7B, bench/configs/gpt-j-6B); random weights.
set -uo pipefail
config_dir=${1:?usage: gpu_bigger.sh CONFIG_DIR RUN_DIR [ds config] [flags...]}
run_dir=${2:?}
ds_config=${3:-ds_config.json}
shift $(( $# < 3 ? $# : 3 ))
export CLM_GPU_MEMORY_GIB=${CLM_GPU_MEMORY_GIB:-16}
tokenizer=${TOKENIZER_DIR:-/tmp/clm-tokenizer}
[ -f train.csv ] || python3 texttocsv.py
[ -f "$tokenizer/tokenizer.json" ] || python3 tools/make_offline_model.py --text train.txt --out "$tokenizer" --vocab_size 8000
args=(run_clm.py --deepspeed "$ds_config" --config_name "$config_dir" --tokenizer_name "$tokenizer"
      --train_file train.csv --validation_file validation.csv --do_train --fp16 --block_size 1024
      --per_device_train_batch_size 8 --gradient_accumulation_steps 2 --max_steps 12 --save_strategy no
      --logging_steps 2 --output_dir "$run_dir" "$@")
CLM_ASSUME_GPU_GIB=$CLM_GPU_MEMORY_GIB python3 "${args[@]}" --plan
deepspeed --num_gpus=1 "${args[@]}"

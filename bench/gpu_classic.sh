#!/usr/bin/env bash
# The classic command on a GPT-2 XL-sized model with random weights, for a machine that cannot
# download gpt2-xl: same shapes, so the same speed and memory. Capped to 16 GiB of GPU memory.
#   bash bench/gpu_classic.sh RUN_DIR [N_LAYER] [extra run_clm.py flags...]
# N_LAYER defaults to GPT-2 XL's 48; fewer layers make a quick smoke test (each layer costs the same).
set -euo pipefail
run_dir=${1:?usage: gpu_classic.sh RUN_DIR [N_LAYER] [flags...]}
n_layer=${2:-48}
shift $(( $# < 2 ? $# : 2 ))
export CLM_GPU_MEMORY_GIB=${CLM_GPU_MEMORY_GIB:-16}
tokenizer=${TOKENIZER_DIR:-/tmp/clm-tokenizer}

[ -f train.csv ] || python3 texttocsv.py
# A GPT-2-style byte-level BPE trained on the example text stands in for gpt2-xl's tokenizer.
[ -f "$tokenizer/tokenizer.json" ] || python3 tools/make_offline_model.py --text train.txt --out "$tokenizer" --vocab_size 8000

deepspeed --num_gpus=1 run_clm.py --deepspeed ds_config.json \
  --model_type gpt2 --tokenizer_name "$tokenizer" \
  --config_overrides "n_embd=1600,n_layer=$n_layer,n_head=25,n_positions=1024,vocab_size=50257" \
  --train_file train.csv --validation_file validation.csv --do_train --do_eval --fp16 --overwrite_cache \
  --evaluation_strategy="steps" --output_dir "$run_dir" --save_steps 200 --eval_steps 200 \
  --num_train_epochs 1 --gradient_accumulation_steps 2 --per_device_train_batch_size 8 "$@"

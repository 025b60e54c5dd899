#!/usr/bin/env bash
# Four processes resumed on fewer, on this CPU machine (what a 4-GPU run does, acted out without GPUs): a tiny GPT-2
# (2 layers, 64 wide, dropout off) trained by `deepspeed --num_gpus=4 run_clm.py --use_cpu`, 12 steps of 8 sequences
# of 64 tokens with a checkpoint at 6 (A); then its checkpoint-6 resumed on NARROW processes (default 2) with the
# same 8 sequences a step and run to 12 (B); the eval losses of both printed. MODE=deepspeed (default: the shipped
# ds_config.json, its ZeRO state converted to the universal format) or MODE=bf16 (the bf16 mode's engine: DDP, the
# state as it is).
#   bash bench/cpu_resume_four.sh WORK_DIR
set -uo pipefail
work=${1:?usage: cpu_resume_four.sh WORK_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
mode=${MODE:-deepspeed} narrow=${NARROW:-2}
case $mode in
  deepspeed) engine=(--deepspeed "$repo/ds_config.json") ;;
  bf16) engine=(--bf16 --dtype bfloat16 --optim adamw_torch_8bit --optim_args bf16_stochastic_round=True
              --chunked_loss) ;;
  *) echo "MODE=$mode: deepspeed or bf16" >&2; exit 2 ;;
esac
if (( narrow < 1 || 4 % narrow )); then echo "NARROW=$narrow: 1, 2 or 4" >&2; exit 2; fi
mkdir -p "$work" && cd "$work" || exit 2
[ -f model/config.json ] || python3 "$repo/tools/make_offline_model.py" --text "$repo/train.txt" --out model \
  --vocab_size 1000 --model n_layer=2,n_embd=64,n_head=2,n_positions=256,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0 \
  > /dev/null 2>&1
head -c 120000 "$repo/train.txt" > train.txt
run() {  # NAME PROCESSES ACCUMULATION [flags...]
  local name=$1 processes=$2 accumulation=$3; shift 3
  OMP_NUM_THREADS=1 deepspeed --num_gpus="$processes" --master_port=$((29500 + RANDOM % 1000)) "$repo/run_clm.py" \
    "${engine[@]}" --model_name_or_path model --train_file train.txt --validation_file "$repo/validation.txt" \
    --do_train --do_eval --output_dir "out-$mode/$name" --block_size 64 --max_steps 12 --learning_rate 2e-3 \
    --logging_steps 2 --save_steps 6 --eval_strategy steps --eval_steps 6 --max_eval_samples 112 --seed 1 \
    --use_cpu --report_to none --per_device_train_batch_size 2 --gradient_accumulation_steps "$accumulation" "$@" \
    > "log-$mode-$name.txt" 2>&1
  echo "$mode $name ($processes processes x 2 x $accumulation): exit code $?"
}
rm -rf "out-$mode"
run A 4 1
rm -rf "out-$mode/A/checkpoint-12"
run B "$narrow" $(( 4 / narrow )) --resume_from_checkpoint "out-$mode/A/checkpoint-6"
grep -h "resuming from\|ds_to_universal" "log-$mode-B.txt"
python3 - "out-$mode" <<'PY'
import json, sys
for name in "AB":
    with open(f"{sys.argv[1]}/{name}/trainer_state.json") as f:
        state = json.load(f)
    evals = [(e["step"], round(e["eval_loss"], 5)) for e in state["log_history"] if "eval_loss" in e]
    print(f"{name}: ended at step {state['global_step']}, eval loss by step {evals}")
PY

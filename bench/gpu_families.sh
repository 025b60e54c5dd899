#!/usr/bin/env bash
# Models of today's families inside a 16 GiB cap: Qwen2.5-1.5B, Llama-3.2-3B and GPT-J 6B shapes, random weights
# drawn on the GPU and saved in bf16 once (drawing 3-6B weights on the CPU takes minutes), a tokenizer trained on
# the Shakespeare text (each model keeps its own vocabulary, so the LM heads are full size). Each runs in the mode
# `--plan` chooses for it, 20 steps; the plan of each is printed first.
#   OUT=/tmp/out DEADLINE=540 bash bench/gpu_families.sh [qwen] [llama] [llama-gpu-state] [gptj]   (default: these)
# and the 7B shapes (Llama-2-7B, Mistral-7B): llama7b-mbN, mistral7b-mbN (micro-batch N, the mode --plan chooses),
# llama7b-killed, mistral7b-killed (a checkpoint at step 8, SIGKILL at step 10, the command again: it resumes and
# finishes); drop-FAMILY deletes that family's saved model. EXTRA: more flags for the llama7b-mbN runs.
# STEPS: steps a run (default 20). DEADLINE: seconds from the start after which a run still going is stopped (its
# figures so far are kept), so that one slow run does not cost the results of those before it.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT/logs"  # where the results go
t0=$(date +%s)
DEADLINE=${DEADLINE:-86400}
left() { local s=$(( DEADLINE - ($(date +%s) - t0) )); echo $(( s > 1 ? s : 1 )); }
export CLM_GPU_MEMORY_GIB=16
BF16="--bf16 --dtype bfloat16 --optim adamw_torch_8bit --optim_args bf16_stochastic_round=True --chunked_loss"
STEPPED="--optimizer_in_backward --max_grad_norm 0 --gradient_accumulation_steps 1"
COMMON="--train_file train.csv --validation_file validation.csv --do_train --do_eval --max_steps ${STEPS:-20}
  --logging_steps 5 --report_to none --block_size 1024 --save_strategy no --per_device_eval_batch_size 2"
declare -A SHAPES=(
  [qwen]="qwen2 hidden_size=1536,intermediate_size=8960,num_hidden_layers=28,num_attention_heads=12,num_key_value_heads=2,vocab_size=151936,tie_word_embeddings=True"
  [llama]="llama hidden_size=3072,intermediate_size=8192,num_hidden_layers=28,num_attention_heads=24,num_key_value_heads=8,head_dim=128,vocab_size=128256,tie_word_embeddings=True"
  [gptj]="gptj n_embd=4096,n_layer=28,n_head=16,rotary_dim=64,vocab_size=50400,n_positions=2048"
  [llama7b]="llama hidden_size=4096,intermediate_size=11008,num_hidden_layers=32,num_attention_heads=32,num_key_value_heads=32,vocab_size=32000,max_position_embeddings=4096"
  [mistral7b]="mistral hidden_size=4096,intermediate_size=14336,num_hidden_layers=32,num_attention_heads=32,num_key_value_heads=8,vocab_size=32000"
)
model() {  # family: the saved model's folder, made once
  local folder=/tmp/model-$1; set -- ${SHAPES[$1]}
  [ -f $folder/config.json ] || python tools/make_offline_model.py --text train.txt --out $folder --vocab_size 8000 \
    --model_type $1 --model $2 --device cuda --dtype bfloat16 > /dev/null
  echo $folder
}
run() {  # name, family, flags...
  local name=$1 family=$2; shift 2
  local folder; folder=$(model $family)
  CLM_ASSUME_GPU_GIB=16 timeout $(left) python run_clm.py --model_name_or_path $folder $COMMON "$@" \
    --output_dir /tmp/$name --plan > $OUT/logs/$name-plan.txt 2>&1
  timeout -k 30 $(left) python run_clm.py --model_name_or_path $folder $COMMON "$@" --output_dir /tmp/$name \
    > $OUT/logs/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 )) s"; grep -E "^  peak|^  saving|^  loading|^  buffers|micro-batch:|^mode|verdict|change" $OUT/logs/$name-plan.txt
  grep -h "optimizer state:\|written in\|host RAM peak" $OUT/logs/$name.log
  cat /tmp/$name/run_stats.json /tmp/$name/eval_results.json 2>/dev/null; rm -rf /tmp/$name
}
killed_and_rerun() {  # name, family, flags...: a checkpoint at step 8, SIGKILL at the end of step 10, the command
  # again, which resumes and finishes at step 15. The rerun adds --save_strategy no: a 7B checkpoint (bf16 weights and
  # 8-bit state) is about 27 GB, and the model, two checkpoints and the final weights would not fit the 64 GiB disk
  local name=$1 family=$2; shift 2
  local folder; folder=$(model $family)
  local cmd=(python run_clm.py --model_name_or_path $folder $COMMON "$@" --max_steps 15 --save_strategy steps
             --save_steps 8 --output_dir /tmp/$name)
  CLM_TEST_PAUSE=step:10 setsid "${cmd[@]}" > $OUT/logs/$name-killed.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && ! grep -q "test hook: paused" $OUT/logs/$name-killed.log; do sleep 1; done
  kill -9 -- -$pid 2>/dev/null; wait $pid 2>/dev/null
  echo "$name killed at step 10 $(( $(date +%s) - t0 )) s: $(du -sh /tmp/$name/checkpoint-8 | cut -f1) checkpoint-8"
  grep -h "written in\|optimizer state:" $OUT/logs/$name-killed.log
  timeout -k 30 $(left) "${cmd[@]}" --save_strategy no > $OUT/logs/$name.log 2>&1
  echo "$name rerun rc=$? $(( $(date +%s) - t0 )) s"; grep -h "resuming from\|read in\|written in\|host RAM peak" $OUT/logs/$name.log
  cat /tmp/$name/run_stats.json /tmp/$name/eval_results.json 2>/dev/null; rm -rf /tmp/$name
}
for what in ${@:-qwen llama llama-gpu-state gptj}; do
  case $what in
    qwen) run qwen qwen $BF16 --torch_compile --per_device_train_batch_size 8 --gradient_accumulation_steps 2 ;;
    llama) run llama llama $BF16 --torch_compile $STEPPED --optimizer_state_on_host --per_device_train_batch_size 8 ;;
    llama-gpu-state) run llama-gpu-state llama $BF16 --torch_compile $STEPPED --per_device_train_batch_size 2 ;;
    gptj) run gptj gptj $BF16 $STEPPED --optimizer_state_on_host --per_device_train_batch_size 2 ;;
    # 7B models in the mode the plan chooses (no mode flags), one micro-batch a step
    llama7b-mb*) run $what llama7b --per_device_train_batch_size ${what#llama7b-mb} --gradient_accumulation_steps 1 ${EXTRA:-} ;;
    mistral7b-mb*) run $what mistral7b --per_device_train_batch_size ${what#mistral7b-mb} --gradient_accumulation_steps 1 ;;
    llama7b-killed) killed_and_rerun $what llama7b --per_device_train_batch_size 2 --gradient_accumulation_steps 1 ;;
    mistral7b-killed) killed_and_rerun $what mistral7b --per_device_train_batch_size 1 --gradient_accumulation_steps 1 ;;
    drop-*) rm -rf /tmp/model-${what#drop-} ;;  # a saved model no later run needs: room on the disk
  esac
done
echo "total $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# Issue 15, one call: Qwen2.5-1.5B-, Llama-3.2-3B- and GPT-J-6B-shaped models (random weights from configs, a
# tokenizer trained here), each in the fastest mode the plan says fits a 16 GiB cap, 20 steps; the plan of each first.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"  # where the results go
t0=$(date +%s)
mkdir -p /tmp/logs15
python tools/make_offline_model.py --text train.txt --out /tmp/tok --vocab_size 8000 > /dev/null
export CLM_GPU_MEMORY_GIB=16
BF16="--bf16 --dtype bfloat16 --optim adamw_torch_8bit --optim_args bf16_stochastic_round=True --chunked_loss"
COMMON="--tokenizer_name /tmp/tok --train_file train.csv --validation_file validation.csv --do_train --max_steps 20 --logging_steps 5 --report_to none --block_size 1024 --save_strategy no"
QWEN="--model_type qwen2 --config_overrides hidden_size=1536,intermediate_size=8960,num_hidden_layers=28,num_attention_heads=12,num_key_value_heads=2,vocab_size=151936,tie_word_embeddings=True"
LLAMA="--model_type llama --config_overrides hidden_size=3072,intermediate_size=8192,num_hidden_layers=28,num_attention_heads=24,num_key_value_heads=8,head_dim=128,vocab_size=128256,tie_word_embeddings=True"
GPTJ="--model_type gptj --config_overrides n_embd=4096,n_layer=28,n_head=16,rotary_dim=64,vocab_size=50400,n_positions=2048"
run() {  # name, seconds, flags...
  local name=$1 limit=$2; shift 2
  CLM_ASSUME_GPU_GIB=16 python run_clm.py $COMMON "$@" --output_dir /tmp/$name --plan > /tmp/logs15/$name-plan.txt 2>&1
  grep -E "^  peak|^plan" /tmp/logs15/$name-plan.txt
  timeout $limit python run_clm.py $COMMON "$@" --output_dir /tmp/$name > /tmp/logs15/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 )) s"; cat /tmp/$name/run_stats.json 2>/dev/null; cp /tmp/$name/run_stats.json /tmp/logs15/$name-stats.json 2>/dev/null
  grep -E "speed-ups|OutOfMemory|Error" /tmp/logs15/$name.log | head -3
}
run qwen 120 $QWEN $BF16 --torch_compile --per_device_train_batch_size 8 --gradient_accumulation_steps 2
run llama-gpu-state 80 $LLAMA $BF16 --torch_compile --optimizer_in_backward --max_grad_norm 0 --per_device_train_batch_size 4
run llama 130 $LLAMA $BF16 --torch_compile --optimizer_in_backward --optimizer_state_on_host --max_grad_norm 0 --per_device_train_batch_size 8
run gptj 190 $GPTJ $BF16 --optimizer_in_backward --optimizer_state_on_host --max_grad_norm 0 --per_device_train_batch_size 2 \
  --do_eval --per_device_eval_batch_size 2
cat /tmp/gptj/eval_results.json; ls -la /tmp/gptj | head -20
tar czf $OUT/logs15.tgz -C /tmp logs15
echo "total $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# GPT-J 6B shapes: weights drawn on the GPU and saved once, then the tool trains 20 steps, evaluates and saves.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"  # where the results go
t0=$(date +%s)
[ -f /tmp/tok/tokenizer.json ] || python tools/make_offline_model.py --text train.txt --out /tmp/tok --vocab_size 8000 > /dev/null
python -c "
import torch; from transformers import GPTJConfig, AutoModelForCausalLM
c = GPTJConfig(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048)
torch.manual_seed(0)
with torch.device('cuda'): m = AutoModelForCausalLM.from_config(c, dtype=torch.bfloat16)
m.save_pretrained('/tmp/gptj-model')"
cp /tmp/tok/*.json /tmp/tok/*.txt /tmp/gptj-model/ 2>/dev/null
echo "model saved $(( $(date +%s) - t0 )) s"
CLM_GPU_MEMORY_GIB=16 timeout $(( 185 - ($(date +%s) - t0) )) python run_clm.py --model_name_or_path /tmp/gptj-model \
  --train_file train.csv --validation_file validation.csv --do_train --do_eval --max_steps 20 --logging_steps 5 \
  --report_to none --block_size 1024 --save_strategy no --bf16 --dtype bfloat16 --optim adamw_torch_8bit \
  --optim_args bf16_stochastic_round=True --chunked_loss --optimizer_in_backward --optimizer_state_on_host \
  --max_grad_norm 0 --per_device_train_batch_size 2 --per_device_eval_batch_size 2 --output_dir /tmp/gptj-run > $OUT/gptj.log 2>&1
echo "gptj rc=$? $(( $(date +%s) - t0 )) s"
cat /tmp/gptj-run/run_stats.json /tmp/gptj-run/eval_results.json 2>/dev/null; ls -la /tmp/gptj-run 2>/dev/null | head

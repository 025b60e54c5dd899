#!/usr/bin/env bash
# Pre-emption on the GPU: start the GPT-2 XL-sized classic run, SIGKILL it a few steps after its first
# checkpoint, rerun the identical command, and check that it resumed. Then sample from the result.
#   bash bench/gpu_resume.sh RUN_DIR LOG_DIR [N_LAYER]
set -uo pipefail
run_dir=${1:?usage: gpu_resume.sh RUN_DIR LOG_DIR [N_LAYER]}
log_dir=${2:?}
n_layer=${3:-48}
cmd=(bash bench/gpu_classic.sh "$run_dir" "$n_layer" --max_steps 20 --save_steps 10 --save_total_limit 1)

setsid "${cmd[@]}" > "$log_dir/first.log" 2>&1 &
first=$!
until [ -f "$run_dir/checkpoint-10/trainer_state.json" ]; do
  kill -0 "$first" 2>/dev/null || { echo "first run ended before its checkpoint"; exit 1; }
  sleep 1
done
sleep 8  # a few steps past the checkpoint
kill -KILL -- "-$first"
wait "$first" 2>/dev/null
echo "killed the first run at: $(grep -o '[0-9]*/20 \[' "$log_dir/first.log" | tail -1)"
du -sh "$run_dir/checkpoint-10"

"${cmd[@]}" > "$log_dir/second.log" 2>&1
echo "second run exit code: $?"
grep -E "resuming from|written in|run stats" "$log_dir/first.log" "$log_dir/second.log"
python3 run_generation.py --model_type=gpt2 --model_name_or_path="$run_dir" --prompt "ROMEO:" --length 40 --fp16 \
  > "$log_dir/generation.log" 2>&1
echo "generation exit code: $?"; tail -5 "$log_dir/generation.log"

#!/usr/bin/env bash
# Resume across GPU counts, GPT-2 XL shapes (random weights, no download), 16 sequences per optimizer step in every
# run, on WIDE GPUs (default 2) and NARROW (default 1): micro-batch 16/WIDE, accumulation 1 on WIDE and WIDE/NARROW
# on NARROW (WIDE=4 NARROW=2 on a 4-GPU machine: 4 x 1 on 4 GPUs, 4 x 2 on 2).
# MODE=deepspeed (default: fp16, the shipped ds_config.json, whose ZeRO optimizer state is converted to DeepSpeed's
# universal format for the other count) or MODE=bf16 (the bf16 mode: no DeepSpeed, DDP on several GPUs, every
# process holding the whole optimizer state). The four runs, at the default counts:
#   A  2 GPUs x 8 x 1 accumulation, steps 1-20, checkpoint at 10          (the uninterrupted WIDE run)
#   B  1 GPU  x 8 x 2, resumes A's checkpoint-10 and runs to 20           (WIDE -> NARROW)
#   C  1 GPU  x 8 x 2, steps 1-20, checkpoint at 10                       (the uninterrupted NARROW run)
#   D  2 GPUs x 8 x 1, resumes C's checkpoint-10 and runs to 20           (NARROW -> WIDE)
# then export_model.py on D's final checkpoint, and a table of B against A and D against C.
#   bash bench/gpu_resume_across_gpus.sh RUN_DIR LOG_DIR [N_LAYER]
# PAIRS="AB" or PAIRS="CD" runs one half (e.g. to stay under a 10-minute limit per command); default both.
# Dropout is off so that the runs differ only by arithmetic order (its masks differ between layouts). Disk: about
# 90 GB at the peak for 48 layers (24 GB a checkpoint, 19 GB a universal conversion, 37 GB while it runs, 6 GB the
# export); checkpoints no longer needed are deleted on the way. N_LAYER=12 makes a quick run of the same path.
set -uo pipefail
run_dir=${1:?usage: gpu_resume_across_gpus.sh RUN_DIR LOG_DIR [N_LAYER]}
log_dir=${2:?}
n_layer=${3:-48}
pairs=${PAIRS:-AB CD}
wide=${WIDE:-2} narrow=${NARROW:-1}
if (( 16 % wide || wide % narrow )); then
  echo "WIDE=$wide NARROW=$narrow: WIDE must divide 16 and NARROW divide WIDE" >&2; exit 2
fi
micro=$(( 16 / wide )) accumulation=$(( wide / narrow ))
case ${MODE:-deepspeed} in
  deepspeed) engine=(--deepspeed ds_config.json --fp16) ;;
  bf16) engine=(--bf16 --dtype bfloat16 --optim adamw_torch_8bit --optim_args bf16_stochastic_round=True --chunked_loss) ;;
  *) echo "MODE=${MODE}: deepspeed or bf16" >&2; exit 2 ;;
esac
mkdir -p "$run_dir" "$log_dir"
tokenizer=${TOKENIZER_DIR:-/tmp/clm-tokenizer}
[ -f train.csv ] || python3 texttocsv.py
[ -f "$tokenizer/tokenizer.json" ] ||
  python3 tools/make_offline_model.py --text train.txt --out "$tokenizer" --vocab_size 8000

no_dropout="resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"
run() {  # run NAME GPUS MICRO ACCUMULATION [flags...]
  local name=$1 gpus=$2 micro=$3 accumulation=$4
  shift 4
  deepspeed --num_gpus="$gpus" run_clm.py "${engine[@]}" \
    --model_type gpt2 --tokenizer_name "$tokenizer" \
    --config_overrides "n_embd=1600,n_layer=$n_layer,n_head=25,n_positions=1024,vocab_size=50257,$no_dropout" \
    --train_file train.csv --validation_file validation.csv --do_train --do_eval \
    --output_dir "$run_dir/$name" --max_steps 20 --save_steps 10 --logging_steps 1 --seed 1 --report_to none \
    --per_device_train_batch_size "$micro" --gradient_accumulation_steps "$accumulation" "$@" \
    > "$log_dir/$name.log" 2>&1
  echo "$name: exit code $?"
}

if [[ " $pairs " == *" AB "* ]]; then
  run A "$wide" "$micro" 1
  rm -rf "$run_dir/A/checkpoint-20"
  run B "$narrow" "$micro" "$accumulation" --resume_from_checkpoint "$run_dir/A/checkpoint-10" --save_strategy no
  rm -rf "$run_dir/A/checkpoint-10"
fi
if [[ " $pairs " == *" CD "* ]]; then
  run C "$narrow" "$micro" "$accumulation"
  rm -rf "$run_dir/C/checkpoint-20"
  run D "$wide" "$micro" 1 --resume_from_checkpoint "$run_dir/C/checkpoint-10"
  rm -rf "$run_dir/C/checkpoint-10"
  python3 export_model.py "$run_dir/D/checkpoint-20" "$run_dir/D-fp32" > "$log_dir/export.log" 2>&1
  echo "export: exit code $?"; tail -1 "$log_dir/export.log"
  python3 run_generation.py --model_name_or_path "$run_dir/D-fp32" --prompt "ROMEO:" --length 20 --fp16 \
    > "$log_dir/generation.log" 2>&1
  echo "generation: exit code $?"
fi
grep -hE "^ *batch:|resuming from|converting|converted in|sequences per optimizer step; this run|run stats" \
  "$log_dir"/[ABCD].log

python3 - "$run_dir" <<'EOF'
import json, sys
def history(name):
    with open(f"{sys.argv[1]}/{name}/trainer_state.json") as f:
        entries = json.load(f)["log_history"]
    return {k: {e["step"]: e[k] for e in entries if k in e} for k in ("loss", "grad_norm")}
import os
runs = {name: history(name) for name in "ABCD" if os.path.isfile(f"{sys.argv[1]}/{name}/trainer_state.json")}
for resumed, reference in [pair for pair in (("B", "A"), ("D", "C")) if set(pair) <= set(runs)]:
    print(f"{resumed} (resumed on the other count) against {reference} (uninterrupted), steps 11-20:")
    for key in ("loss", "grad_norm"):
        ref, got = runs[reference][key], runs[resumed][key]
        diffs = [abs(got[s] - ref[s]) for s in ref if s > 10 and s in got]
        print(f"  {key}: {len([s for s in got if s > 10])} steps logged, max |difference| {max(diffs):.3g}; "
              f"{reference} {[round(ref[s], 4) for s in sorted(ref) if s > 10]}")
    # On 1 and 2 GPUs the last evaluation batch is padded differently: the 4th decimal moves (docs/multi-gpu.md).
    final = {name: json.load(open(f"{sys.argv[1]}/{name}/eval_results.json"))["eval_loss"]
             for name in (resumed, reference)}
    print(f"  final eval_loss {final[resumed]} against {final[reference]}")
EOF

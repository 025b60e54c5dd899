#!/usr/bin/env python
"""Fine-tune a causal language model (GPT-2 XL on one 16 GB GPU, by default through DeepSpeed).

    deepspeed --num_gpus=1 run_clm.py --deepspeed ds_config.json --model_name_or_path gpt2-xl \
        --train_file train.csv --validation_file validation.csv --do_train --do_eval --fp16 \
        --output_dir finetuned --per_device_train_batch_size 8 --gradient_accumulation_steps 2

Flags: `python run_clm.py --help`, or pass one .json file of them. Rerunning the same command resumes
from the newest checkpoint in --output_dir; --overwrite_output_dir starts again from step 0.
"""

import math
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clmkit/ beside this file, wherever it is run from

# Grow CUDA memory segments instead of caching fixed blocks: less fragmentation, so more of a 16 GB card is usable
# (set before torch is imported; a value the user set wins).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from clmkit.errors import UsageError, first_process, run_cli  # noqa: E402
from clmkit.stats import apply_gpu_memory_cap  # noqa: E402


def main(argv=None):
    apply_gpu_memory_cap()  # before anything touches the GPU
    model_args, data_args, training_args = parse_arguments(argv)
    config, tokenizer, block_size, plan = check_inputs(model_args, data_args, training_args)
    if training_args.plan:  # --plan: the whole plan, nothing loaded
        if first_process():
            print(plan.report(), flush=True)
        return
    if training_args.do_train and already_finished(training_args):  # a rerun of a finished command
        leave_process_group(training_args)
        return
    train_set, eval_set = load_data(data_args, model_args, training_args, tokenizer, block_size)
    model = load_model(model_args, config, tokenizer, training_args)
    trainer = build_trainer(model, tokenizer, training_args, block_size, train_set, eval_set)
    print_plan(model, config, training_args, block_size, train_set, eval_set, trainer)
    if training_args.do_train:
        train(trainer, training_args, train_set)
    if training_args.do_eval:
        evaluate(trainer, eval_set)
    leave_process_group(training_args)


def parse_arguments(argv):
    from clmkit.args import parse_args

    model_args, data_args, training_args = parse_args(argv)
    if not (training_args.do_train or training_args.do_eval):
        raise UsageError("nothing to do: add --do_train and/or --do_eval")
    return model_args, data_args, training_args


def check_inputs(model_args, data_args, training_args):
    """Everything a user can get wrong, checked before the model is loaded; every problem reported at once.

    Data files, --output_dir and its free disk, the DeepSpeed config against the flags, --fp16/--bf16 against
    this machine, the model config and tokenizer (not the weights), --block_size, and the memory plan (clmkit/plan.py:
    host RAM or disk that clearly cannot hold the run stops it here). Whether the text fills enough blocks is known
    only once it is tokenized: load_data reports that, still before the model loads."""
    from clmkit import checks
    from clmkit.errors import raise_if_any

    problems, config, tokenizer, block_size, plan = checks.find_problems(model_args, data_args, training_args)
    raise_if_any(problems)  # includes host RAM or disk clearly too small for the plan
    resolve_warmup(training_args)
    if plan is not None and training_args.do_train and not training_args.plan and first_process():
        print(plan.summary(), flush=True)
    return config, tokenizer, block_size, plan


def resolve_warmup(training_args):
    """DeepSpeed's warmup schedulers refuse 0 warmup steps, which is what 'auto' gives without --warmup_steps."""
    from clmkit.checks import read_deepspeed_config

    ds_config = read_deepspeed_config(training_args.deepspeed)
    scheduler_params = (ds_config or {}).get("scheduler", {}).get("params", {})
    if scheduler_params.get("warmup_num_steps") == "auto" and training_args.warmup_steps == 0:
        # DeepSpeed warms up over at least 2 steps whatever it is given; 1 asks for exactly that minimum.
        training_args.warmup_steps = 1
        if first_process():
            print("notice: no --warmup_steps given; the DeepSpeed scheduler warms up over its minimum of 2 steps")


def already_finished(training_args):
    from clmkit.checkpoints import finished_at

    step = finished_at(training_args)
    if step is not None and first_process():
        print(f"already finished at step {step}: the model and results in {training_args.output_dir} are left as "
              "they are; raise --max_steps or --num_train_epochs to train on, or add --overwrite_output_dir to "
              "start again", flush=True)
    return step is not None


def load_data(data_args, model_args, training_args, tokenizer, block_size):
    """Read, tokenize and cut the text once (on each node): the first process does it and fills the datasets cache,
    the others then read that cache."""
    from clmkit.data import load_raw_texts, make_sequences, split_sequences, tokenize_texts

    with training_args.main_process_first(desc="reading the text files"):
        raw, column = load_raw_texts(data_args, cache_dir=model_args.cache_dir, training=training_args.do_train)
    tokens = tokenize_texts(raw, column, tokenizer, data_args, training_args)
    sequences = make_sequences(tokens, tokenizer, block_size, data_args, training_args)
    # too little text: its token count, a fix
    return split_sequences(sequences, data_args, block_size, tokens, evaluating=training_args.do_eval)


def load_model(model_args, config, tokenizer, training_args):
    from transformers import set_seed

    from clmkit.cpucomm import start_deepspeed_comm_on_cpu
    from clmkit.loading import load_model_for_training
    from clmkit.resilience import clear_stale_build_locks

    if training_args.deepspeed:
        clear_stale_build_locks()  # else a run killed while DeepSpeed built its CPU Adam blocks every rerun
    start_deepspeed_comm_on_cpu(training_args)  # ZeRO-3 partitions the model as it is built
    set_seed(training_args.seed)  # a model built from a config draws its weights now: the same --seed, the same init
    return load_model_for_training(model_args, config, tokenizer, training_args)


def build_trainer(model, tokenizer, training_args, block_size, train_set, eval_set):
    from transformers import default_data_collator

    from clmkit.checkpoints import RunShape
    from clmkit.cpucomm import ReleaseSharedMemory
    from clmkit.plotting import LossPlotCallback
    from clmkit.resilience import ClmTrainer, StopOnSignal, callbacks_for
    from clmkit.stats import RunStatsCallback

    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size * block_size)
    trainer = ClmTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set if training_args.do_train else None,
        eval_dataset=eval_set if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[LossPlotCallback(training_args.output_dir), StopOnSignal(),
                   RunStatsCallback(training_args.output_dir, tokens_per_step),
                   RunShape(training_args.world_size, training_args.per_device_train_batch_size,
                            training_args.gradient_accumulation_steps), ReleaseSharedMemory()],
    )
    for callback in callbacks_for(trainer):
        trainer.add_callback(callback)
    return trainer


def print_plan(model, config, training_args, block_size, train_set, eval_set, trainer):
    from clmkit.plan import describe_run

    if trainer.is_world_process_zero():
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3 partitions them
        n_train = len(train_set) if training_args.do_train else None
        print(describe_run(n_params, config, training_args, block_size, training_args.world_size, n_train,
                           len(eval_set) if eval_set is not None else 0, next(model.parameters()).dtype),
              flush=True)


def train(trainer, training_args, train_set):
    """Train from step 0 or from the newest complete checkpoint (written by any number of GPUs); on SIGTERM/SIGINT,
    checkpoint and stop."""
    from clmkit.checkpoints import delete_replaced_runs, prepare_resume, resume_point
    from clmkit.resilience import StopOnSignal, save_final_model

    checkpoint = resume_point(training_args)
    prepare_resume(trainer, checkpoint)  # another GPU count: DeepSpeed's universal checkpoint
    result = trainer.train(resume_from_checkpoint=checkpoint)
    stop = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
    if stop.received:
        if trainer.is_world_process_zero():
            print(f"stopped by {signal.Signals(stop.received).name} after step {trainer.state.global_step}: "
                  f"checkpoint saved in {training_args.output_dir}/checkpoint-{trainer.state.global_step}; "
                  "rerun the same command to continue", flush=True)
        leave_process_group(training_args)
        sys.exit(128 + stop.received)
    save_final_model(trainer, training_args.output_dir)
    metrics = dict(result.metrics, train_samples=len(train_set))
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        delete_replaced_runs(training_args.output_dir)  # announced when a fresh start set them aside


def evaluate(trainer, eval_set):
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(eval_set)
    metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 700 else float("inf")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)


def leave_process_group(training_args):
    """Close the process group of a multi-process run before Python exits: left to interpreter shutdown, gloo's
    threads can be torn down unjoined, and a rank that finished everything aborts (seen: 2 runs in 10 on 2 CPUs).
    DeepSpeed on the CPU also leaves a shared-memory file per process unless told (clmkit/cpucomm.py)."""
    import torch.distributed as dist

    from clmkit.cpucomm import release_shared_memory

    release_shared_memory(training_args)
    if dist.is_available() and dist.is_initialized():
        # All ranks here before any tears down: rank 0 hosts the rendezvous store the others still talk to
        # (an evaluation-only run on 2 CPU processes aborted once in CI, "terminate called", after its results).
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)

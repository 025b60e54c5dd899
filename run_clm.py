#!/usr/bin/env python
"""Fine-tune a causal language model (GPT-2 XL on one 16 GB GPU, by default through DeepSpeed).

    deepspeed --num_gpus=1 run_clm.py --deepspeed ds_config.json --model_name_or_path gpt2-xl \
        --train_file train.csv --validation_file validation.csv --do_train --do_eval --fp16 \
        --output_dir finetuned --per_device_train_batch_size 8 --gradient_accumulation_steps 2

Flags: `python run_clm.py --help`, or pass one .json file of them. Rerunning the same command resumes
from the newest checkpoint in --output_dir; --overwrite_output_dir starts again from step 0.
"""

import copy
import dataclasses
import math
import os
import signal
import sys
from collections.abc import Sized

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clmkit/ beside this file, wherever it is run from

# Grow CUDA memory segments instead of caching fixed blocks: less fragmentation, so more of a 16 GB card is usable
# (set before torch is imported; a value the user set wins).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from clmkit import checks  # noqa: E402  (first: clmkit quiets the libraries' known-harmless messages)
from clmkit.args import deepspeed_config, parse_args, with_flags  # noqa: E402
from clmkit.buildlocks import announce_cpu_adam_build, clear_stale_build_locks  # noqa: E402
from clmkit.checkpoints import (delete_replaced_runs, finished_at, prepare_resume, resume_point,  # noqa: E402
                                what_a_rerun_finds, written_with)  # noqa: E402
from clmkit.cpucomm import prepare_deepspeed_on_cpu, release_shared_memory  # noqa: E402
from clmkit.data import (load_raw_texts, make_sequences, split_sequences, streamed_train_set,  # noqa: E402
                         tokenize_texts)
from clmkit.errors import UsageError, raise_if_any, run_cli  # noqa: E402
from clmkit.loading import load_model_for_training, speed_switches  # noqa: E402
from clmkit.machine import (TreeMemorySampler, apply_gpu_memory_cap, first_process, repeat_after_launcher,  # noqa: E402
                            settle_cpu_threads)
from clmkit.plan import make_plan  # noqa: E402
from clmkit.plan_report import built_config, report, startup_summary, stop_problems  # noqa: E402
from clmkit.progress import settle_bars  # noqa: E402
from clmkit.quiet import settle_log_level  # noqa: E402
from clmkit.trainer import (add_host_peak_through_save, build_trainer, describe, report_run_stats,  # noqa: E402
                            save_final_model, stop_signal)

import torch.distributed as dist  # noqa: E402
from transformers import set_seed  # noqa: E402


def main(argv=None):
    apply_gpu_memory_cap()  # before anything touches the GPU
    settle_cpu_threads()  # before the flags are parsed: TrainingArguments starts the process group
    model_args, data_args, training_args, refused = parse_arguments(argv)
    settle_log_level(training_args)  # --log_level from the start, the model's loading included
    model_args, data_args, training_args, config, tokenizer, block_size, plan = check_inputs(
        model_args, data_args, training_args, refused)
    if training_args.plan:  # --plan: the whole plan, nothing loaded
        show(report(plan))
        return
    if training_args.do_train and already_finished(training_args):  # a rerun of a finished command
        leave_process_group(training_args)
        return
    host_memory = TreeMemorySampler()  # run_stats.json's host RAM peak, loading included
    settle_bars()  # in a log file, a line per phase instead of the libraries' bars
    train_set, eval_set, notes = load_data(data_args, model_args, training_args, tokenizer, block_size)
    streamed = data_args.streaming and training_args.do_train
    show(startup_summary(plan, training_args, None if streamed or not training_args.do_train else len(train_set),
                         len(eval_set) if eval_set is not None else 0, notes,
                         speed_switches(config, model_args, training_args), streamed=streamed))
    if not model_args.model_name_or_path:
        show(built_config(config))
    model = load_model(model_args, config, tokenizer, training_args)
    trainer = build_trainer(model, tokenizer, training_args, block_size, train_set, eval_set, host_memory)
    if training_args.do_train:
        train(trainer, training_args, train_set)
    if training_args.do_eval:
        evaluate(trainer, eval_set)
    if training_args.do_train:
        write_model_card(trainer, model_args, data_args)
    leave_process_group(training_args)


def parse_arguments(argv):
    try:
        model_args, data_args, training_args, refused = parse_args(argv, command=True)
    except dist.DistNetworkError as err:  # TrainingArguments starts the process group of a launched run
        if "EADDRINUSE" not in str(err):
            raise
        port = os.environ.get("MASTER_PORT", "29500")
        raise UsageError(f"port {port}, where the launcher's processes meet, is in use (another run on this "
                         f"machine?); give the launcher a free one: deepspeed --master_port {int(port) + 1} "
                         f"--num_gpus=N run_clm.py ... (torchrun takes --master_port too)") from None
    if not (training_args.do_train or training_args.do_eval):
        raise UsageError("nothing to do: add --do_train and/or --do_eval")
    return model_args, data_args, training_args, refused


def check_inputs(model_args, data_args, training_args, refused):
    """Everything a user can get wrong, checked before the model is loaded; every problem reported at once.

    Data files, --output_dir, the DeepSpeed config against the flags, --fp16/--bf16 against this machine, the model
    config and tokenizer (not the weights), --block_size, the mode to train in (the plan settles it and the run takes
    on its flags) and the memory plan: host RAM or disk that clearly cannot hold the run stops it here. Whether the
    text fills enough blocks is known only once it is tokenized: load_data reports that, still before the model
    loads. (model_args, data_args, training_args, config, tokenizer, block_size, plan)."""
    ds_config = copy.deepcopy(deepspeed_config(training_args))
    problems, config, tokenizer, block_size = checks.find_problems(model_args, data_args, training_args, ds_config)
    problems = refused + problems
    plan = None
    if config is not None:
        resumed = checks.attempt(problems, written_with, training_args) if training_args.do_train else None
        plan = checks.attempt(problems, make_plan, config, tokenizer, model_args, training_args,
                              block_size, ds_config, resumed)
    if plan is not None:
        problems += plan.problems
    if plan is not None and not problems:  # the run as its mode trains it: the mode's flags taken on
        model_args, data_args, training_args = with_flags(training_args, plan.flags, command=True)
        ds_config = copy.deepcopy(deepspeed_config(training_args))
        problems += checks.mode_problems(model_args, training_args, ds_config)
        plan = checks.attempt(problems, make_plan, config, tokenizer, model_args, training_args,
                              block_size, ds_config, settled=plan)
    if plan is not None and training_args.do_train and not training_args.plan:
        problems += stop_problems(plan)  # --plan shows them as its verdict instead
    raise_if_any(problems)
    return model_args, data_args, training_args, config, tokenizer, block_size, plan


def show(text):
    if first_process():
        print(text, flush=True)


def already_finished(training_args):
    step = finished_at(training_args)
    if step is not None:
        show(f"already finished at step {step}: the model and results in {training_args.output_dir} are left as "
             "they are; raise --max_steps or --num_train_epochs to train on, or add --overwrite_output_dir to start "
             "again")
    return step is not None


def load_data(data_args, model_args, training_args, tokenizer, block_size):
    """Read, tokenize and cut the text once (on each node): the first process does it and fills the datasets cache,
    the others then read that cache. Too little text is reported with its token count and a fix.
    (train set, eval set, a line on the examples of each prompt/completion file)."""
    if data_args.streaming and training_args.do_train:
        return streamed_data(data_args, model_args, training_args, tokenizer, block_size)
    with training_args.main_process_first(desc="reading the text files"):
        raw, kinds = load_raw_texts(data_args, cache_dir=model_args.cache_dir, training=training_args.do_train,
                                    evaluating=training_args.do_eval)
    tokens = tokenize_texts(raw, kinds, tokenizer, data_args, training_args)
    sequences, notes = make_sequences(tokens, kinds, tokenizer, block_size, data_args, training_args)
    train_set, eval_set = split_sequences(sequences, data_args, block_size, tokens, training_args.do_eval, kinds)
    if training_args.do_train:
        raise_if_any(checks.batch_problems(len(train_set), training_args))
    return train_set, eval_set, list(notes.values())


def streamed_data(data_args, model_args, training_args, tokenizer, block_size):
    """--streaming: the training sequences as a stream (made as training reads them); the evaluation set, if any,
    read whole from --validation_file or the dataset's validation split."""
    train_set = streamed_train_set(data_args, tokenizer, block_size, cache_dir=model_args.cache_dir)
    if not training_args.do_eval:
        return train_set, None, []
    evaluation_only = dataclasses.replace(data_args, train_file=None, streaming=False)
    with training_args.main_process_first(desc="reading the evaluation text"):
        raw, kinds = load_raw_texts(evaluation_only, cache_dir=model_args.cache_dir, training=False,
                                    validation_only=True)
    tokens = tokenize_texts(raw, kinds, tokenizer, evaluation_only, training_args)
    sequences, notes = make_sequences(tokens, kinds, tokenizer, block_size, evaluation_only, training_args)
    _, eval_set = split_sequences(sequences, evaluation_only, block_size, tokens, True, kinds)
    return train_set, eval_set, list(notes.values())


def load_model(model_args, config, tokenizer, training_args):
    if training_args.deepspeed:
        clear_stale_build_locks()  # else a run killed while DeepSpeed built its CPU Adam blocks every rerun
        announce_cpu_adam_build(deepspeed_config(training_args))
    prepare_deepspeed_on_cpu(training_args)  # before the model: ZeRO-3 partitions it as it is built
    set_seed(training_args.seed)  # a model built from a config draws its weights now: the same --seed, the same init
    return load_model_for_training(model_args, config, tokenizer, training_args)


def train(trainer, training_args, train_set):
    """Train from step 0 or from the newest complete checkpoint (written by any number of GPUs); on SIGTERM/SIGINT,
    checkpoint and stop."""
    checkpoint = resume_point(training_args)
    prepare_resume(trainer, checkpoint)  # another GPU count: DeepSpeed's universal checkpoint
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except KeyboardInterrupt:  # a second Ctrl-C
        if first_process():
            print(f"\nstopped at once by a second Ctrl-C; {what_a_rerun_finds(training_args.output_dir)}",
                  file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    report_run_stats(trainer)
    received = stop_signal(trainer)
    if received:
        step = trainer.state.global_step
        show(f"stopped by {describe(received)} after step {step}: checkpoint saved in "
             f"{training_args.output_dir}/checkpoint-{step}; rerun the same command to continue")
        leave_process_group(training_args)
        sys.exit(128 + received)
    save_final_model(trainer, training_args.output_dir)
    add_host_peak_through_save(trainer)
    if isinstance(train_set, Sized):
        samples = len(train_set)
    else:  # a stream: the sequences this run's steps took from it
        samples = (trainer.state.global_step * training_args.per_device_train_batch_size
                   * training_args.gradient_accumulation_steps * training_args.world_size)
    metrics = dict(result.metrics, train_samples=samples)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        delete_replaced_runs(training_args.output_dir)  # announced when a fresh start set them aside


def evaluate(trainer, eval_set):
    """The eval loss and perplexity of the final model; an evaluation the Trainer just made at the last step
    (--eval_strategy) is that already."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), {})
    if trainer.args.do_train and last.get("step") == trainer.state.global_step:
        metrics = {key: value for key, value in last.items() if key != "step"}
    else:
        metrics = trainer.evaluate()
    if not trainer.args.do_train:
        metrics.pop("epoch", None)  # nothing was trained here: no epoch to speak of
    metrics["eval_samples"] = len(eval_set)
    metrics["perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 700 else float("inf")
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)


def write_model_card(trainer, model_args, data_args):
    """README.md in --output_dir, as upstream run_clm.py writes it: what the model was fine-tuned from and on, its
    hyperparameters and results."""
    card = {"tasks": "text-generation"}
    if model_args.model_name_or_path:
        card["finetuned_from"] = model_args.model_name_or_path
    if data_args.dataset_name:
        card["dataset_tags"] = data_args.dataset_name
        card["dataset"] = " ".join(filter(None, (data_args.dataset_name, data_args.dataset_config_name)))
    trainer.create_model_card(**card)


def leave_process_group(training_args):
    """Close the process group of a multi-process run before Python exits: left to interpreter shutdown, gloo's
    threads can be torn down unjoined, and a rank that finished everything aborts. DeepSpeed on the CPU also leaves a
    shared-memory file per process unless told (clmkit/cpucomm.py)."""
    release_shared_memory(training_args)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank here before any tears down: rank 0 hosts the store the others still talk to
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main, after_error=repeat_after_launcher)

"""Which checkpoint a run continues from: rerunning the same command resumes, also on another number of GPUs."""

import argparse
import functools
import json
import os
import re
import shutil
import time

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .errors import UsageError
from .machine import first_process, gib
from .modes import NAMES as MODE_NAMES
from .saving import weight_files

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# Files a finished run leaves at the top of output_dir, beside its checkpoint-<step> folders.
FINAL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
               "chat_template.jinja", "training_args.bin", "trainer_state.json", "train_results.json",
               "eval_results.json", "all_results.json", "loss.png", "run_stats.json")


@functools.cache
def allow_loading_onto_indexed_cpu():
    """Let torch.load map storages to "cpu:<n>". The Trainer of several processes loads the optimizer state onto each
    process's device, and on the CPU that is such a device, which torch's own CPU deserializer refuses ("cpu" only):
    a checkpoint of the bf16 mode could not resume on several CPU processes. A CPU storage belongs there as it is."""
    torch.serialization.register_package(30, lambda storage: None,
                                         lambda storage, location: storage if location.startswith("cpu:") else None)


def is_complete(path: str) -> bool:
    """A checkpoint the Trainer finished writing: its trainer_state.json is written last."""
    return os.path.isfile(os.path.join(path, "trainer_state.json"))


def trainer_state(checkpoint):
    """The checkpoint's trainer_state.json: steps, the run's length, the callbacks' records."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)


def weights_only(checkpoint):
    """A checkpoint with no optimizer state (--save_only_model): no DeepSpeed folder and no optimizer.pt."""
    return deepspeed_tag(checkpoint) is None and not os.path.isfile(os.path.join(checkpoint, "optimizer.pt"))


def checkpoints_in(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint folder in output_dir, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_DIR.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def newest_complete_checkpoint(output_dir: str):
    complete = [path for _, path in checkpoints_in(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(output_dir):
    """A checkpoint without trainer_state.json was cut short by a crash: it holds nothing to resume from,
    and left in place it would count against --save_total_limit."""
    for _, path in checkpoints_in(output_dir):
        if not is_complete(path):
            print(f"notice: removing {path}: it was being written when the last run stopped", flush=True)
            shutil.rmtree(path, ignore_errors=True)


def set_aside_previous_run(output_dir):
    """For a fresh start over an earlier run: move its checkpoints and model into a folder that is deleted
    only once the new run finishes, so a failed fresh run loses nothing."""
    previous = [path for _, path in checkpoints_in(output_dir)]
    previous += [os.path.join(output_dir, name) for name in sorted(set(FINAL_FILES) | set(weight_files(output_dir)))
                 if os.path.isfile(os.path.join(output_dir, name))]
    if not previous:
        return
    aside = os.path.join(output_dir, time.strftime("previous-run-%Y%m%d-%H%M%S"))
    os.makedirs(aside)
    for path in previous:
        os.replace(path, os.path.join(aside, os.path.basename(path)))
    print(f"notice: starting from step 0 (--overwrite_output_dir): the earlier run's checkpoints and model "
          f"moved to {aside}; they are deleted when this run finishes", flush=True)


def resume_point(training_args):
    """The checkpoint to resume from, or None to start at step 0; says which on one line."""
    output_dir = training_args.output_dir
    if training_args.resume_from_checkpoint:  # checked to be a complete checkpoint with the other inputs
        path = training_args.resume_from_checkpoint
        if first_process():
            print(f"resuming from {path} (--resume_from_checkpoint)", flush=True)
        return path
    with training_args.main_process_first(desc="tidying checkpoints"):
        if training_args.should_save:  # one process touches the folder
            remove_incomplete_checkpoints(output_dir)
            if training_args.overwrite_output_dir:
                set_aside_previous_run(output_dir)
        newest = None if training_args.overwrite_output_dir else newest_complete_checkpoint(output_dir)
    if newest and first_process():
        print(f"resuming from {newest} (step {step_of(newest)}); --overwrite_output_dir starts from step 0 "
              "instead", flush=True)
    return newest


def what_a_rerun_finds(output_dir):
    """In words: what rerunning the command does with output_dir as a stop at once left it."""
    cut_short = [path for _, path in checkpoints_in(output_dir) if not is_complete(path)]
    newest = newest_complete_checkpoint(output_dir)
    goes_on = f"resumes from {newest}" if newest else "starts from step 0 (no complete checkpoint)"
    if cut_short:
        return (f"{', '.join(cut_short)} was being written and is incomplete: rerunning the same command removes it "
                f"and {goes_on}")
    return f"rerunning the same command {goes_on}"


def finished_at(training_args):
    """The step a finished run ended at, when rerunning its command has nothing left to do: train_results.json is
    written (after the final model) and the newest checkpoint reached the run's last step, with the same
    --max_steps or --num_train_epochs. None when there is training left. (The Trainer, resumed at its last step,
    would train one step past it and overwrite the results.)"""
    if training_args.resume_from_checkpoint or training_args.overwrite_output_dir:
        return None
    if not os.path.isfile(os.path.join(training_args.output_dir, "train_results.json")):
        return None
    checkpoint = newest_complete_checkpoint(training_args.output_dir)
    if checkpoint is None:
        return None
    state = trainer_state(checkpoint)
    if training_args.max_steps > 0:
        target = training_args.max_steps
    elif state.get("num_train_epochs") == training_args.num_train_epochs:
        target = state.get("max_steps", 0)
    else:
        return None  # another number of epochs: the Trainer works out the steps
    step = state.get("global_step", 0)
    return step if 0 < target <= step else None


def delete_replaced_runs(output_dir):
    """Once a fresh run has finished, the runs it replaced (set aside at its start) can go."""
    for name in os.listdir(output_dir):
        if name.startswith("previous-run-"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def step_of(checkpoint):
    return int(CHECKPOINT_DIR.match(os.path.basename(checkpoint)).group(1))


# ---------------------------------------------------------------- resuming on another number of GPUs


class RunShape(TrainerCallback, ExportableState):
    """Records in every checkpoint's trainer_state.json (written last, so never without the rest) how many processes
    wrote it and the batch each one took: what a resume on another number of GPUs is compared against."""

    def __init__(self, processes=1, micro_batch=1, accumulation=1):
        self.processes, self.micro_batch, self.accumulation = processes, micro_batch, accumulation

    def state(self):
        return {"args": {"processes": self.processes, "micro_batch": self.micro_batch,
                         "accumulation": self.accumulation}, "attributes": {}}


class RunFlags(TrainerCallback, ExportableState):
    """Records in every checkpoint the optimizer and schedule flags it was trained with, so that a resume with other
    values can say which ones go on."""

    def __init__(self, training_args=None):
        values = {name: getattr(training_args, name) for name in RESUMED_FLAGS} if training_args else {}
        self.values = {name: getattr(value, "value", value) for name, value in values.items()}  # enums as text
        if training_args is not None:
            self.values["mode"] = getattr(training_args, "mode", None)  # a rerun goes on in it (written_with)

    def state(self):
        return {"args": {"values": self.values}, "attributes": {}}


# For each flag: which value a resumed run goes on with, without DeepSpeed and with it. The optimizer's state holds
# its hyperparameters and is loaded from the checkpoint; the Trainer's schedule, the clipping and DeepSpeed's
# scheduler are built from this run's flags and continue at the checkpoint's step.
CHECKPOINT, THIS_RUN = "the checkpoint's", "this run's"
RESUMED_FLAGS = {
    "learning_rate": (CHECKPOINT, THIS_RUN),
    "weight_decay": (CHECKPOINT, CHECKPOINT),
    "adam_beta1": (CHECKPOINT, CHECKPOINT),
    "adam_beta2": (CHECKPOINT, CHECKPOINT),
    "adam_epsilon": (CHECKPOINT, CHECKPOINT),
    "warmup_steps": (THIS_RUN, THIS_RUN),
    "lr_scheduler_type": (THIS_RUN, THIS_RUN),
    "max_grad_norm": (THIS_RUN, THIS_RUN),
}


def changed_flag_notices(checkpoint, training_args):
    """One notice for each flag of RESUMED_FLAGS whose value differs from the one the checkpoint was trained with."""
    saved = (saved_record(checkpoint, RunFlags) or {}).get("values", {})
    notices = []
    for name, winners in RESUMED_FLAGS.items():
        now = getattr(training_args, name)
        now = getattr(now, "value", now)  # an enum's text, as it was recorded
        if name not in saved or saved[name] == now:
            continue
        winner = winners[1 if training_args.deepspeed else 0]
        goes_on = saved[name] if winner == CHECKPOINT else now
        why = "it is part of the optimizer state" if winner == CHECKPOINT else "it is read from the flags"
        notices.append(f"notice: --{name} is {now} here and {saved[name]} in {checkpoint}: {winner} value, {goes_on}, "
                       f"is used from here on ({why}); --overwrite_output_dir starts again from step 0 with {now}")
    return notices


def written_with(training_args):
    """What the checkpoint a rerun goes on from was written with: {"path", "mode" (None for a checkpoint of a release
    without modes), "split" ((micro-batch, accumulation) or None)}; None when the run starts from step 0."""
    path = training_args.resume_from_checkpoint
    if not path and not training_args.overwrite_output_dir:
        path = newest_complete_checkpoint(training_args.output_dir)
    if not path or not is_complete(path):
        return None
    shape = saved_record(path, RunShape)
    mode = (saved_record(path, RunFlags) or {}).get("values", {}).get("mode")
    return {"path": path, "mode": mode if mode in MODE_NAMES else None,
            "split": (shape["micro_batch"], shape["accumulation"]) if shape else None}


def extension_notice(checkpoint, training_args):
    """A rerun with a higher --max_steps than the run its checkpoint finished: its new steps go on along the learning
    rate schedule the Trainer builds for the new length, at the checkpoint's step, which is near its end. One notice:
    the rate they get, and how to train them at a fresh schedule instead. '' otherwise."""
    state = trainer_state(checkpoint)
    done, target, before = state.get("global_step", 0), training_args.max_steps, state.get("max_steps", 0)
    if target <= 0 or not 0 < before <= done < target:
        return ""
    # The first new step trains at the rate the checkpoint's optimizer ended with (its schedule's last); the schedule
    # built for the new length sets each later one.
    first = learning_rate_at(training_args, done, before)
    rest = "" if target - done == 1 else (f", then {learning_rate_at(training_args, done + 1, target):.3g} falling to "
                                          f"{learning_rate_at(training_args, target - 1, target):.3g}")
    schedule = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    return (f"notice: {checkpoint} ended a run of {before} steps; its {target - done} new steps ({done + 1}-{target}) go "
            f"on at the end of its learning-rate schedule: {first:.3g} (where the {before}-step schedule ended){rest} "
            f"(--learning_rate {training_args.learning_rate:g}, {schedule}); "
            f"to train them at the full schedule instead, start a new run from its weights: --model_name_or_path "
            f"{training_args.output_dir} --output_dir ANOTHER_FOLDER --max_steps {target - done}")


def learning_rate_at(training_args, step, total):
    """The learning rate the Trainer's schedule (--lr_scheduler_type, --warmup_steps) gives at `step` of `total`."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training_args.learning_rate)
    warmup = training_args.warmup_steps
    warmup = int(warmup * total) if 0 < warmup < 1 else int(warmup)
    scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total, scheduler_specific_kwargs=training_args.lr_scheduler_kwargs)
    return training_args.learning_rate * scheduler.lr_lambdas[0](step) if hasattr(scheduler, "lr_lambdas") else \
        scheduler.get_last_lr()[0]


def saved_record(checkpoint, callback):
    """What a callback of the kind `callback` (an ExportableState) recorded in the checkpoint, or None."""
    saved = (trainer_state(checkpoint).get("stateful_callbacks") or {}).get(callback.__name__)
    return saved.get("args") if isinstance(saved, dict) else None


# One file of ZeRO optimizer state per data-parallel rank (DeepSpeed's naming, ZeRO-1, 2 and 3).
ZERO_OPTIMIZER_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def deepspeed_tag(checkpoint):
    """The folder inside the checkpoint that DeepSpeed wrote (named in its `latest` file), or None."""
    latest = os.path.join(checkpoint, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest, encoding="utf-8") as f:
        tag = f.read().strip()
    return tag if tag and os.path.isdir(os.path.join(checkpoint, tag)) else None


def zero_files(checkpoint, tag):
    """{data-parallel rank: path} of the ZeRO optimizer state files."""
    folder = os.path.join(checkpoint, tag)
    found = {}
    for name in os.listdir(folder):
        match = ZERO_OPTIMIZER_FILE.search(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def prepare_resume(trainer, checkpoint):
    """Before trainer.train() resumes from `checkpoint`: refuse a checkpoint this engine cannot continue, say when the
    global batch changed, and when the ZeRO optimizer state was split over another number of processes than this run
    has, have DeepSpeed convert it to its universal format (once) and load it from there."""
    if checkpoint is None:
        return
    args = trainer.args
    tag = deepspeed_tag(checkpoint)
    if weights_only(checkpoint):
        # The Trainer would go on with a fresh optimizer and learning-rate schedule (or, under DeepSpeed, fail)
        raise UsageError(f"{checkpoint}: weights only (--save_only_model), no optimizer state to resume; continue "
                         f"from its weights as a new run (--model_name_or_path {checkpoint} and another --output_dir), "
                         "or add --overwrite_output_dir to start from step 0")
    if trainer.is_deepspeed_enabled and tag is None:
        raise UsageError(f"{checkpoint}: written without DeepSpeed, so this --deepspeed run cannot continue it; drop "
                         "--deepspeed to resume it, or add --overwrite_output_dir to start from step 0")
    if not trainer.is_deepspeed_enabled and tag is not None:
        raise UsageError(f"{checkpoint}: written by DeepSpeed (its optimizer state is in {tag}/); add --deepspeed "
                         "with the config it was trained with (e.g. ds_config.json) to resume it, or "
                         "--overwrite_output_dir to start from step 0")
    shape = saved_record(checkpoint, RunShape)
    world = args.world_size
    for notice in [*changed_flag_notices(checkpoint, args), extension_notice(checkpoint, args)] \
            if first_process() else []:
        if notice:
            print(notice, flush=True)
    if shape and first_process():
        before = shape["processes"] * shape["micro_batch"] * shape["accumulation"]
        now = world * args.per_device_train_batch_size * args.gradient_accumulation_steps
        if before != now:
            print(f"notice: {checkpoint} was written by {shape['processes']} process(es) x {shape['micro_batch']} "
                  f"sequences x {shape['accumulation']} accumulation = {before} sequences per optimizer step; this run "
                  f"takes {now}. The data position and the learning-rate schedule count optimizer steps, so the rest "
                  "of the epoch is not the data the checkpoint's run would have seen; keep "
                  "--per_device_train_batch_size x --gradient_accumulation_steps x GPUs the same to continue exactly",
                  flush=True)
    if tag is None:
        return  # without DeepSpeed every process holds the whole optimizer state: any number of processes resumes
    partitions = len(zero_files(checkpoint, tag))
    if partitions in (0, world):
        return
    universal = tag + "_universal"
    if not universal_is_complete(checkpoint, universal):
        check_disk_for_conversion(checkpoint, tag, partitions, world)
        with args.main_process_first(local=False, desc="converting the checkpoint to DeepSpeed's universal format"):
            if args.process_index == 0:
                convert_to_universal(checkpoint, tag, universal, partitions, world)
    elif first_process():
        print(f"notice: {checkpoint} was written by {partitions} process(es) and this run has {world}: resuming from "
              f"its universal form {universal}/, converted earlier", flush=True)
    # DeepSpeed's engine reads this when the Trainer calls load_checkpoint: it then loads each parameter's
    # optimizer state from the universal folder named in latest_universal and partitions it for this run.
    config = trainer.accelerator.state.deepspeed_plugin.hf_ds_config.config
    config.setdefault("checkpoint", {})["load_universal"] = True


def universal_is_complete(checkpoint, universal):
    """ds_to_universal writes latest_universal after everything else."""
    latest = os.path.join(checkpoint, "latest_universal")
    if not os.path.isfile(latest):
        return False
    with open(latest, encoding="utf-8") as f:
        return f.read().strip() == universal and os.path.isdir(os.path.join(checkpoint, universal))


def check_disk_for_conversion(checkpoint, tag, partitions, world):
    """The conversion writes the optimizer state twice over (per-rank fragments, then per-parameter files) before
    deleting the fragments. Every process checks, so that all stop together rather than wait for one that stopped."""
    need = 2 * sum(os.path.getsize(path) for path in zero_files(checkpoint, tag).values())
    free = shutil.disk_usage(checkpoint).free
    if free < need:
        raise UsageError(f"{checkpoint}: written by {partitions} process(es) and this run has {world}; converting it "
                         f"to DeepSpeed's universal format needs about {gib(need)} free on its disk and {gib(free)} "
                         f"is; free some space, or resume with {partitions} GPU(s) (deepspeed --num_gpus={partitions} "
                         "...)")


def convert_to_universal(checkpoint, tag, universal, partitions, world):
    """DeepSpeed's own converter (deepspeed/checkpoint/ds_to_universal.py), one worker at a time so that a single
    rank's optimizer file is in memory at once."""
    from deepspeed.checkpoint import ds_to_universal

    target = os.path.join(checkpoint, universal)
    shutil.rmtree(target, ignore_errors=True)  # a conversion cut short
    print(f"notice: {checkpoint} was written by {partitions} process(es) and this run has {world}: converting its "
          f"ZeRO optimizer state with DeepSpeed's ds_to_universal into {target}/ (once) and resuming from that",
          flush=True)
    started = time.time()
    ds_to_universal.main(argparse.Namespace(
        input_folder=os.path.join(checkpoint, tag), output_folder=target, num_extract_workers=1,
        num_merge_workers=1, keep_temp_folder=False, strict=True,
        # Transformers' models carry no universal_checkpoint_info of their own; plain data parallelism needs none
        # beyond the version marker this adds.
        inject_missing_state=True))
    print(f"converted in {time.time() - started:.1f} s", flush=True)

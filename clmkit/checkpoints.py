"""Which checkpoint a run continues from: rerunning the same command resumes."""

import os
import re
import shutil
import time

from .errors import UsageError, first_process

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# Files a finished run leaves at the top of output_dir, beside its checkpoint-<step> folders.
FINAL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
               "chat_template.jinja", "training_args.bin", "trainer_state.json", "train_results.json",
               "eval_results.json", "all_results.json", "loss.png", "run_stats.json")


def is_complete(path: str) -> bool:
    """A checkpoint the Trainer finished writing: its trainer_state.json is written last."""
    return os.path.isfile(os.path.join(path, "trainer_state.json"))


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
    previous += [os.path.join(output_dir, name) for name in FINAL_FILES
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
    if training_args.resume_from_checkpoint:
        path = training_args.resume_from_checkpoint
        if not is_complete(path):
            raise UsageError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no trainer_state.json); "
                             f"pick another checkpoint-<step> folder or drop the flag")
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


def delete_replaced_runs(output_dir):
    """Once a fresh run has finished, the runs it replaced (set aside at its start) can go."""
    for name in os.listdir(output_dir):
        if name.startswith("previous-run-"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def step_of(checkpoint):
    return int(CHECKPOINT_DIR.match(os.path.basename(checkpoint)).group(1))

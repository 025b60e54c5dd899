"""Which checkpoint a run continues from: rerunning the same command resumes."""

import os
import re

from .errors import UsageError

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


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


def resume_point(training_args):
    """The checkpoint to resume from, or None to start at step 0; says which on one line."""
    if training_args.resume_from_checkpoint:
        path = training_args.resume_from_checkpoint
        if not is_complete(path):
            raise UsageError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no trainer_state.json)")
        print(f"resuming from {path} (--resume_from_checkpoint)", flush=True)
        return path
    newest = newest_complete_checkpoint(training_args.output_dir)
    if newest and training_args.overwrite_output_dir:
        print(f"starting from step 0 (--overwrite_output_dir): checkpoints in {training_args.output_dir} "
              "will be replaced as new ones are written", flush=True)
        return None
    if newest:
        print(f"resuming from {newest}: rerun with --overwrite_output_dir to start from step 0 instead", flush=True)
    return newest

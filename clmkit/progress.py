"""What a run shows while it works. On a terminal: the libraries' progress bars. In a log file (stderr redirected,
as under nohup or a notebook's `> log.txt`), where a bar redrawn with carriage returns and cursor moves is one
unreadable line: no bars, and one plain line per phase instead (each data pass that ran, each log of training)."""

import datetime
import os
import sys
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


def to_terminal() -> bool:
    return sys.stderr.isatty()


def settle_bars():
    """In a log file, no library draws a bar: datasets' passes, the weights' loading and saving, the Hub's."""
    if to_terminal():
        return
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def made_since(dataset, started) -> bool:
    """Whether this process made `dataset` just now, rather than reading it back from the datasets cache (where
    another process, or an earlier run, left it): its cache files were written after `started`."""
    files = [entry["filename"] for entry in dataset.cache_files]
    return not files or any(os.path.getmtime(name) >= started for name in files)


def phase_done(what, dataset, started, unit):
    """In a log file, one line for a data pass this process ran (none for one read back from the cache)."""
    if not to_terminal() and made_since(dataset, started):
        count = len(dataset)
        print(f"{what}: {count:,} {unit if count != 1 else unit[:-1]} in {time.time() - started:.1f} s", flush=True)


def log_line(state, logs, started, first_step) -> str:
    """step 40/400 (10%, 0:01:02 so far, about 0:09:18 left): loss 3.21, grad_norm 1.1, learning_rate 4.5e-05"""
    values = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                       for key, value in logs.items())
    if not state.max_steps:  # evaluating only
        return values
    step, total = state.global_step, state.max_steps
    where = f"step {step:,}/{total:,} ({100 * step / total:.0f}%"
    done = step - first_step
    if done > 0:
        spent = time.time() - started
        left = spent / done * (total - step)
        where += (f", {datetime.timedelta(seconds=round(spent))} so far, about "
                  f"{datetime.timedelta(seconds=round(left))} left")
    return f"{where}): {values}"


class LogLines(TrainerCallback):
    """In a log file, the training bar and the dict it prints for each log become one line per log, which says
    the step, the time so far and about how long is left."""

    def __init__(self):
        self.started = time.time()
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step  # a resumed run times its own steps

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The closing dict (train_runtime, train_loss, ...) is the train metrics printed after it.
        if state.is_world_process_zero and logs and "train_runtime" not in logs:
            print(log_line(state, logs, self.started, self.first_step), flush=True)


def settle_trainer_output(trainer):
    """In a log file, the Trainer's progress bar gives way to LogLines (a --disable_tqdm run keeps the Trainer's
    own printer)."""
    if not to_terminal() and not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LogLines())

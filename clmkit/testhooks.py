"""Hooks for the tests, off unless CLM_TEST_PAUSE is set: stop still at a chosen point of training so that a test
can kill or signal the process exactly there.

    CLM_TEST_PAUSE=step:N        at the end of optimizer step N
    CLM_TEST_PAUSE=save:N        inside the write of checkpoint-N, after its weights and before trainer_state.json
    CLM_TEST_PAUSE=save:N:hold   the same, and staying there after a stop signal (a second Ctrl-C ends it)
    CLM_TEST_RECORD=PATH         append the token ids of each sequence each optimizer step trains on to PATH (JSON lines)
    CLM_TEST_SHARD_BYTES=N       write the model's weights in shards of N bytes (a tiny model's weights in several)
"""

import json
import os
import time

from transformers import TrainerCallback

HOOK = "CLM_TEST_PAUSE"
RECORD = "CLM_TEST_RECORD"
SHARD_BYTES = "CLM_TEST_SHARD_BYTES"


def _asked(kind):
    """The step the hook names for `kind` ("step" or "save"), or None."""
    name, _, step = os.environ.get(HOOK, "").partition(":")
    step = step.split(":")[0]
    return int(step) if name == kind and step.isdigit() else None


def _holds():
    return os.environ.get(HOOK, "").endswith(":hold")


def pause(where, signalled):
    """Wait, doing nothing, until signalled() (a SIGTERM/SIGINT was handled) or SIGKILL ends the process."""
    print(f"test hook: paused {where}", flush=True)
    # Short sleeps, not signal.pause(): the kernel may deliver the signal to another thread, and Python runs its
    # handler only when the main thread next wakes.
    while not signalled():
        time.sleep(0.1)


class PauseAtStep(TrainerCallback):
    def __init__(self, step, signalled):
        self.step, self.signalled = step, signalled

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            pause(f"at the end of step {self.step}", self.signalled)


def callbacks(signalled):
    """The callbacks the hook asks for; signalled() says whether a stop signal has arrived."""
    step = _asked("step")
    return [] if step is None else [PauseAtStep(step, signalled)]


def after_checkpoint_weights(step, signalled):
    """Called inside every checkpoint write, once its weights are written."""
    if _asked("save") == step:
        pause(f"inside the write of checkpoint-{step}", (lambda: False) if _holds() else signalled)


def record_batch(step, inputs, first_process):
    """Which sequences optimizer step `step` trains on, as the first process sees them."""
    path = os.environ.get(RECORD)
    if path and first_process:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "sequences": inputs["input_ids"].tolist()}) + "\n")


def shard_bytes(default):
    """The size of a weights shard: the tool's own, or the test's."""
    return int(os.environ.get(SHARD_BYTES) or default)

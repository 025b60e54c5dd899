"""Surviving pre-emption: checkpoint on SIGTERM/SIGINT, time checkpoint writes, replace the final model file by
file atomically, and clear the build lock a killed run leaves."""

import contextlib
import glob
import os
import shutil
import signal
import sys
import time

from transformers import Trainer, TrainerCallback

from .errors import first_process

# A lock younger than this may belong to a build that is only starting (ninja not yet running).
STALE_LOCK_SECONDS = 30



class StopOnSignal(TrainerCallback):
    """SIGTERM (a cloud's pre-emption notice) or SIGINT (Ctrl-C): write a checkpoint at the next step
    boundary, then stop. A second Ctrl-C stops at once."""

    last_signal = None  # for the test hook's pause

    def __init__(self):
        self.received = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = StopOnSignal.last_signal = signum
        print(f"\nnotice: {signal.Signals(signum).name} received: writing a checkpoint at the end of this step, "
              "then stopping", file=sys.stderr, flush=True)

    def _any_rank_received(self):
        """Ranks may see the signal a step apart; they must agree, or one would wait in a collective forever."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received is not None
        import torch

        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if self.received is None else self.received], device=backend_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = int(flag.item())
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received():
            control.should_save = True
            control.should_training_stop = True


class CheckpointTimer(TrainerCallback):
    """Says how long each checkpoint took to write: the budget a pre-emption notice must fit in."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref

    def on_save(self, args, state, control, **kwargs):
        started = self.trainer_ref.checkpoint_started
        if started is not None and state.is_world_process_zero:
            print(f"checkpoint-{state.global_step} written in {time.time() - started:.1f} s", flush=True)


class TestPause(TrainerCallback):
    """Test hook (CLM_TEST_PAUSE=step:N): stop still at the end of step N so a test can kill the process there."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            pause(f"at the end of step {self.step}")


def pause(where):
    """Wait, doing nothing, until SIGTERM/SIGINT is handled (or SIGKILL ends the process)."""
    print(f"test hook: paused {where}", flush=True)
    # Short sleeps, not signal.pause(): the kernel may deliver the signal to another thread, and Python
    # runs its handler only when the main thread next wakes.
    while StopOnSignal.last_signal is None:
        time.sleep(0.1)


class ClmTrainer(Trainer):
    """The Trainer, plus a timer around checkpoint writes, a test hook inside them, and the chunked loss."""

    checkpoint_started = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not getattr(self.args, "chunked_loss", False) or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        from .loss import chunked_causal_lm_loss_sum

        # Ask for the last position's logits only; the loss is computed from the final hidden states.
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        logits_to_keep=1, output_hidden_states=True)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        loss_sum, count = chunked_causal_lm_loss_sum(outputs.hidden_states[-1], inputs["labels"], head)
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs:
            return loss_sum / count.clamp(min=1)
        # As the model's own loss does: normalise by the tokens of the whole accumulated batch, across ranks.
        loss = loss_sum / num_items_in_batch
        if self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    def save_model(self, output_dir=None, _internal_call=False):
        if _internal_call:  # the first thing a checkpoint write does
            self.checkpoint_started = time.time()
        super().save_model(output_dir, _internal_call=_internal_call)
        hook = os.environ.get("CLM_TEST_PAUSE", "")
        if _internal_call and hook == f"save:{self.state.global_step}":
            pause(f"inside the write of checkpoint-{self.state.global_step}")


def callbacks_for(trainer):
    """Callbacks every run gets, plus the test hook when asked for."""
    callbacks = [CheckpointTimer(trainer)]
    hook = os.environ.get("CLM_TEST_PAUSE", "")
    if hook.startswith("step:"):
        callbacks.append(TestPause(int(hook.split(":", 1)[1])))
    return callbacks


def save_final_model(trainer, output_dir):
    """Write the final model beside output_dir, then move it in file by file with os.replace: each file is
    either the old or the new one, never half-written, and weights go last."""
    staging = os.path.join(output_dir, ".final-model-staging")
    if trainer.is_world_process_zero() and os.path.isdir(staging):
        shutil.rmtree(staging)
    trainer.save_model(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        names = sorted(os.listdir(staging), key=lambda name: name.startswith("model"))
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        os.rmdir(staging)
    trainer.accelerator.wait_for_everyone()


def clear_stale_build_locks():
    """torch builds DeepSpeed's CPU ops (CPU Adam) the first time they are used, in its extensions folder, holding
    a `lock` file there; every later run takes the lock too, even to find the build done. A run killed while
    building (SIGKILL, power loss, a pre-empted machine) leaves the lock behind, and every later run then waits on it
    forever, printing nothing. A lock is stale when it is older than STALE_LOCK_SECONDS and no process works in its
    folder (ninja and the compiler run there)."""
    import psutil
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    locks = glob.glob(os.path.join(root, "*", "*", "lock"))
    if not locks:
        return
    working_in = {p.info["cwd"] for p in psutil.process_iter(["cwd"]) if p.info.get("cwd")}
    for lock in locks:
        folder = os.path.dirname(lock)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.path.getmtime(lock) < STALE_LOCK_SECONDS:
                continue
            if any(cwd == folder or cwd.startswith(folder + os.sep) for cwd in working_in):
                continue
            os.remove(lock)
            if first_process():
                print(f"notice: removed {lock}, left by a build of {os.path.basename(folder)} that was killed; "
                      "it is built again now", file=sys.stderr, flush=True)

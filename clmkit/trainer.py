"""The Trainer this tool runs: Transformers' Trainer with the chunked loss, its callbacks (checkpoint on a stop
signal, checkpoint timing, loss.png, run_stats.json, the run's shape for resuming on other GPU counts) and the final
model moved into place file by file."""

import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback, default_data_collator

from . import testhooks
from .checkpoints import RunShape
from .cpucomm import ReleaseSharedMemory
from .loss import chunked_causal_lm_loss_sum
from .plotting import LossPlotCallback
from .stats import RunStatsCallback


class ClmTrainer(Trainer):
    """The Trainer, plus the chunked loss and a timer around checkpoint writes."""

    checkpoint_started = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not getattr(self.args, "chunked_loss", False) or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
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
        if _internal_call:
            testhooks.after_checkpoint_weights(self.state.global_step, lambda: StopOnSignal.received_any)


class StopOnSignal(TrainerCallback):
    """SIGTERM (a cloud's pre-emption notice) or SIGINT (Ctrl-C): write a checkpoint at the next step boundary, then
    stop. A second Ctrl-C stops at once."""

    received_any = False  # in this process, by any instance: what a paused test hook waits for

    def __init__(self):
        self.received = None
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        StopOnSignal.received_any = True
        print(f"\nnotice: {signal.Signals(signum).name} received: writing a checkpoint at the end of this step, "
              "then stopping", file=sys.stderr, flush=True)

    def _any_rank_received(self):
        """Ranks may see the signal a step apart; they must agree, or one would wait in a collective forever."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received is not None
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

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        started = self.trainer.checkpoint_started
        if started is not None and state.is_world_process_zero:
            print(f"checkpoint-{state.global_step} written in {time.time() - started:.1f} s", flush=True)


def build_trainer(model, tokenizer, training_args, block_size, train_set, eval_set):
    """The Trainer with every callback a run gets (and the test hooks, when asked for)."""
    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size * block_size)
    stop = StopOnSignal()
    trainer = ClmTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set if training_args.do_train else None,
        eval_dataset=eval_set if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[LossPlotCallback(training_args.output_dir), stop,
                   RunStatsCallback(training_args.output_dir, tokens_per_step),
                   RunShape(training_args.world_size, training_args.per_device_train_batch_size,
                            training_args.gradient_accumulation_steps), ReleaseSharedMemory()],
    )
    trainer.add_callback(CheckpointTimer(trainer))
    for callback in testhooks.callbacks(lambda: StopOnSignal.received_any):
        trainer.add_callback(callback)
    return trainer


def stop_signal(trainer):
    """The signal that stopped training (SIGTERM or SIGINT, on any rank), or None."""
    stop = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal))
    return stop.received


def save_final_model(trainer, output_dir):
    """Write the final model beside output_dir, then move it in file by file with os.replace: each file is either
    the old or the new one, never half-written, and weights go last."""
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

"""The Trainer this tool runs: Transformers' Trainer with the chunked loss, its callbacks (checkpoint on a stop
signal, checkpoint timing, loss.png, run_stats.json, the run's shape for resuming on other GPU counts) and the final
model moved into place file by file."""

import functools
import os
import shutil
import signal
import sys
import time

import torch
import torch._inductor.config
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from accelerate.utils import DistributedDataParallelKwargs
from transformers import Trainer, TrainerCallback, default_data_collator
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.trainer_callback import ExportableState
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from . import dtypecheck, profiling, testhooks
from .args import plain_training_args
from .adamw8bit import AdamW8bit, TorchaoAdamW8bit
from .checkpoints import RunFlags, RunShape, allow_loading_onto_indexed_cpu, saved_record
from .cpucomm import ReleaseSharedMemory
from .fp16_adamw import Fp16AdamW8bit, ScaleGradient
from .in_backward import OptimizerInBackward
from .loading import compile_blocks, repeated_blocks
from .loss import VOCAB_MULTIPLE, chunked_causal_lm_loss_sum, chunked_eval_sums
from .machine import first_process
from .plotting import LossPlotCallback
from .progress import settle_trainer_output
from .saving import weight_files, write_model
from .stats import RunStatsCallback


def fp16_mode(model, training_args) -> bool:
    """fp16 weights trained without DeepSpeed (which keeps an fp32 copy): the fp16 mode, whatever chose it."""
    return not training_args.deepspeed and next(model.parameters()).dtype == torch.float16


class ClmTrainer(Trainer):
    """The Trainer, plus the chunked loss, a timer around checkpoint writes, and a train_loss that counts the steps
    before a resume."""

    checkpoint_started = None
    resumed_from = resume_started = None  # the checkpoint train() resumes from, and when train() began
    loss_before_resume = 0.0  # the summed step losses of the run up to the checkpoint it resumed from
    losses_this_call = None  # (summed step losses, micro-batches) of this call of train(), on the device
    scaled_optimizer = None  # the fp16 mode's optimizer, which keeps the loss scale

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # --logging_nan_inf_filter is applied on the device, in training_step. The Trainer's own filter reads every
        # micro-batch's loss on the host (torch.isnan(loss) or ...), so the host waits for the GPU to finish each
        # step before it can queue the next one; it is switched off here, and training_args.bin keeps the user's value.
        self.nan_inf_filter = self.args.logging_nan_inf_filter
        self.args.logging_nan_inf_filter = False

    # -- the optimizer: torchao's 8-bit AdamW with its step compiled once, the fp16 mode's, or either in the backward

    def get_optimizer_cls_and_kwargs(self, args, model=None):
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if optimizer_cls is TorchaoAdamW8bit:
            optimizer_cls = AdamW8bit
        if model is not None and fp16_mode(model, args):
            return Fp16AdamW8bit, dict(kwargs, max_grad_norm=args.max_grad_norm)
        if getattr(args, "optimizer_in_backward", False):
            # On a GPU each block's weights step in one compiled call (the host's work per weight is what the GPU
            # would wait for); on the CPU, where nothing waits, each weight's update is the one compiled.
            # CLM_STEP_EACH_WEIGHT=1 steps each weight on its own on a GPU too (for measuring).
            on_gpu = model is not None and next(model.parameters()).device.type == "cuda"
            together = on_gpu and not os.environ.get("CLM_STEP_EACH_WEIGHT")
            blocks = [list(block.parameters()) for block in repeated_blocks(model)] if together else []
            return OptimizerInBackward, dict(kwargs, inner_cls=optimizer_cls, max_grad_norm=args.max_grad_norm,
                                             state_on_host=getattr(args, "optimizer_state_on_host", False),
                                             blocks=blocks)
        return optimizer_cls, kwargs

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if isinstance(optimizer, Fp16AdamW8bit):
            self.scaled_optimizer = optimizer
        if issubclass(getattr(optimizer, "inner_cls", type(optimizer)), TorchaoAdamW8bit):
            # torchao compiles its step, a few kernels (and --torch_compile one block); Inductor's default pool of
            # compile workers, one process per core with torch imported in each, would take gigabytes of host RAM a
            # small machine does not have.
            torch._inductor.config.compile_threads = 1
        return optimizer

    # -- the fp16 mode: the loss scale on the backward pass, the gradient norm in fp32

    def _clip_grad_norm(self, model):
        # The Trainer would clip the scaled fp16 gradients, and sum their norm in fp16, where it overflows; the
        # optimizer measures it in fp32 with the scale divided out, and clips inside its step. Stepped in the
        # backward, each gradient was clipped and freed already: the norm they had is what is left to report.
        stepped = self.stepped_in_backward()
        if stepped is not None:
            return stepped.clip.norm() if stepped.clip is not None else None
        if self.scaled_optimizer is None:
            return super()._clip_grad_norm(model)
        return self.scaled_optimizer.grad_norm()

    def stepped_in_backward(self):
        """The optimizer stepping each weight in the backward pass, or None."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        return optimizer if isinstance(optimizer, OptimizerInBackward) else None

    def _get_grad_norm(self, model, grad_norm=None):
        if self.scaled_optimizer is None:
            return super()._get_grad_norm(model, grad_norm)
        return grad_norm if grad_norm is not None else self.scaled_optimizer.grad_norm()

    def log(self, logs, *args, **kwargs):
        if "train_loss" in logs and self.state.global_step:  # the closing metrics, on every rank
            logs["train_loss"] = self.loss_sum() / self.state.global_step
        if self.scaled_optimizer is not None and "loss" in logs:
            logs["loss_scale"] = self.scaled_optimizer.loss_scale
            logs["overflow_skipped_steps"] = self.scaled_optimizer.skipped_steps
        super().log(logs, *args, **kwargs)

    # -- train_loss: the mean step loss of the whole run, the steps before a resume included. The Trainer's own is
    # of the steps of this call alone in some releases and of all in others; this one is the same on every release.

    def train(self, resume_from_checkpoint=None, **kwargs):
        self.resumed_from, self.resume_started = resume_from_checkpoint, time.time()
        saved = saved_record(resume_from_checkpoint, LossSoFar) if resume_from_checkpoint else None
        self.loss_before_resume = saved["loss_sum"] if saved else 0.0
        self.losses_this_call = None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        testhooks.record_batch(self.state.global_step + 1, inputs, self.is_world_process_zero())
        stepped = self.stepped_in_backward()
        if stepped is not None and stepped.clip is not None and stepped.clip.needs_measuring():
            # The first step of a run or resume, with no last step's norm to clip by: one pass of the same batch
            # that only measures it (every gradient freed as soon as it is measured).
            stepped.clip.measuring = True
            try:
                super().training_step(model, inputs, num_items_in_batch)
            finally:
                stepped.clip.measuring = False
            stepped.clip.end_step()
        loss = super().training_step(model, inputs, num_items_in_batch)
        # What the Trainer adds to its own running loss, summed on the device in float64 (no wait for the GPU). With
        # --logging_nan_inf_filter (the default), a loss that is not finite counts as the mean of this call's step
        # losses so far, in train_loss and in the logged loss alike.
        step_loss = loss.detach().double()
        if self.losses_this_call is None:
            self.losses_this_call = torch.zeros(2, dtype=torch.float64, device=step_loss.device)
        if self.nan_inf_filter:
            total, count = self.losses_this_call
            step_loss = torch.where(torch.isfinite(step_loss), step_loss, total / count.clamp(min=1))
            loss = step_loss.to(loss.dtype)
        self.losses_this_call += torch.stack([step_loss, torch.ones_like(step_loss)])
        return loss

    def loss_sum(self):
        """The summed step losses of the whole run so far, averaged over the ranks (every rank must call it)."""
        if self.losses_this_call is None:
            return self.loss_before_resume
        this_call = self.accelerator.reduce(self.losses_this_call[0].clone(), reduction="mean").item()
        return self.loss_before_resume + this_call

    def _issue_warnings_after_load(self, load_result):
        # A tied output layer is saved once, as the input embedding: its "missing" key is no loss.
        tied = {name for name, _ in self.model.named_parameters(remove_duplicate=False)} - \
            {name for name, _ in self.model.named_parameters()}
        if load_result.missing_keys and set(load_result.missing_keys) <= tied:
            self.model.tie_weights()
            load_result = load_result._replace(missing_keys=[])
        super()._issue_warnings_after_load(load_result)

    def _build_accelerator_args(self, **kwargs):
        args = super()._build_accelerator_args(**kwargs)
        # Several GPUs without DeepSpeed (the bf16 mode): each gradient a view into DDP's communication buckets.
        # Otherwise DDP holds a second copy of every gradient, 2 bytes a parameter in bf16: GPT-2 XL's 2.9 GiB,
        # more than a 16 GB card has left.
        for handler in args.get("kwargs_handlers", []):
            if isinstance(handler, DistributedDataParallelKwargs):
                handler.gradient_as_bucket_view = True
        return args

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        if isinstance(model, DistributedDataParallel) and model.gradient_as_bucket_view:
            # Zeroed in place, the gradients stay views into the buckets. Set to None after each step, the next
            # micro-batch under no_sync (gradient accumulation) would make fresh ones beside the buckets: the copy
            # the views are there to avoid.
            model.zero_grad = functools.partial(DistributedDataParallel.zero_grad, model, set_to_none=False)
        return model, train_dataloader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self._loss(model, inputs, return_outputs, num_items_in_batch)
        if self.scaled_optimizer is not None and model.training and not return_outputs:
            loss = ScaleGradient.apply(loss, self.scaled_optimizer.loss_scale)
        return loss

    # -- evaluation: the loss and eval_accuracy chunk by chunk, without a whole batch's logits

    token_counts = None  # (correct, predicted) next tokens of the evaluation under way

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self.token_counts = None
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self.token_counts is not None:
            correct, predicted = self.accelerator.reduce(self.token_counts, reduction="sum").tolist()
            output.metrics[f"{metric_key_prefix}_accuracy"] = correct / max(predicted, 1)
        return output

    def _hidden_states_and_head(self, model, inputs):
        """(the final hidden states, the LM head, the multiple its rows are padded to) for a loss in chunks: the
        model is asked for the last position's logits only."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                        logits_to_keep=1, output_hidden_states=True)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        multiple = VOCAB_MULTIPLE if getattr(self.args, "padded_lm_head", True) else 1
        return outputs.hidden_states[-1], head, multiple

    def _evaluation_loss(self, model, inputs):
        """(mean next-token loss, ()) of an evaluation batch, counting the tokens it predicts right on the way."""
        hidden, head, multiple = self._hidden_states_and_head(model, inputs)
        loss_sum, predicted, correct = chunked_eval_sums(hidden, inputs["labels"], head, vocab_multiple=multiple)
        counts = torch.stack([correct, predicted])
        self.token_counts = counts if self.token_counts is None else self.token_counts + counts
        return loss_sum / predicted.clamp(min=1), ()

    def _loss(self, model, inputs, return_outputs, num_items_in_batch):
        if return_outputs and not model.training and self.args.prediction_loss_only \
                and not is_deepspeed_zero3_enabled():  # ZeRO-3 holds each rank's slice of the head only
            return self._evaluation_loss(model, inputs)
        if not getattr(self.args, "chunked_loss", False) or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        hidden, head, multiple = self._hidden_states_and_head(model, inputs)
        loss_sum, count = chunked_causal_lm_loss_sum(hidden, inputs["labels"], head, vocab_multiple=multiple)
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
        output_dir = output_dir or self.args.output_dir
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:  # the engine gathers the weights for the Trainer
            super().save_model(output_dir, _internal_call=_internal_call)
        elif self.args.should_save:
            # The weights in shards, written from where they are (the Trainer's own save writes one file, and with it
            # a host copy of every weight at once).
            write_model(self.accelerator.unwrap_model(self.model), output_dir, self.processing_class)
            if self.args.push_to_hub and not _internal_call:
                self.push_to_hub(commit_message="Model save")
        if self.args.should_save:  # Transformers' own TrainingArguments, which loads without this tool
            plain = plain_training_args(self.args)
            plain.logging_nan_inf_filter = self.nan_inf_filter
            torch.save(plain, os.path.join(output_dir, TRAINING_ARGS_NAME))
        if _internal_call:
            testhooks.after_checkpoint_weights(self.state.global_step, lambda: StopOnSignal.received_any)


class SkippedStepKeepsTheSchedule(TrainerCallback):
    """A step the fp16 mode skipped for overflowed gradients does not advance the learning-rate schedule (as
    DeepSpeed and torch.amp do): the Trainer asks Accelerate's optimizer wrapper whether its step was skipped."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.scaled_optimizer is not None:
            self.trainer.optimizer._is_overflow = self.trainer.scaled_optimizer.last_step_skipped


class StopOnSignal(TrainerCallback):
    """SIGTERM (a cloud's pre-emption notice) or SIGINT (Ctrl-C): write a checkpoint at the next step boundary, then
    stop. A second Ctrl-C stops at once.

    A Ctrl-C in a terminal reaches every process of the command: the deepspeed launcher passes it on to the workers
    as a SIGTERM, so a worker sees both, in either order. That is one stop, reported as the Ctrl-C it was."""

    received_any = False  # in this process, by any instance: what a paused test hook waits for

    def __init__(self):
        self.received = None  # the signal to report: SIGINT once a Ctrl-C came, else SIGTERM
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C
        first = self.received is None
        if first or signum == signal.SIGINT:
            self.received = signum
        StopOnSignal.received_any = True
        if first:
            print(f"\nnotice: {describe(signum)} received: writing a checkpoint at the end of this step, then "
                  "stopping (a second Ctrl-C stops at once)", file=sys.stderr, flush=True)

    def _any_rank_received(self):
        """Ranks may see the signal a step apart; they must agree, or one would wait in a collective forever."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.received is not None
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if self.received is None else self.received], device=backend_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.received is None:
            self.received = int(flag.item())  # another rank's signal
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_received():
            control.should_save = True
            control.should_training_stop = True


def describe(signum):
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class LossSoFar(TrainerCallback, ExportableState):
    """Records in every checkpoint the sum of the training loss of each step so far: what a resumed run adds its own
    steps to, so that its train_loss is the uninterrupted run's."""

    def __init__(self):
        self.loss_sum = 0.0
        self.trainer = None

    def on_step_end(self, args, state, control, **kwargs):
        # After the callbacks that ask for a checkpoint (the Trainer's schedule, a stop signal), before it is written;
        # on every rank, each of which writes the checkpoint.
        if control.should_save and self.trainer is not None:
            self.loss_sum = self.trainer.loss_sum()

    def state(self):
        return {"args": {"loss_sum": self.loss_sum}, "attributes": {}}


class CheckpointTimer(TrainerCallback):
    """Says how long each checkpoint took to write (the budget a pre-emption notice must fit in) and, on a resume,
    to read, with its size; run_stats.json gets the last of each (figures: the RunStatsCallback's extra)."""

    def __init__(self, trainer, figures):
        self.trainer = trainer
        self.figures = figures

    def on_save(self, args, state, control, **kwargs):
        started = self.trainer.checkpoint_started
        if started is not None and state.is_world_process_zero:
            seconds = time.time() - started
            size = folder_bytes(os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"))
            self.figures.update(checkpoint_write_s=seconds, checkpoint_gib=size / 2**30)
            print(f"checkpoint-{state.global_step} written in {seconds:.1f} s ({size / 2**30:.2f} GiB)", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint, started = self.trainer.resumed_from, self.trainer.resume_started
        if checkpoint and started is not None and state.is_world_process_zero:
            # train() loads the weights, then the optimizer state and the schedule, then begins
            seconds = time.time() - started
            size = folder_bytes(checkpoint)
            self.figures.update(checkpoint_read_s=seconds, checkpoint_read_gib=size / 2**30)
            print(f"{checkpoint} read in {seconds:.1f} s ({size / 2**30:.2f} GiB)", flush=True)


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def callback_of(trainer, cls):
    """The trainer's callback of class cls (build_trainer adds one of each)."""
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, cls))


def build_trainer(model, tokenizer, training_args, block_size, train_set, eval_set, host_memory=None):
    """The Trainer with every callback a run gets (and the test hooks, when asked for). host_memory: the sampler
    started when the command did, so that run_stats.json's host peak covers loading the data and the model."""
    if fp16_mode(model, training_args):
        # The fp16 mode scales the loss itself (ClmTrainer); the Trainer's --fp16 is torch.amp's, whose autocast
        # the fp16 weights do not need and whose gradient scaler refuses fp16 gradients. TrainingArguments has
        # already turned --fp16 into the mixed precision it hands Accelerate: both go.
        training_args.fp16 = False
        training_args.mixed_precision = "no"
    if training_args.torch_compile and not training_args.deepspeed:
        # Each repeated block compiled, not the whole model, which the Trainer would do (and which measured slower
        # than not compiling at all on GPT-2 XL): the blocks are nearly all the work.
        count, kind = compile_blocks(model, training_args.torch_compile_backend, training_args.torch_compile_mode)
        if count and first_process():
            print(f"--torch_compile: {count} {kind} blocks compiled (one graph, reused); the rest of the model "
                  "runs as it is. The first step compiles the graph: about 15-30 s on a GPU, a minute or more on a "
                  "CPU", flush=True)
        training_args.torch_compile = False
        training_args.torch_compile_backend = training_args.torch_compile_mode = None
    allow_loading_onto_indexed_cpu()  # a resume on several CPU processes
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
                   RunStatsCallback(training_args.output_dir, tokens_per_step, host_memory),
                   RunShape(training_args.world_size, training_args.per_device_train_batch_size,
                            training_args.gradient_accumulation_steps), RunFlags(training_args), LossSoFar(),
                   ReleaseSharedMemory()],
    )
    callback_of(trainer, LossSoFar).trainer = trainer
    stats = callback_of(trainer, RunStatsCallback)
    trainer.add_callback(CheckpointTimer(trainer, stats.extra))
    trainer.add_callback(SkippedStepKeepsTheSchedule(trainer))
    hooks = dtypecheck.callbacks() + profiling.callbacks() + testhooks.callbacks(lambda: StopOnSignal.received_any)
    for callback in hooks:
        trainer.add_callback(callback)
    settle_trainer_output(trainer)
    return trainer


def stop_signal(trainer):
    """The signal that stopped training (SIGTERM or SIGINT, on any rank), or None."""
    stop = callback_of(trainer, StopOnSignal)
    return stop.received


def report_run_stats(trainer):
    """run_stats.json's figures on one line, once training has returned and its progress bar has ended its line."""
    stats = callback_of(trainer, RunStatsCallback)
    if stats.line:
        print(stats.line, flush=True)


def add_host_peak_through_save(trainer):
    """run_stats.json gains the host peak through the final save (called once the final model is written)."""
    stats = callback_of(trainer, RunStatsCallback)
    stats.add_peak_through_save(trainer.is_world_process_zero())


def save_final_model(trainer, output_dir):
    """Write the final model beside output_dir, then move it in file by file with os.replace: each file is either
    the old or the new one, never half-written, and weights go last."""
    started = time.time()
    staging = os.path.join(output_dir, ".final-model-staging")
    if trainer.is_world_process_zero() and os.path.isdir(staging):
        shutil.rmtree(staging)
    trainer.save_model(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        names = sorted(os.listdir(staging), key=lambda name: name.startswith("model"))
        replaced = set(weight_files(output_dir)) - set(names)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
        os.rmdir(staging)
        for name in replaced:  # an earlier model's weights in other files (one file then, shards now): not this model's
            os.remove(os.path.join(output_dir, name))
        print(f"final model written to {output_dir} in {time.time() - started:.1f} s", flush=True)
    trainer.accelerator.wait_for_everyone()

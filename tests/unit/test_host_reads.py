"""A training step reads no value of a tensor on the host outside the model's own forward pass. On a GPU each such
read (`.item()`, `bool(t)`, `float(t)`) waits for every kernel queued so far, so the host can no longer run ahead and
queue the next step while the GPU works: the GPU then idles while the host prepares each step. On the CPU the same
reads are calls of aten._local_scalar_dense, which a dispatch mode counts, in a real Trainer built as a run builds
it. (Transformers' mask code reads one value a forward pass, to tell packed sequences apart: the model library's.)"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from torchao.optim.adam import single_param_adam

from clmkit import adamw8bit
from clmkit.args import ClmTrainingArguments
from clmkit.trainer import build_trainer

BLOCK = 16


class HostReads(TorchDispatchMode):
    """Counts the tensor values read on the host while it is on, outside the forward pass of `model`."""

    def __init__(self, model):
        super().__init__()
        self.count = 0
        self.in_model = False
        model.register_forward_pre_hook(lambda *_: setattr(self, "in_model", True))
        model.register_forward_hook(lambda *_: setattr(self, "in_model", False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.in_model:
            self.count += 1
        return func(*args, **(kwargs or {}))


class CountStepsReads(TrainerCallback):
    """Host reads from the start of step `first` to the end of step `last`, without logging, saving or evaluating in
    between."""

    def __init__(self, first, last, model):
        self.first, self.last = first, last
        self.mode = HostReads(model)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.first:
            self.mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.last:
            self.mode.__exit__(None, None, None)


def sequences(count, vocab=64):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (count, BLOCK), generator=generator)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def train(tmp_path, nan_at=None, **flags):
    """Six steps of a tiny GPT-2 (fp32 on the CPU), each step's micro-batches in one backward; nan_at: the step whose
    loss is not a number (its gradient stays the real loss's, so training goes on)."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=BLOCK,
                                       bos_token_id=0, eos_token_id=0))
    if nan_at is not None:
        calls = [0]

        def poison(module, inputs, output):
            if module.training:
                calls[0] += 1
                if calls[0] == nan_at:
                    output.loss = output.loss + (output.loss.detach() * float("nan"))
            return output

        model.register_forward_hook(poison)
    flags = dict(dict(logging_steps=1), **flags)
    args = ClmTrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=6, per_device_train_batch_size=2,
                                learning_rate=1e-3, save_strategy="no", report_to=[], do_train=True,
                                disable_tqdm=True, **flags)
    trainer = build_trainer(model, None, args, BLOCK, sequences(12), None)
    counter = CountStepsReads(3, 5, model.base_model)
    trainer.add_callback(counter)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return counter.mode.count, losses, trainer


def test_a_step_of_the_mode_stepped_in_the_backward_reads_no_tensor_value_on_the_host(tmp_path, monkeypatch):
    """bf16-in-backward's optimizer and loss (fp32 here); logging, which reads the loss, comes only every 100 steps.
    (The bf16 mode reads one value a step, its learning rate, which torchao keeps in a CPU tensor in every run.)"""
    # The 8-bit update runs as written, not compiled: a compiled graph cannot run under the counting mode.
    monkeypatch.setattr(adamw8bit, "compiled_update", lambda: single_param_adam)
    reads, _, _ = train(tmp_path, optim="adamw_torch_8bit", optimizer_in_backward=True, gradient_accumulation_steps=1,
                        max_grad_norm=1.0, logging_steps=100)
    assert reads == 0


def test_a_loss_that_is_not_a_number_is_logged_as_the_mean_so_far(tmp_path):
    """--logging_nan_inf_filter (the default) counts a step whose loss is not finite as the mean of the steps before
    it, on the device; training_args.bin keeps the flag as the user gave it."""
    _, losses, trainer = train(tmp_path, nan_at=4)
    assert len(losses) == 6 and all(loss == loss for loss in losses)
    assert losses[3] == pytest.approx(sum(losses[:3]) / 3, rel=1e-4)
    trainer.save_model(str(tmp_path / "saved"))
    saved = torch.load(tmp_path / "saved" / "training_args.bin", weights_only=False)
    assert saved.logging_nan_inf_filter is True


def test_without_the_filter_the_loss_that_is_not_a_number_is_logged(tmp_path):
    _, losses, _ = train(tmp_path, nan_at=4, logging_nan_inf_filter=False)
    assert losses[3] != losses[3] and all(loss == loss for loss in losses[:3])

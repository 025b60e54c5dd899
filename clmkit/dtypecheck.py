"""Proof that a run acting like a card without bf16 (CLM_ASSUME_NO_BF16) holds no bf16 tensor: every module's
outputs on the first training steps, and at the end every weight, gradient and optimizer state tensor (the 8-bit
states' codes, scales and maps too). A bf16 tensor would fail on a real T4, V100 or P100."""

import torch
from transformers import TrainerCallback

from .machine import NO_BF16_OVERRIDE, assuming_no_bf16, first_process

STEPS_WATCHED = 2


def _tensors(value):
    """The plain tensors inside a tensor, a tensor subclass (torchao's 8-bit state) or a container of them."""
    if isinstance(value, torch.Tensor):
        if hasattr(value, "__tensor_flatten__"):
            names, _ = value.__tensor_flatten__()
            return [t for name in names for t in _tensors(getattr(value, name))]
        return [value]
    if isinstance(value, dict):  # model outputs too
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class NoBf16Check(TrainerCallback):
    def __init__(self):
        self.activations = 0
        self.found = []
        self.handles = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def check(module, inputs, output):
            for tensor in _tensors(output):
                self.activations += 1
                if tensor.dtype == torch.bfloat16:
                    self.found.append(f"activation of {name or 'the model'}")
        return check

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= STEPS_WATCHED:
            for handle in self.handles:
                handle.remove()
            self.handles = []

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        weights = list(model.named_parameters())
        self.found += [f"weight {name}" for name, p in weights if p.dtype == torch.bfloat16]
        self.found += [f"gradient of {name}" for name, p in weights
                       if p.grad is not None and p.grad.dtype == torch.bfloat16]
        states = _tensors(list(optimizer.state.values())) if optimizer is not None else []
        self.found += ["optimizer state" for t in states if t.dtype == torch.bfloat16]
        if first_process():
            what = (f"{self.activations:,} activations (first {STEPS_WATCHED} steps), {len(weights)} weights and "
                    f"gradients, {len(states)} optimizer state tensors")
            verdict = "no bf16 tensor" if not self.found else \
                f"{len(self.found)} bf16 tensors, e.g. {', '.join(sorted(set(self.found))[:3])}"
            print(f"{NO_BF16_OVERRIDE}: checked {what}: {verdict}", flush=True)


def callbacks():
    return [NoBf16Check()] if assuming_no_bf16() else []

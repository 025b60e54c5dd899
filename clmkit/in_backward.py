"""The optimizer step inside the backward pass (--optimizer_in_backward): each parameter is updated by an optimizer of
its own as soon as its gradient is complete, and the gradient is freed there, so the full set of gradients never
exists at once. For GPT-2 XL in bf16 that is 2.9 GiB of the card, and for a 3B model 6 GiB: room a larger model
needs. PyTorch's post-accumulate-grad hooks do the work; the Trainer holds an optimizer whose step has nothing left
to do and whose learning rate its schedule sets.

What it cannot do, and the checks refuse: clip by the norm of all gradients (it is known only after every
parameter has stepped), accumulate gradients over micro-batches (each backward would step), or share gradients
between GPUs (each would step on its own).

With --optimizer_state_on_host the optimizer state lives in host RAM, pinned, and only the parameter stepping has
its state on the GPU: copied there in its hook, stepped, copied back into the same host tensors and dropped. The GPU
then holds the weights, the activations, the gradients alive at once and one parameter's state: a 6B model's 8-bit
state (12 GB) leaves the card, at the cost of moving it over PCIe both ways every step. On an H200, GPT-J 6B's
shapes in the bf16 mode (forward, chunked loss and backward of 1,024 tokens, without the Trainer) peaked at 13.9 GiB
allocated with it and 25.0 GiB without, and a step took 1.0 s instead of 0.4 s.
"""

import math
import mmap
import weakref

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


class OptimizerInBackward(torch.optim.Optimizer):
    """What the Trainer sees: one parameter group per Trainer group (weight decay or none), carrying the learning
    rate of the schedule. The updates happen in `_step_one`, in the backward pass."""

    def __init__(self, params, inner_cls, state_on_host=False, **inner_kwargs):
        super().__init__(params, defaults={"lr": inner_kwargs.get("lr", 1e-3)})
        self.inner_cls = inner_cls
        self.state_on_host = state_on_host
        self.host_state = {}  # parameter -> {state key: its host tensor}, made at the parameter's first step
        self.inner = {}  # parameter -> (its optimizer, the group it belongs to), in the groups' order
        for group in self.param_groups:
            kwargs = dict(inner_kwargs, lr=group["lr"])
            if "weight_decay" in group:
                kwargs["weight_decay"] = group["weight_decay"]
            for p in group["params"]:
                self.inner[p] = (inner_cls([p], **kwargs), group)
        self._hooks = [p.register_post_accumulate_grad_hook(self._step_one) for p in self.inner]

    def _step_one(self, p):
        optimizer, group = self.inner[p]
        inner = optimizer.param_groups[0]  # the schedule sets the learning rate of this one's groups
        if isinstance(inner["lr"], torch.Tensor):  # torchao keeps it as a tensor, for its compiled step
            inner["lr"].fill_(group["lr"])
        else:
            inner["lr"] = group["lr"]
        if self.state_on_host:
            # This parameter's state to its device for the step: a copy on the CPU too, so the path is the same
            state = optimizer.state[p]
            for key in self.host_state.get(p, ()):
                state[key] = _copy(state[key], p.device)
        optimizer.step()
        p.grad = None
        if self.state_on_host:
            self._to_host(p, optimizer.state[p])

    def _to_host(self, p, state):
        """Copy p's state into its host tensors (made the first time) and put those in the optimizer's state, so the
        copies on the GPU are freed. Only the state shaped like the weight moves (Adam's m and v); the step count,
        a 0-dim tensor that torch and torchao keep on the CPU for the host to read, stays where it is."""
        host = self.host_state.setdefault(p, {})
        for key, value in state.items():
            if not torch.is_tensor(value) or value.shape != p.shape:
                continue
            if key in host:
                host[key].copy_(value)  # torchao's 8-bit state copies its codes and scales
            else:
                host[key] = _copy(value, torch.device("cpu"), pin=torch.cuda.is_available())
            state[key] = host[key]

    @torch.no_grad()
    def step(self, closure=None):
        """Every parameter stepped already, in the backward pass."""
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none=True):
        """Every gradient was freed as soon as its parameter stepped."""

    def state_dict(self):
        return {"in_backward": [optimizer.state_dict() for optimizer, _ in self.inner.values()],
                "lr": [group["lr"] for group in self.param_groups]}

    def load_state_dict(self, state_dict):
        saved = state_dict["in_backward"]
        if len(saved) != len(self.inner):
            raise ValueError(f"the checkpoint's optimizer holds {len(saved)} parameters, this model {len(self.inner)}")
        for (p, (optimizer, _)), state in zip(self.inner.items(), saved):
            optimizer.load_state_dict(state)  # onto p's device, where torch puts a loaded state
            if self.state_on_host:
                self._to_host(p, optimizer.state[p])  # one parameter's state on the GPU at a time, then back
        for group, lr in zip(self.param_groups, state_dict["lr"]):
            group["lr"] = lr


def _copy(value, device, pin=False):
    """A copy of `value` on `device` (pinned, on the host, with `pin`). A tensor subclass such as torchao's 8-bit
    state is rebuilt from copies of the plain tensors inside it (its codes, scales and quantization map)."""
    if is_traceable_wrapper_subclass(value):
        names, context = value.__tensor_flatten__()
        inner = {name: _copy(getattr(value, name), device, pin) for name in names}
        return type(value).__tensor_unflatten__(inner, context, value.size(), value.stride())
    out = _pinned_empty(value.shape, value.dtype) if pin else torch.empty_like(value, device=device)
    # To the GPU it need not wait (the step comes after it on the same stream); to the host it must be done before
    # anything reads it there.
    return out.copy_(value, non_blocking=out.device.type != "cpu")


def _pinned_empty(shape, dtype):
    """A host tensor in page-locked memory of its own size. torch's pinned allocator rounds each block up to a
    power of two (a 9.4M-element 8-bit state would take 16 MiB: up to twice the state in all); this is an anonymous
    memory map of the tensor's size, registered with CUDA. CUDA locks whole pages, and a map's pages are its own
    (a heap block may share its first and last page with other tensors): locking and unlocking one touches no
    other tensor's memory."""
    nbytes = math.prod(shape) * dtype.itemsize
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    out = torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8).view(dtype).view(shape)
    cudart = torch.cuda.cudart()
    torch.cuda.check_error(cudart.cudaHostRegister(out.data_ptr(), nbytes, 0))
    weakref.finalize(out, cudart.cudaHostUnregister, out.data_ptr())  # before the map is unmapped
    return out


def in_backward_problems(training_args):
    """What --optimizer_in_backward cannot do with the other flags: one line each, naming the change."""
    if not getattr(training_args, "optimizer_in_backward", False):
        if getattr(training_args, "optimizer_state_on_host", False):
            return ["--optimizer_state_on_host without --optimizer_in_backward: the state moves to the GPU one "
                    "parameter at a time as each steps in the backward pass; add --optimizer_in_backward"]
        return []
    flag = "--optimizer_in_backward"
    problems = []
    if training_args.deepspeed:
        problems.append(f"{flag} with --deepspeed: DeepSpeed runs its own optimizer step; drop one of the two")
    elif training_args.fp16:
        problems.append(f"{flag} with --fp16: a loss scale needs every gradient checked for overflow before any "
                        "weight steps; use it with --bf16 --dtype bfloat16 (the bf16 mode), or drop it")
    if training_args.gradient_accumulation_steps != 1:
        problems.append(f"{flag} with --gradient_accumulation_steps {training_args.gradient_accumulation_steps}: "
                        "every backward pass steps the weights, so gradients cannot add up over micro-batches; use "
                        "--gradient_accumulation_steps 1 and a larger --per_device_train_batch_size")
    if training_args.max_grad_norm and training_args.max_grad_norm > 0:
        problems.append(f"{flag} with --max_grad_norm {training_args.max_grad_norm:g}: each weight steps before the "
                        "norm of all gradients is known, so nothing can be clipped; add --max_grad_norm 0")
    if training_args.world_size > 1:
        problems.append(f"{flag} on {training_args.world_size} processes: each would step on its own gradients "
                        "before they are shared; run it on one GPU")
    return problems

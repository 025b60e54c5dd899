"""The optimizer step inside the backward pass (--optimizer_in_backward): each parameter is updated by an optimizer of
its own as soon as its gradient is complete, and the gradient is freed there, so the full set of gradients never
exists at once. For GPT-2 XL in bf16 that is 2.9 GiB of the card, and for a 3B model 6 GiB: room a larger model
needs. PyTorch's post-accumulate-grad hooks do the work; the Trainer holds an optimizer whose step has nothing left
to do and whose learning rate its schedule sets.

Clipping (--max_grad_norm) cannot wait for the norm of all gradients: it is known only after every weight has
stepped. Each gradient is clipped instead by the larger of the last step's norm and the norm of the gradients seen
so far in this backward pass (NormSoFar); the first step of a run (and of a resume) has no last step, so its norm is
measured by one extra forward and backward pass of its batch that steps nothing. Without clipping, the first steps
from a random init (whose gradients are far larger than later ones) fill Adam's second moment for hundreds of steps
and slow the training: 300 steps of a 12-layer GPT-2 XL-wide model ended 7% above the clipped classic recipe.

What it cannot do, and the checks refuse: accumulate gradients over micro-batches (each backward would step), or
share gradients between GPUs (each would step on its own).

With --optimizer_state_on_host the optimizer state lives in host RAM, pinned (HostState): the GPU holds the weights,
the activations, the gradients alive at once and the state of the few weights stepping. A 7B model's 8-bit state
(12.7 GiB) leaves the card, at the cost of moving it over PCIe both ways every step. The copies run on two streams
of their own, one each way, so that they overlap the backward pass and each other; the host may run ahead of the GPU
by a bounded amount of state in flight. Where the cap leaves room after the first step, the state of as many weights
as fits stays on the GPU and stops moving.
"""

import collections
import math
import mmap
import os
import weakref

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from .adamw8bit import AdamW8bit, step_together


class OptimizerInBackward(torch.optim.Optimizer):
    """What the Trainer sees: one parameter group per Trainer group (weight decay or none), carrying the learning
    rate of the schedule. The updates happen in `_step_one`, in the backward pass."""

    def __init__(self, params, inner_cls, state_on_host=False, max_grad_norm=0.0, blocks=(), **inner_kwargs):
        """blocks: lists of parameters (a repeated block's) whose 8-bit updates run as one compiled call once
        the last of them has its gradient, where each weight's call would cost the host more than the GPU's work
        (GPT-2 XL's 580 weights a step). Their gradients wait until then: one block's. Not with the state in host
        RAM, whose copies go one weight at a time to bound the GPU memory they take."""
        super().__init__(params, defaults={"lr": inner_kwargs.get("lr", 1e-3)})
        self.inner_cls = inner_cls
        self.host = HostState() if state_on_host else None
        self.clip = NormSoFar(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else None
        self.inner = {}  # parameter -> (its optimizer, the group it belongs to), in the groups' order
        for group in self.param_groups:
            kwargs = dict(inner_kwargs, lr=group["lr"])
            if "weight_decay" in group:
                kwargs["weight_decay"] = group["weight_decay"]
            for p in group["params"]:
                self.inner[p] = (inner_cls([p], **kwargs), group)
        self.together = {}  # parameter -> the parameters it steps with
        if issubclass(inner_cls, AdamW8bit) and self.host is None:
            for members in blocks:
                members = [p for p in members if p in self.inner]
                for p in members if len(members) > 1 else ():
                    self.together[p] = members
        self.waiting = {}  # id of a list of self.together -> its parameters with a gradient, not yet stepped
        self._hooks = [p.register_post_accumulate_grad_hook(self._step_one) for p in self.inner]

    @property
    def host_state(self):
        """parameter -> {state key: its host tensor}, for the weights whose state is in host RAM."""
        return self.host.tensors if self.host is not None else {}

    def _step_one(self, p):
        if self.clip is not None:
            if self.clip.measuring:
                self.clip.add(p.grad)
                p.grad = None
                return
            self.clip.clip_(p.grad)
        members = self.together.get(p)
        if members is None:
            self._update([p])
            return
        ready = self.waiting.setdefault(id(members), [])
        ready.append(p)
        if len(ready) == len(members):
            del self.waiting[id(members)]
            self._update(ready)

    def _update(self, params):
        optimizers = []
        for p in params:
            optimizer, group = self.inner[p]
            inner = optimizer.param_groups[0]  # the schedule sets the learning rate of this one's groups
            if isinstance(inner["lr"], torch.Tensor):  # torchao keeps it as a tensor, for its compiled step
                inner["lr"].fill_(group["lr"])
            else:
                inner["lr"] = group["lr"]
            if self.host is not None:
                self.host.fetch(p, optimizer.state[p])
            optimizers.append(optimizer)
        if len(optimizers) == 1 or not step_together(optimizers):
            for optimizer in optimizers:
                optimizer.step()
        for p, optimizer in zip(params, optimizers):
            p.grad = None
            if self.host is not None:
                self.host.store(p, optimizer.state[p])

    @torch.no_grad()
    def step(self, closure=None):
        """Every parameter stepped already, in the backward pass, but those of a block where a weight had no
        gradient (unused in this step): they step now."""
        for ready in self.waiting.values():
            self._update(ready)
        self.waiting.clear()
        if self.clip is not None:
            self.clip.end_step()
        if self.host is not None:
            self.host.after_step()
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none=True):
        """Every gradient was freed as soon as its parameter stepped."""

    def state_dict(self):
        if self.host is not None:
            self.host.settle()  # the host tensors as the last step left them
        return {"in_backward": [optimizer.state_dict() for optimizer, _ in self.inner.values()],
                "lr": [group["lr"] for group in self.param_groups],
                "last_norm_squared": None if self.clip is None or self.clip.last is None else self.clip.last.item()}

    def load_state_dict(self, state_dict):
        saved = state_dict["in_backward"]
        if len(saved) != len(self.inner):
            raise ValueError(f"the checkpoint's optimizer holds {len(saved)} parameters, this model {len(self.inner)}")
        for index, (p, (optimizer, _)) in enumerate(self.inner.items()):
            optimizer.load_state_dict(saved[index])  # onto p's device, where torch puts a loaded state
            # The loaded copy goes as soon as the weight's state has its own, so that host RAM holds the state about
            # once, not twice, while a checkpoint loads.
            saved[index] = None
            if self.host is not None:
                self.host.take(p, optimizer.state[p])  # one parameter's state on the GPU at a time, then to host
        for group, lr in zip(self.param_groups, state_dict["lr"]):
            group["lr"] = lr
        last = state_dict.get("last_norm_squared")
        if self.clip is not None and last is not None:  # a resume clips its first step as the run would have
            device = next(iter(self.inner)).device
            self.clip.last = torch.tensor(last, dtype=torch.float32, device=device)


class NormSoFar:
    """Gradient clipping for weights that step as their gradients complete: each gradient is scaled by max_norm over
    the larger of the last step's norm and the norm of this step's gradients so far (never above 1), where clipping
    by the whole step's norm would scale all by max_norm over that norm. The sums stay on the GPU: no wait."""

    def __init__(self, max_norm):
        self.max_norm = max_norm
        self.so_far = None  # the sum of squares of this step's gradients seen so far (a 0-dim tensor)
        self.last = None  # the last step's
        self.measuring = False  # a pass that only measures the norm (the first step's)

    def add(self, grad):
        squares = torch.linalg.vector_norm(grad, dtype=torch.float32).square()
        self.so_far = squares if self.so_far is None else self.so_far + squares

    def clip_(self, grad):
        self.add(grad)
        known = self.so_far if self.last is None else torch.maximum(self.so_far, self.last)
        grad.mul_((self.max_norm / (known.sqrt() + 1e-6)).clamp(max=1.0))

    def norm(self):
        """The norm of this step's gradients, as clipping by it would report it (None before any)."""
        return None if self.so_far is None else self.so_far.sqrt()

    def end_step(self):
        if self.so_far is not None:
            self.last, self.so_far = self.so_far, None

    def needs_measuring(self):
        return self.last is None


def in_flight_bytes():
    """The state in flight to and from the GPU at once: 256 MiB, or CLM_STATE_IN_FLIGHT_MIB (for measuring)."""
    return int(float(os.environ.get("CLM_STATE_IN_FLIGHT_MIB") or 256) * 2**20)


class HostState:
    """The optimizer state of the weights kept in host RAM, and its copies to the GPU for each weight's step and
    back. On the CPU (the tests) the same path copies within host RAM."""

    # GPU memory left unreserved under the cap when state is kept on the GPU: what a longer batch or the
    # evaluation may still need.
    HEADROOM = 1 << 30
    # State the host may have sent to the GPU ahead of the steps that use it: enough to keep a copy engine busy
    # while earlier weights step, bounded so the cap holds (a weight whose state is larger goes alone).
    IN_FLIGHT = in_flight_bytes()

    def __init__(self):
        self.tensors = {}  # parameter -> {state key: its host tensor}, made at the parameter's first step
        self.on_gpu = set()  # parameters whose state stays on the GPU (room under the cap)
        self.room = 0  # bytes of GPU memory still free for state to stay there
        self.steps = 0
        self.cuda = torch.cuda.is_available()
        self.upload = torch.cuda.Stream() if self.cuda else None
        self.download = torch.cuda.Stream() if self.cuda else None
        self.stored = {}  # parameter -> the event of its state's copy to host, which the next copy in waits for
        self.in_flight = collections.deque()  # (event, bytes) of the copies to host not known to be done
        self.in_flight_bytes = 0

    def fetch(self, p, state):
        """p's state to p's device for its step."""
        host = self.tensors.get(p)
        if not host:
            return  # its first step (torch makes the state where p is), or its state stays on the GPU
        if not self.cuda or p.device.type != "cuda":
            for key in host:
                state[key] = _copy(host[key], p.device)
            return
        self._wait_for_room(_state_bytes(host))
        compute = torch.cuda.current_stream(p.device)
        with torch.cuda.stream(self.upload):
            if p in self.stored:
                self.upload.wait_event(self.stored[p])  # the last step's copy to host has landed
            for key in host:
                state[key] = _copy(host[key], p.device)
                for leaf in tensor_leaves(state[key]):
                    leaf.record_stream(compute)  # made on the upload stream, used and freed on the others
                    leaf.record_stream(self.download)
        compute.wait_stream(self.upload)

    def store(self, p, state):
        """After p's step: its state back into its host tensors (made the first time), or kept on the GPU where
        there is room."""
        if p in self.on_gpu:
            return
        host = self.tensors.get(p)
        if not host:
            self.take(p, state)
            return
        size = _state_bytes(host)
        if size <= self.room:
            self.room -= size
            self.on_gpu.add(p)
            self.stored.pop(p, None)
            del self.tensors[p]  # the pinned host copy is freed
            return
        if not self.cuda or p.device.type != "cuda":
            for key in host:
                _copy_into(host[key], state[key])
                state[key] = host[key]
            return
        self.download.wait_stream(torch.cuda.current_stream(p.device))
        with torch.cuda.stream(self.download):
            for key in host:
                _copy_into(host[key], state[key])
                state[key] = host[key]  # the GPU copy is freed once the download stream is past it
            done = self.download.record_event()
        self.stored[p] = done
        self.in_flight.append((done, size))
        self.in_flight_bytes += size

    def take(self, p, state):
        """Copy p's state into its host tensors (made the first time) and put those in the optimizer's state. Only
        the state shaped like the weight moves (Adam's m and v); the step count, a 0-dim tensor that torch and
        torchao keep on the CPU for the host to read, stays where it is."""
        moving = [key for key, value in state.items() if torch.is_tensor(value) and value.shape == p.shape]
        if not moving:  # no state yet (an optimizer loaded before its first step, as Accelerate's prepare does)
            return
        host = self.tensors.setdefault(p, {})
        for key in moving:
            value = state[key]
            if key in host:
                host[key].copy_(value)  # torchao's 8-bit state copies its codes and scales
            else:
                host[key] = _copy(value, torch.device("cpu"), pin=self.cuda)
            state[key] = host[key]
        self.on_gpu.discard(p)

    def after_step(self):
        """At the end of each step; after the first, the room the cap leaves is given to state that stays on the
        GPU."""
        self.steps += 1
        if self.steps != 1 or not self.cuda:
            return
        device = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)(device)
        limit = min(torch.cuda.memory_reserved(device) + free, fraction * total)  # CLM_GPU_MEMORY_GIB's cap too
        self.room = max(0, int(limit - torch.cuda.max_memory_reserved(device) - self.HEADROOM))
        state = sum(_state_bytes(host) for host in self.tensors.values())
        if state:
            print(f"optimizer state: {min(self.room, state) / 2**30:.2f} of its {state / 2**30:.2f} GiB stays on the "
                  f"GPU from step 2 (the room under the GPU's limit after step 1, less "
                  f"{self.HEADROOM / 2**30:.0f} GiB kept free); the rest moves over PCIe each step", flush=True)

    def settle(self):
        """Wait for every copy to host, so that the host tensors hold the last step's state."""
        if self.cuda:
            self.download.synchronize()
        self.in_flight.clear()
        self.in_flight_bytes = 0

    def _wait_for_room(self, size):
        """Hold the host back while the state in flight would pass the limit: wait for the oldest copy to host."""
        while self.in_flight and self.in_flight_bytes + size > self.IN_FLIGHT:
            event, done = self.in_flight.popleft()
            event.synchronize()
            self.in_flight_bytes -= done


def tensor_leaves(value):
    """The plain tensors of a tensor or of a tensor subclass such as torchao's 8-bit state."""
    if is_traceable_wrapper_subclass(value):
        names, _ = value.__tensor_flatten__()
        return [leaf for name in names for leaf in tensor_leaves(getattr(value, name))]
    return [value]


def _state_bytes(state):
    """Bytes of a weight's state ({key: tensor or torchao's 8-bit state}), on whichever device it is."""
    return sum(leaf.numel() * leaf.element_size() for value in state.values() for leaf in tensor_leaves(value))


def _copy_into(out, value):
    """out (a host tensor, or torchao's 8-bit state in host tensors) takes value's data, not waiting for the GPU."""
    for target, source in zip(tensor_leaves(out), tensor_leaves(value)):
        target.copy_(source, non_blocking=True)


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
    if training_args.world_size > 1:
        problems.append(f"{flag} on {training_args.world_size} processes: each would step on its own gradients "
                        "before they are shared; run it on one GPU")
    return problems

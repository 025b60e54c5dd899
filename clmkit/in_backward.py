"""The optimizer step inside the backward pass (--optimizer_in_backward): each parameter is updated by an optimizer of
its own as soon as its gradient is complete, and the gradient is freed there, so the full set of gradients never
exists at once. For GPT-2 XL in bf16 that is 2.9 GiB of the card, and for a 3B model 6 GiB: room a larger model
needs. PyTorch's post-accumulate-grad hooks do the work; the Trainer holds an optimizer whose step has nothing left
to do and whose learning rate its schedule sets.

What it cannot do, and the checks refuse: clip by the norm of all gradients (it is known only after every
parameter has stepped), accumulate gradients over micro-batches (each backward would step), or share gradients
between GPUs (each would step on its own).
"""

import torch


class OptimizerInBackward(torch.optim.Optimizer):
    """What the Trainer sees: one parameter group per Trainer group (weight decay or none), carrying the learning
    rate of the schedule. The updates happen in `_step_one`, in the backward pass."""

    def __init__(self, params, inner_cls, **inner_kwargs):
        super().__init__(params, defaults={"lr": inner_kwargs.get("lr", 1e-3)})
        self.inner_cls = inner_cls
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
        optimizer.step()
        p.grad = None

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
        for (optimizer, _), state in zip(self.inner.values(), saved):
            optimizer.load_state_dict(state)
        for group, lr in zip(self.param_groups, state_dict["lr"]):
            group["lr"] = lr


def in_backward_problems(training_args):
    """What --optimizer_in_backward cannot do with the other flags: one line each, naming the change."""
    if not getattr(training_args, "optimizer_in_backward", False):
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

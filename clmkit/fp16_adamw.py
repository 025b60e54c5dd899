"""The fp16 mode's optimizer: fp16 weights trained with no fp32 copy, for cards without bf16 (T4, V100, P100).

Three things make that train like fp32 master weights:
- stochastic rounding: each updated weight goes to one of its two fp16 neighbours, the nearer one more often, so
  that on average it lands where the fp32 update put it. Rounded to the nearest, an update smaller than half of
  fp16's step at that weight is lost every time, and most of a fine-tune's updates are that small.
- a dynamic loss scale: the loss is multiplied before the backward pass so that small fp16 gradients do not flush
  to zero; the gradients are divided by it again in fp32, inside the step. A step whose gradients overflowed is
  skipped and the scale halved; after SCALE_WINDOW good steps it doubles.
- the gradient norm, clipping and the overflow check in one fp32 pass over the gradients.

torchao's 8-bit AdamW holds the state (8-bit m and v, on the card); its own step rounds stochastically to bf16 only
and cannot divide out a loss scale in fp32, so the step is written here.
"""

import functools
import math

import torch
from torchao.optim.subclass_8bit import OptimState8bit

from .adamw8bit import AdamW8bit, quantized

INITIAL_SCALE = 2.0**16
SCALE_WINDOW = 1000  # good steps before the scale doubles (DeepSpeed's default loss_scale_window)
MIN_SCALE = 1.0

FP16_MANTISSA_DROP = 13  # fp32 keeps 23 mantissa bits, fp16 10
FP16_SMALLEST_NORMAL = 2.0**-14
FP16_SUBNORMAL_STEP = 2.0**-24


def round_to_fp16_stochastic(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp16, up or down at random with the probabilities that make the expected result x itself.

    In fp16's normal range, adding a random number below 2^13 to the fp32 bit pattern and clearing its low 13 bits
    rounds the magnitude up with exactly that probability (a carry into the exponent is the next binade's first
    value). Below it, fp16's values are evenly spaced by 2^-24, and the same is done on x / 2^-24 as a number."""
    bits = x.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << FP16_MANTISSA_DROP)
    normal = ((bits + noise) & -(1 << FP16_MANTISSA_DROP)).view(torch.float32)
    subnormal = torch.floor(x / FP16_SUBNORMAL_STEP + torch.rand_like(x)) * FP16_SUBNORMAL_STEP
    return torch.where(x.abs() < FP16_SMALLEST_NORMAL, subnormal, normal).to(torch.float16)


def _adamw_step_fp16(p, grad, step, exp_avg, exp_avg_sq, lr, beta1, beta2, weight_decay, eps, grad_factor):
    """One AdamW update of one fp16 weight, computed in fp32; grad_factor undoes the loss scale and applies the
    clipping."""
    g = grad.float() * grad_factor
    weight = p.float() * (1 - lr * weight_decay)
    m = exp_avg.float().lerp(g, 1 - beta1)
    v = exp_avg_sq.float().lerp(g.square(), 1 - beta2)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    denominator = v.sqrt() / (1 - beta2**step).sqrt() + eps
    weight = weight - lr * (m / (1 - beta1**step)) / denominator
    p.copy_(round_to_fp16_stochastic(weight))


@functools.cache
def _compiled_update():
    return torch.compile(_adamw_step_fp16, fullgraph=True, dynamic=False)


def _update_for(p):
    """On a GPU, the update compiled into one kernel per parameter shape (as torchao compiles its own): eager, its
    fp32 temporaries would take several times the largest weight's size. On the CPU (tests, --use_cpu) it runs as
    written: compiling each shape there costs more than it saves."""
    return _adamw_step_fp16 if p.device.type == "cpu" else _compiled_update()


class Fp16AdamW8bit(AdamW8bit):
    """AdamW with 8-bit state for fp16 weights under a dynamic loss scale. The Trainer asks it for the gradient norm
    (grad_norm) before each step; step() then skips the update if that was not finite."""

    def __init__(self, params, *, max_grad_norm=0.0, **kwargs):
        kwargs.pop("bf16_stochastic_round", None)  # every fp16 update is rounded stochastically
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.loss_scale = INITIAL_SCALE
        self.good_steps = 0  # since the scale last changed
        self.skipped_steps = 0  # in the whole run, resumed part included
        self.last_step_skipped = False
        self._norm = None  # the unscaled gradient norm of the step about to be taken

    # -- state: 8-bit where torchao can quantize, else fp32 (fp16 would flush Adam's v, about g squared, to zero)

    @staticmethod
    def _subclass_zeros(p, signed, block_size):
        return OptimState8bit.zeros(p.shape, signed, block_size, p.device, dtype=torch.float32)

    def _new_buffer(self, p, signed):
        if quantized(p.numel(), self.block_size):
            return self._subclass_zeros(p, signed, self.block_size)
        return torch.zeros(p.shape, dtype=torch.float32, device=p.device)

    # -- the loss scale and the gradients

    def grad_norm(self):
        """The gradient norm with the loss scale divided out, summed in fp32 (inf or nan: the gradients overflowed)."""
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return 0.0
        # One multi-tensor kernel launch for all the norms, not one per weight (580 for GPT-2 XL).
        squares = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).square().sum()
        self._norm = math.sqrt(squares.item()) / self.loss_scale
        return self._norm

    @torch.no_grad()
    def step(self, closure=None):
        norm = self._norm if self._norm is not None else self.grad_norm()
        self._norm = None
        self.last_step_skipped = not math.isfinite(norm)
        if self.last_step_skipped:
            self.skipped_steps += 1
            self.loss_scale = max(MIN_SCALE, self.loss_scale / 2)
            self.good_steps = 0
            return None
        clip = min(1.0, self.max_grad_norm / (norm + 1e-6)) if self.max_grad_norm > 0 else 1.0
        with torch._dynamo.utils.disable_cache_limit():  # a compiled update per shape: a fixed, small number
            for group in self.param_groups:
                factor = torch.tensor(clip / self.loss_scale, dtype=torch.float32)
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.advanced_state(p, group)
                    _update_for(p)(p.detach(), p.grad, state["step"], state["exp_avg"], state["exp_avg_sq"],
                                   group["lr"], group["betas"][0], group["betas"][1], group["weight_decay"],
                                   group["eps"], factor)
        self.good_steps += 1
        if self.good_steps >= SCALE_WINDOW:
            self.loss_scale *= 2
            self.good_steps = 0
        return None

    # -- the scale and the counts travel with the optimizer state in every checkpoint

    def state_dict(self):
        state = super().state_dict()
        state["loss_scaling"] = {"loss_scale": self.loss_scale, "good_steps": self.good_steps,
                                 "skipped_steps": self.skipped_steps}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        scaling = state_dict.pop("loss_scaling", None)
        # torch casts each floating state tensor to its weight's dtype as it loads: the fp32 states would become
        # fp16 (Adam's v flushing to zero) and the 8-bit ones plain fp16 tensors, twice their size on the card.
        # They are kept aside and put back as they were saved.
        saved = state_dict["state"]
        kept = {index: {k: v for k, v in state.items() if k != "step"} for index, state in saved.items()}
        state_dict["state"] = {index: {k: v for k, v in state.items() if k == "step"} for index, state in saved.items()}
        super().load_state_dict(state_dict)
        indices = [index for group in state_dict["param_groups"] for index in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(indices, params):
            for key, value in kept.get(index, {}).items():
                self.state[p][key] = value.to(p.device)
        if scaling:
            self.loss_scale = scaling["loss_scale"]
            self.good_steps = scaling["good_steps"]
            self.skipped_steps = scaling["skipped_steps"]


class ScaleGradient(torch.autograd.Function):
    """The loss as it is going forward (what is logged), times `scale` going backward."""

    @staticmethod
    def forward(ctx, loss, scale):
        ctx.scale = scale
        return loss.view_as(loss)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None

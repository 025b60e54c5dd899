"""torchao's 8-bit AdamW (`--optim adamw_torch_8bit`) with its one-weight step compiled once.

torchao calls torch.compile() on its one-weight update for every weight at every step. The compiled code is cached,
but making the wrapper each time checks source files on disk: on a 2-core machine, 0.26 ms of host time a weight,
150 ms of a step over GPT-2's 580 weights. In the bf16 mode's 48-layer profile on an H200 the optimizer step spanned
640 ms of GPU time for 33 ms of kernels: the GPU waited on the host. torchao's own answer is not in a release
(pytorch/ao#2500), so the step here is torchao's loop calling the same update function, wrapped once: the
arithmetic, the state and the checkpoints are torchao's.
"""

import functools

import torch
from torchao.optim import AdamW8bit as TorchaoAdamW8bit
from torchao.optim.adam import single_param_adam

# torchao quantizes a state tensor in blocks of 256 elements, and only one of at least 4096 elements that splits into
# whole blocks; the others stay in the weights' dtype (fp32 in the fp16 mode's optimizer).
QUANTIZED_BLOCK, QUANTIZED_MIN = 256, 4096


def quantized(numel, block_size=QUANTIZED_BLOCK):
    """Whether torchao keeps the state of a weight of `numel` elements in 8 bits."""
    return numel >= QUANTIZED_MIN and numel % block_size == 0


@functools.cache
def compiled_update():
    return torch.compile(single_param_adam, fullgraph=True, dynamic=False)


def updates_of(weights, beta1, beta2, eps, is_adamw):
    """torchao's one-weight update for each of `weights` ((weight, gradient, step, m, v, its learning rate tensor, its
    weight decay, whether to round stochastically) each), in one function: compiled, one call for all."""
    for p, grad, step, exp_avg, exp_avg_sq, weight_lr, weight_decay, stochastic in weights:
        single_param_adam(p, grad, step, exp_avg, exp_avg_sq, None, weight_lr, beta1, beta2, weight_decay, eps,
                          is_adamw, stochastic)


@functools.cache
def compiled_updates():
    return torch.compile(updates_of, fullgraph=True, dynamic=False)


def step_together(optimizers):
    """One step of several AdamW8bit optimizers of one weight each (the optimizer stepped in the backward pass holds
    one a weight), in one compiled call: the host's work of a call, not of each weight. Equal betas, eps and AdamW
    flavour; without amsgrad. Returns False, stepping none, where they differ."""
    first = optimizers[0]
    settings = [(o.param_groups[0]["betas"], o.param_groups[0]["eps"], o.param_groups[0]["amsgrad"], o.is_adamw)
                for o in optimizers]
    if settings[0][2] or any(setting != settings[0] for setting in settings):
        return False
    weights = []
    for optimizer in optimizers:
        group = optimizer.param_groups[0]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.advanced_state(p, group)
            weights.append((p.detach(), p.grad, state["step"], state["exp_avg"], state["exp_avg_sq"], group["lr"],
                            group["weight_decay"], optimizer.bf16_stochastic_round and p.dtype is torch.bfloat16))
    (beta1, beta2), eps = first.param_groups[0]["betas"], first.param_groups[0]["eps"]
    with torch._dynamo.utils.disable_cache_limit():
        compiled_updates()(weights, beta1, beta2, eps, first.is_adamw)
    return True


class AdamW8bit(TorchaoAdamW8bit):
    """torchao's AdamW8bit; only the step's host work changes."""

    def advanced_state(self, p, group):
        """p's state for the step about to be taken: made (8-bit where torchao quantizes) at its first step, its step
        count advanced."""
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = self._new_buffer(p, True)
            state["exp_avg_sq"] = self._new_buffer(p, False)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = self._new_buffer(p, False)
        state["step"] += 1
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        update = compiled_update()
        # One compiled update per combination of shape and dtype among the weights: a fixed, small number.
        with torch._dynamo.utils.disable_cache_limit():
            for group in self.param_groups:
                if not torch.is_tensor(group["lr"]):
                    raise RuntimeError("the 8-bit AdamW's learning rate must stay a tensor (set it with "
                                       "param_groups[i]['lr'].fill_(value)): a float would recompile its step")
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.advanced_state(p, group)
                    update(p.detach(), p.grad, state["step"], state["exp_avg"], state["exp_avg_sq"],
                           state.get("max_exp_avg_sq"), group["lr"], group["betas"][0], group["betas"][1],
                           group["weight_decay"], group["eps"], self.is_adamw,
                           self.bf16_stochastic_round and p.dtype is torch.bfloat16)
        return loss

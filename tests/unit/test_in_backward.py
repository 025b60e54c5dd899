"""--optimizer_in_backward: each weight steps in the backward pass, as its own optimizer would have stepped it."""

import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from clmkit.in_backward import OptimizerInBackward

HYPER = {"lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8}


def tiny_gpt2(dtype=torch.float32):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=97, n_positions=32, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).to(dtype)


def groups(model):
    """The Trainer's two groups: weight decay on matrices, none on biases and norms."""
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def batches(steps):
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 97, (4, 32), generator=generator) for _ in range(steps)]


def train(model, optimizer, data, in_backward):
    losses = []
    for ids in data:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if in_backward:
            assert all(p.grad is None for p in model.parameters())  # stepped and freed during the backward
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_stepping_in_the_backward_is_the_same_adamw_step():
    plain, stepped_early = tiny_gpt2(), tiny_gpt2()
    data = batches(5)
    train(plain, torch.optim.AdamW(groups(plain), **HYPER), data, in_backward=False)
    train(stepped_early, OptimizerInBackward(groups(stepped_early), torch.optim.AdamW, **HYPER), data,
          in_backward=True)
    for (name, p), q in zip(plain.named_parameters(), stepped_early.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name


def test_the_learning_rate_the_schedule_sets_reaches_every_weight():
    model = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(model), torch.optim.AdamW, **HYPER)
    before = copy.deepcopy(model.state_dict())
    for group in optimizer.param_groups:
        group["lr"] = 0.0  # as a schedule at its end would set it
    train(model, optimizer, batches(1), in_backward=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_resumed_optimizer_goes_on_as_the_uninterrupted_one():
    data = batches(6)
    whole = tiny_gpt2()
    train(whole, OptimizerInBackward(groups(whole), torch.optim.AdamW, **HYPER), data, in_backward=True)
    first = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(first), torch.optim.AdamW, **HYPER)
    train(first, optimizer, data[:3], in_backward=True)
    saved_weights, saved_optimizer = copy.deepcopy(first.state_dict()), copy.deepcopy(optimizer.state_dict())
    resumed = tiny_gpt2()
    resumed.load_state_dict(saved_weights)
    optimizer = OptimizerInBackward(groups(resumed), torch.optim.AdamW, **HYPER)
    optimizer.load_state_dict(saved_optimizer)
    train(resumed, optimizer, data[3:], in_backward=True)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


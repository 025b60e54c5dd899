"""--optimizer_in_backward: each weight steps in the backward pass, as its own optimizer would have stepped it."""

import copy

import pytest
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


def test_with_the_state_on_host_the_weights_are_the_same():
    """--optimizer_state_on_host moves each state to the weight's device for its step and back: the same AdamW."""
    kept, moved = tiny_gpt2(), tiny_gpt2()
    data = batches(5)
    train(kept, OptimizerInBackward(groups(kept), torch.optim.AdamW, **HYPER), data, in_backward=True)
    train(moved, OptimizerInBackward(groups(moved), torch.optim.AdamW, state_on_host=True, **HYPER), data,
          in_backward=True)
    for (name, p), q in zip(kept.named_parameters(), moved.parameters()):
        assert torch.equal(p, q), name


def test_with_the_state_on_host_torchaos_8bit_state_steps_the_same(monkeypatch):
    """The bf16 mode's optimizer: bf16 weights, torchao's 8-bit AdamW with stochastic rounding. Its state is a
    tensor subclass (codes, scales and a quantization map), moved through the plain tensors inside it. torchao
    compiles its step; here it runs eagerly (compiling each shape on the CPU takes seconds), as the move around it
    does not depend on that."""
    from torchao.optim import AdamW8bit
    from torchao.optim.subclass_8bit import OptimState8bit

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    torch.manual_seed(0)
    start = [torch.randn(64, 64) * 0.02, torch.randn(64, 64) * 0.02, torch.zeros(64)]  # 8-bit, 8-bit, plain state
    inputs = [torch.randn(16, 64, dtype=torch.bfloat16) for _ in range(4)]

    def run(**flag):
        weights = [torch.nn.Parameter(w.bfloat16()) for w in start]
        optimizer = OptimizerInBackward([{"params": weights, "weight_decay": 0.1}], AdamW8bit,
                                        bf16_stochastic_round=True, **HYPER, **flag)
        torch.manual_seed(1)  # the same stochastic rounding in both runs
        for x in inputs:
            ((x @ weights[0] @ weights[1] + weights[2]).float() ** 2).mean().backward()
        return weights, optimizer

    kept, _ = run()
    moved, optimizer = run(state_on_host=True)
    assert not torch.equal(moved[0], start[0].bfloat16())
    for p, q in zip(kept, moved):
        assert torch.equal(p, q)
    p = moved[0]
    exp_avg = optimizer.inner[p][0].state[p]["exp_avg"]
    assert isinstance(exp_avg, OptimState8bit) and exp_avg is optimizer.host_state[p]["exp_avg"]


def test_between_steps_the_state_is_in_its_host_tensors_and_each_step_works_on_a_copy():
    """The state each step works on is a copy on the weight's device; after the step the optimizer holds the same
    host tensors as before (pinned where CUDA is here), and the step count stays where torch keeps it."""
    model = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(model), torch.optim.AdamW, state_on_host=True, **HYPER)
    stepped_on = set()  # the data of every state tensor an inner step was given
    for inner, _ in optimizer.inner.values():
        inner.register_step_pre_hook(lambda opt, args, kwargs: stepped_on.update(
            v.data_ptr() for state in opt.state.values() for k, v in state.items() if k != "step"))
    host = None
    for ids in batches(3):
        train(model, optimizer, [ids], in_backward=True)
        now = {(p, k): v for p in model.parameters() for k, v in optimizer.inner[p][0].state[p].items()}
        assert {k for _, k in now} == {"step", "exp_avg", "exp_avg_sq"}
        for (p, k), v in now.items():
            assert v.device.type == "cpu" and v.is_pinned() == (torch.cuda.is_available() and k != "step")
        moved = {key: v.data_ptr() for key, v in now.items() if key[1] != "step"}
        assert host is None or moved == host  # the same host tensors, step after step
        host = moved
    assert stepped_on and not stepped_on & set(host.values())


def test_an_optimizer_prepared_by_accelerate_still_keeps_its_state_on_host():
    """Accelerate's prepare (the Trainer's) loads the optimizer's own state dict into it before the first step, when
    no weight has a state yet. Every weight's state still goes to its host tensors at its first step and stays
    there; none is taken for state with room to stay on the GPU (which is how a 7B run filled a 16 GiB card)."""
    from accelerate import Accelerator

    model = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(model), torch.optim.AdamW, state_on_host=True, **HYPER)
    prepared = Accelerator(cpu=True).prepare_optimizer(optimizer)
    for ids in batches(2):
        model(input_ids=ids, labels=ids).loss.backward()
        prepared.step()
    assert not optimizer.host.on_gpu
    for p in model.parameters():
        host = optimizer.host_state[p]
        assert set(host) == {"exp_avg", "exp_avg_sq"}
        assert all(optimizer.inner[p][0].state[p][key] is host[key] for key in host)


def test_a_resumed_optimizer_with_the_state_on_host_goes_on_as_the_uninterrupted_one():
    """torch loads a state onto its weight's device; with the state on host it goes back into host tensors, which
    hold the checkpoint's values, not the checkpoint's tensors themselves."""
    data = batches(6)
    whole = tiny_gpt2()
    train(whole, OptimizerInBackward(groups(whole), torch.optim.AdamW, state_on_host=True, **HYPER), data,
          in_backward=True)
    first = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(first), torch.optim.AdamW, state_on_host=True, **HYPER)
    train(first, optimizer, data[:3], in_backward=True)
    saved_weights, saved_optimizer = copy.deepcopy(first.state_dict()), copy.deepcopy(optimizer.state_dict())
    resumed = tiny_gpt2()
    resumed.load_state_dict(saved_weights)
    optimizer = OptimizerInBackward(groups(resumed), torch.optim.AdamW, state_on_host=True, **HYPER)
    loaded = [v for state in saved_optimizer["in_backward"] for s in state["state"].values() for v in s.values()]
    optimizer.load_state_dict(saved_optimizer)
    # each weight's loaded state is let go once it has its host tensors: host RAM holds the state once, not twice
    assert saved_optimizer["in_backward"] == [None] * len(loaded_params := list(resumed.parameters()))
    for p in loaded_params:
        for key, value in optimizer.host_state[p].items():
            assert optimizer.inner[p][0].state[p][key] is value and all(value is not v for v in loaded)
    train(resumed, optimizer, data[3:], in_backward=True)
    for p, q in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


LOAD_PEAK = """
import resource, sys, torch
from clmkit.in_backward import OptimizerInBackward
torch.manual_seed(0)
weights = [torch.nn.Parameter(torch.randn(2048, 1024)) for _ in range(12)]
optimizer = OptimizerInBackward([{"params": weights}], torch.optim.AdamW, state_on_host=True, lr=1e-3)
if sys.argv[1] == "save":
    sum(w.sum() for w in weights).backward()
    torch.save(optimizer.state_dict(), sys.argv[2])
else:
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * resource.getpagesize()  # resident now (the peak so far may be higher)
    optimizer.load_state_dict(torch.load(sys.argv[2], weights_only=True))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before)
"""


def test_loading_a_checkpoint_holds_the_state_on_host_about_once(tmp_path):
    """A 7B model's 8-bit state is 12.7 GiB: loaded whole by torch.load and then copied weight by weight into the
    host tensors it trains in, a resume would need twice that. Each weight's loaded state is let go as soon as it
    has its own, so the host peak while loading is the state and little more (here fp32 AdamW's m and v of 25M
    weights, 200 MB)."""
    import subprocess
    import sys

    from conftest import REPO

    path = tmp_path / "optimizer.pt"
    saved = subprocess.run([sys.executable, "-c", LOAD_PEAK, "save", path], cwd=REPO, capture_output=True, text=True)
    assert saved.returncode == 0, saved.stderr[-2000:]
    state_bytes = 2 * 12 * 2048 * 1024 * 4
    assert path.stat().st_size > state_bytes
    loaded = subprocess.run([sys.executable, "-c", LOAD_PEAK, "load", path], cwd=REPO, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    peak = int(loaded.stdout.split()[-1])
    assert state_bytes * 0.9 < peak < state_bytes * 1.3, peak / state_bytes


def test_clipping_in_the_backward_clips_its_first_step_exactly_and_later_ones_by_the_larger_norm():
    """The first step's norm is measured by a pass that steps nothing, so the first step is clipped as the Trainer
    would clip it; later steps are clipped by the larger of the last step's norm and the norm so far, and report
    the norm of their own gradients. Without the clip (a norm never reached) the steps are plain AdamW's."""
    data = batches(5)
    exact = tiny_gpt2()
    reference = torch.optim.AdamW(groups(exact), **HYPER)
    exact_norms = []
    for ids in data:
        exact(input_ids=ids, labels=ids).loss.backward()
        exact_norms.append(torch.nn.utils.clip_grad_norm_(exact.parameters(), 0.3).item())
        reference.step()
        reference.zero_grad()
        if len(exact_norms) == 1:
            after_one = [p.detach().clone() for p in exact.parameters()]
    assert min(exact_norms) > 0.3  # every step clipped

    model = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(model), torch.optim.AdamW, max_grad_norm=0.3, **HYPER)
    norms, lasts = [], []
    for step, ids in enumerate(data):
        if optimizer.clip.needs_measuring():
            optimizer.clip.measuring = True
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.clip.measuring = False
            optimizer.clip.end_step()
        lasts.append(optimizer.clip.last.item())
        model(input_ids=ids, labels=ids).loss.backward()
        norms.append(optimizer.clip.norm().item())
        optimizer.step()
        if step == 0:
            for p, q in zip(model.parameters(), after_one):
                torch.testing.assert_close(p, q)
    assert norms[0] == pytest.approx(exact_norms[0], rel=1e-5) and lasts[0] == pytest.approx(norms[0] ** 2, rel=1e-5)
    assert lasts[1:] == pytest.approx([n ** 2 for n in norms[:-1]], rel=1e-6)  # each step clips by the last's
    assert norms == pytest.approx(exact_norms, rel=0.2)
    for p, q in zip(model.parameters(), exact.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0.02)

    unclipped, plain = tiny_gpt2(), tiny_gpt2()
    train(unclipped, OptimizerInBackward(groups(unclipped), torch.optim.AdamW, max_grad_norm=1e9, **HYPER), data,
          in_backward=False)
    train(plain, torch.optim.AdamW(groups(plain), **HYPER), data, in_backward=False)
    for p, q in zip(unclipped.parameters(), plain.parameters()):
        torch.testing.assert_close(p, q)


def test_a_resumed_optimizer_clips_its_first_step_by_the_norm_the_checkpoint_kept():
    model = tiny_gpt2()
    optimizer = OptimizerInBackward(groups(model), torch.optim.AdamW, max_grad_norm=0.3, **HYPER)
    optimizer.clip.last = torch.tensor(4.0)
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = OptimizerInBackward(groups(tiny_gpt2()), torch.optim.AdamW, max_grad_norm=0.3, **HYPER)
    assert resumed.clip.needs_measuring()
    resumed.load_state_dict(saved)
    assert not resumed.clip.needs_measuring() and resumed.clip.last.item() == 4.0


def test_a_blocks_weights_step_in_one_call_once_the_last_has_its_gradient(monkeypatch):
    """Given the model's blocks, each block's 8-bit updates run as one call (the host's work of one call, not of each
    weight's), when the block's last gradient arrives; the weights end as if each had stepped on its own. A weight
    that got no gradient in a step (unused) does not hold its block's other weights back: they step at the end."""
    from clmkit import adamw8bit
    from clmkit.adamw8bit import AdamW8bit

    calls = []

    def counted(weights, *args):
        calls.append(len(weights))
        adamw8bit.updates_of(weights, *args)

    # as written, not compiled: the same arithmetic, in a unit test's time
    monkeypatch.setattr(adamw8bit, "compiled_update", lambda: adamw8bit.single_param_adam)
    monkeypatch.setattr(adamw8bit, "compiled_updates", lambda: counted)
    data = batches(3)
    alone = tiny_gpt2()
    train(alone, OptimizerInBackward(groups(alone), AdamW8bit, max_grad_norm=1.0, **HYPER), data, in_backward=True)
    assert calls == []
    together = tiny_gpt2()
    unused = torch.nn.Parameter(torch.zeros(64))
    blocks = [list(block.parameters()) for block in together.transformer.h]
    optimizer = OptimizerInBackward(groups(together) + [{"params": [unused]}], AdamW8bit, max_grad_norm=1.0,
                                    blocks=[blocks[0], blocks[1] + [unused]], **HYPER)
    for ids in data:
        together(input_ids=ids, labels=ids).loss.backward()
        waiting = [p for p in together.parameters() if p.grad is not None]
        assert waiting == blocks[1]  # the block with the unused weight, until the step
        optimizer.step()
        assert all(p.grad is None for p in together.parameters())
    assert calls == [12, 12] * 3  # each block's 12 weights in one call, every step
    for p, q in zip(alone.parameters(), together.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(together.transformer.h[1].mlp.c_fc.weight, tiny_gpt2().transformer.h[1].mlp.c_fc.weight)

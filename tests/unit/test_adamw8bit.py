"""The 8-bit AdamW the tool trains with: torchao's arithmetic, its compiled step built once rather than per weight."""

import torch
import torchao.optim
from transformers import TrainingArguments

from clmkit.adamw8bit import AdamW8bit
from clmkit.trainer import ClmTrainer

SHAPES = [(64, 192), (192,), (64, 64), (64,), (256, 64)]  # quantized (4096 values or more) and not


def weights():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(shape, dtype=torch.bfloat16) * 0.02) for shape in SHAPES]


def train(optimizer_cls, steps=4):
    params = weights()
    optimizer = optimizer_cls([{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:]}], lr=1e-2,
                              bf16_stochastic_round=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        optimizer.param_groups[0]["lr"].fill_(optimizer.param_groups[0]["lr"].item() * 0.9)  # as a schedule does
        optimizer.step()
    return params, optimizer


def plain(state):
    return state.dequantize() if hasattr(state, "dequantize") else state


def test_the_same_weights_and_state_as_torchaos_step():
    ours, our_optimizer = train(AdamW8bit)
    theirs, their_optimizer = train(torchao.optim.AdamW8bit)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
    for p, q in zip(ours, theirs):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(plain(our_optimizer.state[p][key]), plain(their_optimizer.state[q][key]))
    assert int(our_optimizer.state[ours[0]]["step"]) == 4


def test_a_step_builds_no_compile_wrapper(monkeypatch):
    train(AdamW8bit, steps=1)  # compiles
    built = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: built.append(a) or real(*a, **k))
    train(AdamW8bit, steps=3)
    assert built == []
    train(torchao.optim.AdamW8bit, steps=1)  # what the wrapper saves: one per weight per step
    assert len(built) == len(SHAPES)


def test_the_trainer_trains_with_it_for_adamw_torch_8bit(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_torch_8bit", use_cpu=True, report_to=[])
    optimizer_cls, _ = ClmTrainer.get_optimizer_cls_and_kwargs(None, args)
    assert optimizer_cls is AdamW8bit


def test_the_quantize_rule_the_plan_and_the_fp16_mode_use_is_torchaos():
    """clmkit.adamw8bit.quantized says which weights' state is 8-bit for the plan and the fp16 mode's optimizer:
    it must agree with what torchao's optimizer actually makes."""
    from torchao.optim.subclass_8bit import OptimState8bit

    from clmkit.adamw8bit import quantized

    optimizer = AdamW8bit([torch.nn.Parameter(torch.zeros(1))])
    for numel in (64, 4095, 4096, 4352, 4097, 50257 * 64, 1600 * 4800):
        made = optimizer._new_buffer(torch.zeros(numel), signed=True)
        assert quantized(numel) == isinstance(made, OptimState8bit), numel

"""The fp16 mode's arithmetic: stochastic rounding to fp16, and its 8-bit AdamW under a loss scale."""

import pytest
import torch

from clmkit import fp16_adamw
from clmkit.fp16_adamw import Fp16AdamW8bit, ScaleGradient, round_to_fp16_stochastic

FP16_STEP_AT_ONE = 2.0**-10


@pytest.mark.parametrize("start", [1.0, -1.0, 3e-6])  # the last in fp16's subnormal range, spaced by 2^-24
def test_updates_smaller_than_one_fp16_step_add_up_on_average(start):
    """200 updates of a tenth of fp16's step at the weight: rounded to the nearest, each is lost and the weight never
    moves; rounded stochastically, the mean over 20,000 weights lands where fp32 arithmetic puts it, within 0.5% of
    the distance travelled."""
    torch.manual_seed(0)
    step = FP16_STEP_AT_ONE * abs(start) if abs(start) >= 2**-14 else 2.0**-24
    update, n = step / 10, 200
    exact = torch.tensor(start, dtype=torch.float16).item() + n * update
    nearest = torch.full((20000,), start, dtype=torch.float16)
    stochastic = nearest.clone()
    for _ in range(n):
        nearest = (nearest.float() + update).half()
        stochastic = round_to_fp16_stochastic(stochastic.float() + update)
    travelled = n * update
    assert abs(stochastic.float().mean().item() - exact) < 0.005 * travelled
    assert abs(nearest.float().mean().item() - exact) > 0.9 * travelled


def test_values_fp16_holds_are_kept_exactly():
    values = torch.randn(10000).half().float()
    values[:4] = torch.tensor([0.0, 2.0**-24, -(2.0**-14), 65504.0])
    assert torch.equal(round_to_fp16_stochastic(values), values.half())


def test_each_value_rounds_to_one_of_its_two_fp16_neighbours():
    x = torch.randn(100000) * 10.0 ** torch.randint(-7, 3, (100000,)).float()
    rounded = round_to_fp16_stochastic(x).float()
    down, up = x.half().float(), x.half().float()
    below = down > x
    down[below] = torch.nextafter(x.half()[below], torch.tensor(-float("inf"), dtype=torch.float16)).float()
    above = up < x
    up[above] = torch.nextafter(x.half()[above], torch.tensor(float("inf"), dtype=torch.float16)).float()
    assert torch.all((rounded == down) | (rounded == up))


def _scaled_grads(optimizer, params, grads):
    for p, g in zip(params, grads):
        p.grad = (g * optimizer.loss_scale).half()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_update_follows_fp32_adamw_within_five_percent(compiled, monkeypatch):
    """Ten steps from the same weights with the same gradients (scaled by the loss scale, as the backward pass makes
    them): the distance each weight travels matches torch's fp32 AdamW within 5% overall; the gap is the 8-bit
    state's quantization and the rounding. Compiled is the GPU's path (one kernel per shape, the 8-bit state and
    the rounding's bit operations traced whole), run here by Inductor's CPU backend."""
    if compiled:
        update = torch.compile(fp16_adamw._adamw_step_fp16, fullgraph=True, dynamic=False)
        monkeypatch.setattr(fp16_adamw, "_update_for", lambda p: update)
    torch.manual_seed(0)
    start = [torch.randn(256, 64) * 0.02, torch.randn(64) * 0.02]  # one quantized state, one small fp32 one
    fp16 = [torch.nn.Parameter(w.half()) for w in start]
    fp32 = [torch.nn.Parameter(w.half().float()) for w in start]
    ours = Fp16AdamW8bit(fp16, lr=1e-3, weight_decay=0.01)
    reference = torch.optim.AdamW(fp32, lr=1e-3, weight_decay=0.01)
    for _ in range(10):
        grads = [torch.randn_like(w) * 1e-3 for w in start]
        _scaled_grads(ours, fp16, grads)
        for p, g in zip(fp32, grads):
            p.grad = g.half().float()
        ours.step()
        reference.step()
    for p16, p32, w in zip(fp16, fp32, start):
        moved, expected = p16.float() - w.half().float(), p32.detach() - w.half().float()
        assert (moved - expected).norm() < 0.05 * expected.norm()
    assert isinstance(ours.state[fp16[0]]["exp_avg"], fp16_adamw.OptimState8bit)
    assert ours.state[fp16[1]]["exp_avg_sq"].dtype == torch.float32  # fp16 would flush g squared to zero


def test_an_overflowed_step_is_skipped_and_the_scale_halves_then_grows_back(monkeypatch):
    monkeypatch.setattr(fp16_adamw, "SCALE_WINDOW", 3)
    p = torch.nn.Parameter(torch.randn(64, 64).half())
    optimizer = Fp16AdamW8bit([p], lr=1e-3)
    p.grad = torch.full_like(p, float("inf"))
    before = p.detach().clone()
    assert optimizer.grad_norm() == float("inf")
    optimizer.step()
    assert torch.equal(p.detach(), before) and optimizer.last_step_skipped
    assert (optimizer.loss_scale, optimizer.skipped_steps) == (2.0**15, 1)
    for _ in range(3):
        p.grad = torch.randn_like(p) * 1e-3 * optimizer.loss_scale
        optimizer.step()
    assert not torch.equal(p.detach(), before)
    assert (optimizer.loss_scale, optimizer.skipped_steps) == (2.0**16, 1)


def test_the_gradient_norm_has_the_scale_divided_out_and_clips():
    p = torch.nn.Parameter(torch.zeros(100).half())
    optimizer = Fp16AdamW8bit([p], lr=1.0, max_grad_norm=1.0, weight_decay=0.0, betas=(0.0, 0.0))
    p.grad = torch.full_like(p, 0.5 * optimizer.loss_scale)  # true norm: 0.5 x 10 = 5
    assert optimizer.grad_norm() == pytest.approx(5.0)


def test_the_loss_scale_and_states_survive_a_checkpoint_as_they_were():
    """torch's load_state_dict casts state tensors to the weight's dtype: the fp32 and 8-bit states must come back
    as saved, with the loss scale and the count of skipped steps."""
    params = [torch.nn.Parameter(torch.randn(256, 64).half()), torch.nn.Parameter(torch.randn(64).half())]
    optimizer = Fp16AdamW8bit(params, lr=1e-3)
    for _ in range(2):
        _scaled_grads(optimizer, params, [torch.randn_like(p.float()) * 1e-3 for p in params])
        optimizer.step()
    assert optimizer.skipped_steps == 0
    optimizer.loss_scale, optimizer.skipped_steps = 512.0, 7
    saved = optimizer.state_dict()
    again = Fp16AdamW8bit(params, lr=1e-3)
    again.load_state_dict(saved)
    assert (again.loss_scale, again.skipped_steps) == (512.0, 7)
    for p in params:
        for key in ("exp_avg", "exp_avg_sq"):
            restored, original = again.state[p][key], optimizer.state[p][key]
            assert type(restored) is type(original) and restored.dtype == original.dtype
            plain = [t.dequantize() if isinstance(t, fp16_adamw.OptimState8bit) else t for t in (restored, original)]
            assert torch.equal(*plain)


def test_the_loss_goes_forward_as_it_is_and_backward_scaled():
    w = torch.tensor(2.0, requires_grad=True)
    loss = ScaleGradient.apply(w * 3, 1024.0)
    loss.backward()
    assert loss.item() == 6.0 and w.grad.item() == 3 * 1024

"""The memory estimate, checked in ways its fitted constants cannot satisfy by construction: properties any correct
estimate has, and a prediction written down before the run that measured it (docs/plan-calibration.md)."""

import dataclasses

import pytest
from transformers import GPT2Config, GPTJConfig, GPTNeoConfig

from clmkit.loss import chunk_tokens_for
from clmkit.machine import GiB, Machine
from clmkit.plan import Plan, Setup, estimate, model_shape
from clmkit.plan_report import report, stop_problems
from conftest import REPO


@pytest.fixture(scope="module")
def xl():
    return model_shape(GPT2Config(n_embd=1600, n_layer=48, n_head=25))


CLASSIC = Setup(micro_batch=8, accumulation=2, block_size=1024, precision="fp16", checkpointing=True,
                deepspeed="ds_config.json", stage=2, offload_optimizer=True, pin_memory=True, overlap_comm=True,
                mode="classic", launcher=True)
CLASSIC_FLAGS = {"deepspeed": "ds_config.json", "fp16": True}  # the classic command's given mode flags
BF16_MODE = Setup(micro_batch=8, accumulation=2, block_size=1024, precision="bf16", checkpointing=True,
                  chunk_tokens=2048, weights="bf16", optim="adamw_torch_8bit", mode="bf16")


def machine(gpu_gib=16, ram_gib=64, disk_gib=500, bf16=True):
    return Machine(gpus=[("GPU 0 (assumed)", gpu_gib * GiB)], gpu_note="", ram=ram_gib * GiB, ram_note="",
                   disk=disk_gib * GiB, disk_path="/", disk_note="", bf16=bf16)


def test_the_shape_is_gpt2_xl(xl):
    assert xl.n_params == 1_557_611_200  # GPT-2 XL's published count, tied embeddings once
    assert (xl.hidden, xl.layers, xl.heads, xl.vocab) == (1600, 48, 25, 50257)


@pytest.mark.parametrize("setup", [CLASSIC, BF16_MODE], ids=["classic", "bf16-mode"])
def test_a_bigger_micro_batch_grows_activations_not_model_states(xl, setup):
    one, two = estimate(xl, setup), estimate(xl, dataclasses.replace(setup, micro_batch=2 * setup.micro_batch))
    assert two.gpu_states == one.gpu_states and two.gpu_buffers == one.gpu_buffers
    assert two.host_optimizer == one.host_optimizer and two.disk_checkpoint == one.disk_checkpoint
    assert two.kept == pytest.approx(2 * one.kept, rel=1e-9)
    assert two.activations > one.activations


def test_offloading_the_optimizer_moves_adam_state_from_gpu_to_host(xl):
    offloaded = estimate(xl, CLASSIC)
    on_gpu = estimate(xl, dataclasses.replace(CLASSIC, offload_optimizer=False, pin_memory=False))
    assert offloaded.host_optimizer == 8 * xl.n_params  # Adam's fp32 m and v
    assert on_gpu.host_optimizer == 0
    # On the GPU: fp32 master weights and m and v (12 bytes a parameter) instead of none
    assert on_gpu.gpu_states - offloaded.gpu_states >= 12 * xl.n_params
    assert on_gpu.host < offloaded.host


def test_gradient_checkpointing_keeps_one_input_per_layer(xl):
    with_it = estimate(xl, CLASSIC)
    without = estimate(xl, dataclasses.replace(CLASSIC, checkpointing=False))
    assert without.kept > 10 * with_it.kept  # every layer's activations, not each layer's input
    assert without.gpu_states == with_it.gpu_states


def test_the_chunked_loss_bounds_the_logits_by_the_chunk(xl):
    whole = estimate(xl, CLASSIC)
    chunked = estimate(xl, dataclasses.replace(CLASSIC, chunk_tokens=2048))
    assert chunked.loss == pytest.approx(whole.loss * 2048 / (8 * 1024))
    sixteen = estimate(xl, dataclasses.replace(CLASSIC, chunk_tokens=2048, micro_batch=16))
    assert sixteen.loss == chunked.loss  # more tokens, the same chunk


def test_an_8bit_adamw_saves_its_state_bytes(xl):
    eight = estimate(xl, BF16_MODE)
    full = estimate(xl, dataclasses.replace(BF16_MODE, optim="adamw_torch"))
    # bf16 m and v (4 bytes) against 8-bit m and v with their scales (2 bytes)
    assert full.gpu_states - eight.gpu_states == 2 * xl.n_params
    assert eight.host_optimizer == 0 and eight.host_pinned == 0  # nothing offloaded


def test_a_second_gpu_halves_each_gpus_share_of_zero_partitioned_state(xl):
    no_offload = dataclasses.replace(CLASSIC, offload_optimizer=False, pin_memory=False)
    one = estimate(xl, no_offload)
    two = estimate(xl, dataclasses.replace(no_offload, ranks=2))
    four = estimate(xl, dataclasses.replace(no_offload, ranks=4))
    # ZeRO-2 partitions gradients, master weights and Adam state, not the 16-bit weights: the partitioned share
    # halves from 1 to 2 GPUs and again from 2 to 4, the 16-bit weights stay whole on each
    assert four.gpu_states < two.gpu_states < one.gpu_states
    assert one.gpu_states - two.gpu_states == pytest.approx(2 * (two.gpu_states - four.gpu_states), rel=1e-6)
    assert four.gpu_states > 2 * xl.n_params
    assert two.host_baseline > one.host_baseline  # a second worker process


def test_weights_only_checkpoints_hold_the_weights_alone(xl):
    full = estimate(xl, CLASSIC)
    weights = estimate(xl, dataclasses.replace(CLASSIC, checkpoints=False))
    assert weights.disk_checkpoint == weights.disk_weights == 2 * xl.n_params
    assert full.disk_checkpoint == 16 * xl.n_params  # 16-bit weights twice, fp32 master weights, m and v


def test_the_advised_change_fits_where_the_run_as_given_does_not(xl):
    """fp32 AdamW without DeepSpeed needs 16 bytes a parameter on the GPU, 23 GiB for GPT-2 XL: the plan says it
    does not fit a 16 GiB card and names the fastest mode that does, whose own estimate fits."""
    plain = Setup(micro_batch=8, accumulation=2, block_size=1024, precision="fp16", checkpointing=True, mode="fp32")
    plan = Plan(xl, plain, machine(), "out")
    assert plan.status["GPU"] == "does not fit" and plan.verdict == "does not fit"
    change = plan.change()
    assert change.startswith("--mode bf16-in-backward"), change
    (mode, setup, verdict), = [row for row in plan.modes() if row[0].name == "bf16-in-backward"]
    assert verdict.startswith("fits") and (setup.micro_batch, setup.accumulation) == (16, 1)
    assert Plan(xl, setup, machine(), "out").verdict == "fits"
    assert "change: --mode bf16-in-backward" in report(plan)


def test_a_run_the_host_cannot_hold_is_stopped_with_its_terms(xl):
    plan = Plan(xl, CLASSIC, machine(ram_gib=8), "out")
    (line,) = stop_problems(plan)
    assert line.startswith("host RAM: the run needs about") and "optimizer state" in line
    assert stop_problems(Plan(xl, CLASSIC, machine(ram_gib=256), "out")) == []


def test_gpt_neo_as_predicted_before_it_was_measured():
    """Predicted on 2026-11-27, before the run, with no constant refitted to it after: GPT-Neo 2.7B-sized, classic
    flags, on an H100 capped at 16 GiB, measured 11.59 GiB allocated and 70.8 GiB host RAM (the process tree)."""
    shape = model_shape(GPTNeoConfig.from_json_file(f"{REPO}/bench/configs/gpt-neo-2.7B/config.json"))
    needs = estimate(shape, dataclasses.replace(CLASSIC, launcher=True))
    assert needs.gpu / GiB == pytest.approx(11.59, rel=0.15)
    assert needs.host / GiB == pytest.approx(70.8, rel=0.15)


def test_the_bf16_mode_needs_no_more_per_gpu_on_several_gpus(xl):
    """DDP's buckets are the gradients themselves (gradient_as_bucket_view): a second GPU adds nothing to each
    GPU's share, where a second copy of every gradient (2.9 GiB) would not fit a 16 GiB card."""
    one = estimate(xl, BF16_MODE)
    two = estimate(xl, dataclasses.replace(BF16_MODE, ranks=2))
    assert two.gpu == one.gpu
    assert Plan(xl, dataclasses.replace(BF16_MODE, ranks=2), machine(gpu_gib=16), "out").status["GPU"] != \
        "does not fit"


def test_a_run_the_gpu_cannot_hold_is_stopped_with_a_change_that_fits(xl):
    too_big = dataclasses.replace(BF16_MODE, micro_batch=32, accumulation=1)
    plan = Plan(xl, too_big, machine(gpu_gib=16), "out")
    (line,) = stop_problems(plan)
    assert line.startswith("GPU: the run needs about") and "16.0 GiB is free" in line
    assert "--per_device_train_batch_size 8 --gradient_accumulation_steps 4" in line
    fitting = dataclasses.replace(BF16_MODE, micro_batch=8, accumulation=4)
    assert stop_problems(Plan(xl, fitting, machine(gpu_gib=16), "out")) == []


def test_with_little_host_ram_the_change_is_the_mode_that_keeps_the_optimizer_on_the_card(xl):
    """The classic recipe on 8 GiB of RAM: a bf16 mode on a card with bf16, the fp16 mode on one without, each
    naming the classic command's flags it replaces."""
    assert Plan(xl, CLASSIC, machine(ram_gib=8), "out", CLASSIC_FLAGS).change().startswith(
        "--mode bf16-in-backward (the bf16 mode stepped in the backward) without --deepspeed, --fp16")
    assert Plan(xl, CLASSIC, machine(ram_gib=8, bf16=False), "out", CLASSIC_FLAGS).change().startswith(
        "--mode fp16 (the fp16 mode) without --deepspeed")


def test_where_no_change_fits_the_plan_says_the_least_it_needs(xl):
    """An 8 GiB card holds no mode's states on the card, and 8 GiB of RAM no offloaded optimizer: the least RAM any
    change needs, and the change."""
    change = Plan(xl, CLASSIC, machine(gpu_gib=8, ram_gib=8), "out").change()
    assert change.startswith("no single change fits this machine: it needs at least"), change
    assert '"pin_memory": false' in change


def test_the_table_of_modes_on_a_t4_notebook(xl):
    """15 GiB, no bf16, 12.7 GiB of RAM: the classic recipe needs too much RAM, the fp16 mode fits at 4 x 4, the bf16
    mode cannot run."""
    fp16_mode = Setup(micro_batch=4, accumulation=4, block_size=1024, precision="fp16", chunk_tokens=2048,
                      weights="fp16", optim="adamw_torch_8bit")
    t4 = Machine(gpus=[("GPU 0 (assumed)", 15 * GiB)], gpu_note="", ram=int(12.7 * GiB), ram_note="",
                 disk=500 * GiB, disk_path="/", disk_note="", bf16=False)
    plan = Plan(xl, dataclasses.replace(fp16_mode, mode="fp16", launcher=True), t4, "out")
    assert plan.verdict == "fits"
    verdicts = {mode.name: verdict for mode, _, verdict in plan.modes()}
    assert verdicts["classic"].startswith("does not fit") and "(does not fit)" in \
        verdicts["classic"].split("host RAM")[1]
    assert verdicts["fp16"].startswith("fits")
    assert verdicts["bf16"] == "cannot run: this GPU has no bf16"
    assert verdicts["bf16-in-backward"] == "cannot run: this GPU has no bf16"


@pytest.mark.parametrize("layers, measured_gib", [(12, 4.535), (48, 11.195)])
def test_the_fp16_mode_against_its_gpu_peak(layers, measured_gib):
    """The fp16 mode at micro-batch 4 with the chunked loss, XL-wide, measured on an H200 capped at 15 GiB
    (docs/fp16-mode.md). Its terms are counted from the code, none fitted to these runs: the step goes one parameter
    at a time, so its working memory is one fp32 gradient, not the bf16 mode's fitted 1.6 bytes a parameter."""
    shape = model_shape(GPT2Config(n_embd=1600, n_layer=layers, n_head=25))
    fp16_mode = Setup(micro_batch=4, accumulation=4, block_size=1024, precision="fp16", chunk_tokens=2048,
                      weights="fp16", optim="adamw_torch_8bit", pretrained=True)
    assert estimate(shape, fp16_mode).gpu / GiB == pytest.approx(measured_gib, rel=0.05)


def test_stepping_in_the_backward_frees_the_gradients_from_the_plan(xl):
    """--optimizer_in_backward: the GPU holds no full set of gradients (2 bytes a parameter in bf16, 2.9 GiB for
    GPT-2 XL), only the largest ones alive at once; host RAM and activations are unchanged."""
    stepped = dataclasses.replace(BF16_MODE, in_backward=True, accumulation=1)
    usual, early = estimate(xl, dataclasses.replace(BF16_MODE, accumulation=1)), estimate(xl, stepped)
    freed = (usual.gpu_states - early.gpu_states) / GiB
    assert 2.5 < freed < 2.9
    assert (early.host, early.activations) == (usual.host, usual.activations)


def test_the_table_of_modes_of_a_run_stepped_in_the_backward_counts_each_mode_as_it_is(xl):
    """The rows are the other modes as they run, not this run's --optimizer_in_backward applied to each."""
    stepped = dataclasses.replace(BF16_MODE, in_backward=True, accumulation=1)
    gpu = {mode.name: float(verdict.split("GPU ")[1].split(" GiB")[0]) for mode, _, verdict in
           Plan(xl, stepped, machine(), "out").modes() if not verdict.startswith("cannot")}
    assert gpu["bf16"] - gpu["bf16-in-backward"] > 2.5


@pytest.fixture(scope="module")
def gptj():
    return model_shape(GPTJConfig(n_embd=4096, n_layer=28, n_head=16, vocab_size=50400, rotary_dim=64))


GPTJ_STEPPED = dataclasses.replace(BF16_MODE, micro_batch=1, accumulation=1, in_backward=True, mode="bf16-in-backward")


def test_with_the_state_on_host_a_6b_model_fits_a_16_gib_gpu(gptj):
    """GPT-J 6B's shapes in the bf16 mode stepped in the backward: bf16 weights and 8-bit state, 2 bytes a parameter
    each, do not fit 16 GiB. --optimizer_state_on_host moves the state to host RAM (2 bytes a parameter and the
    scales) and leaves one parameter's on the GPU."""
    assert 6.0e9 < gptj.n_params < 6.1e9
    on_gpu, on_host = estimate(gptj, GPTJ_STEPPED), estimate(gptj, dataclasses.replace(GPTJ_STEPPED,
                                                                                        state_on_host=True))
    assert on_gpu.gpu > 16 * GiB > on_host.gpu
    assert on_gpu.gpu_states - on_host.gpu_states == 2 * gptj.n_params  # the step's copy is a buffer
    assert on_gpu.host_optimizer == 0 and 2 < on_host.host_optimizer / gptj.n_params < 2.05
    assert on_host.host_training - on_gpu.host_training == on_host.host_optimizer
    assert on_host.activations == on_gpu.activations and on_host.disk_checkpoint == on_gpu.disk_checkpoint


def test_a_run_stepped_in_the_backward_that_does_not_fit_is_told_to_keep_the_state_on_host(gptj):
    plan = Plan(gptj, GPTJ_STEPPED, machine(gpu_gib=16), "out")
    assert plan.status["GPU"] == "does not fit"
    assert plan.change().startswith("--mode bf16-state-on-host"), plan.change()
    verdicts = {mode.name: verdict for mode, _, verdict in plan.modes()}
    assert verdicts["bf16-in-backward"].startswith("does not fit")
    assert verdicts["bf16-state-on-host"].startswith("fits")
    on_host = dataclasses.replace(GPTJ_STEPPED, state_on_host=True, mode="bf16-state-on-host")
    text = report(Plan(gptj, on_host, machine(gpu_gib=16), "out"))
    assert "verdict: fits" in text and "--optimizer_state_on_host" in text.split("host RAM\n")[1]
    # the bf16 mode as it is: stepping in the backward alone does not fit, with the state on host it does
    plain = Plan(gptj, dataclasses.replace(BF16_MODE, micro_batch=1, accumulation=1), machine(gpu_gib=16), "out")
    assert plain.change().startswith("--mode bf16-state-on-host"), plain.change()


QWEN = dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
LLAMA = dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
             num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True)
GPTJ = dict(model_type="gptj", n_embd=4096, n_layer=28, n_head=16, vocab_size=50400, rotary_dim=64)
XL = dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25)
LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
# Peak GPU memory allocated, measured on an H200 with random weights, block 1024 (docs/gpu-runs.md): the bf16 mode
# (B) and the same stepped in the backward (IB), its state on the GPU or the host. The two GPT-J runs at micro-batch
# 1 ran the forward, the chunked loss and the backward without the Trainer; the others are run_clm.py runs.
MEASURED_PEAKS = [
    ("gpt2-xl B 8x2", XL, dict(micro_batch=8, accumulation=2), 13.41),
    ("gpt2-xl IB 16", XL, dict(micro_batch=16, accumulation=1, in_backward=True), 14.21),
    ("qwen2.5-1.5b B 8x2", QWEN, dict(micro_batch=8, accumulation=2), 11.62),
    ("llama-3.2-3b IB host 8", LLAMA, dict(micro_batch=8, accumulation=1, in_backward=True, state_on_host=True), 11.07),
    ("llama-3.2-3b IB 2", LLAMA, dict(micro_batch=2, accumulation=1, in_backward=True), 15.86),
    ("gpt-j-6b IB host 2", GPTJ, dict(micro_batch=2, accumulation=1, in_backward=True, state_on_host=True), 14.25),
    ("gpt-j-6b IB host 1", GPTJ, dict(micro_batch=1, accumulation=1, in_backward=True, state_on_host=True), 13.92),
    ("gpt-j-6b IB 1", GPTJ, dict(micro_batch=1, accumulation=1, in_backward=True), 24.98),
    # on an H100, 2026-12-07: run_clm.py in the mode the plan chose, the state on the host
    ("llama-2-7b IB host 2", LLAMA2_7B, dict(micro_batch=2, accumulation=1, in_backward=True, state_on_host=True),
     14.74),
    ("mistral-7b IB host 1", MISTRAL_7B, dict(micro_batch=1, accumulation=1, in_backward=True, state_on_host=True),
     15.35),
    ("mistral-7b IB host 2", MISTRAL_7B, dict(micro_batch=2, accumulation=1, in_backward=True, state_on_host=True),
     15.64),
]


@pytest.mark.parametrize("family, changes, measured_gib", [row[1:] for row in MEASURED_PEAKS],
                         ids=[row[0] for row in MEASURED_PEAKS])
def test_the_plan_against_measured_gpu_peaks(family, changes, measured_gib):
    """The bf16 mode's plan within 15% of each peak measured across six families (the issue's bar). Its two fitted
    terms (a step's working memory, the layer inputs kept under autocast) were fitted to these same runs: this holds
    them, and every other term, to what was measured."""
    from transformers import CONFIG_MAPPING

    config = dict(family)
    shape = model_shape(CONFIG_MAPPING[config.pop("model_type")](**config))
    setup = dataclasses.replace(BF16_MODE, chunk_tokens=chunk_tokens_for(shape.vocab), **changes)
    assert estimate(shape, setup).gpu / GiB == pytest.approx(measured_gib, rel=0.15)


# Host RAM peaks through the final save (run_stats.json's peak_host_rss_through_save_gib), measured on an H100
# capped at 16 GiB in the mode the plan chose, the state on the host (docs/gpu-runs.md, 2026-12-07, fifth session).
MEASURED_HOST_PEAKS = [
    ("llama-2-7b host 2", LLAMA2_7B, 2, 16.68),
    ("llama-2-7b host 2, killed and resumed", LLAMA2_7B, 2, 16.51),
    ("mistral-7b host 1", MISTRAL_7B, 1, 16.66),
]


@pytest.mark.parametrize("family, micro_batch, measured_gib", [row[1:] for row in MEASURED_HOST_PEAKS],
                         ids=[row[0] for row in MEASURED_HOST_PEAKS])
def test_the_plan_host_ram_against_peaks_measured_through_the_final_save(family, micro_batch, measured_gib):
    """The plan's host figure within 10% of what the 7B runs measured from launch through the final save (the
    issue's bar); the plan may say more, never less than 5% under."""
    from transformers import CONFIG_MAPPING

    config = dict(family)
    shape = model_shape(CONFIG_MAPPING[config.pop("model_type")](**config))
    setup = dataclasses.replace(BF16_MODE, chunk_tokens=chunk_tokens_for(shape.vocab), micro_batch=micro_batch,
                                accumulation=1, in_backward=True, state_on_host=True, cuda=True, pretrained=True,
                                mode="bf16-state-on-host")
    planned = estimate(shape, setup).host / GiB
    assert measured_gib * 0.95 <= planned <= measured_gib * 1.10


def test_the_plan_chooses_the_fastest_mode_that_fits_and_says_why(xl, gptj):
    """GPT-2 XL on a 16 GiB bf16 GPU: the bf16 mode; on one without bf16: the fp16 mode; GPT-J 6B with 64 GiB of
    RAM: only the state on the host fits; with 12 GiB of RAM nothing does, and the report says so."""
    mode, setup = Plan(xl, BF16_MODE, machine(), "out").choice()
    assert mode.name == "bf16-in-backward" and (setup.micro_batch, setup.accumulation) == (16, 1)
    assert Plan(xl, BF16_MODE, machine(), "out").choice(allowed=["bf16", "fp16"])[0].name == "bf16"
    assert Plan(xl, BF16_MODE, machine(bf16=False), "out").choice()[0].name == "fp16"
    mode, setup = Plan(gptj, GPTJ_STEPPED, machine(ram_gib=64), "out").choice()
    assert mode.name == "bf16-state-on-host" and setup.state_on_host and setup.in_backward
    assert Plan(gptj, GPTJ_STEPPED, machine(ram_gib=12), "out").choice() is None


@pytest.mark.parametrize("config", [LLAMA2_7B, MISTRAL_7B], ids=["llama-2-7b", "mistral-7b"])
def test_a_7b_model_needs_host_ram_for_its_state_and_little_more(config):
    """Pretrained bf16 weights are read straight onto the GPU and written back in shards of 1 GiB, so host RAM
    holds the 8-bit state (2 bytes a parameter and its scales), the worker, and at most one shard or tensor beside:
    not a second whole copy of the weights (13.5 GB for Mistral) when loading or saving."""
    from transformers import CONFIG_MAPPING

    config = dict(config)
    shape = model_shape(CONFIG_MAPPING[config.pop("model_type")](**config))
    setup = dataclasses.replace(BF16_MODE, chunk_tokens=chunk_tokens_for(shape.vocab), micro_batch=2, accumulation=1,
                                in_backward=True, state_on_host=True, cuda=True, pretrained=True,
                                mode="bf16-state-on-host")
    needs = estimate(shape, setup)
    weights = 2 * shape.n_params
    assert needs.host_optimizer == pytest.approx(weights * (1 + 4 / 256), rel=0.01)
    assert needs.host_loading == 2 * shape.largest_param < 0.3 * GiB
    assert needs.host_saving == GiB
    assert needs.host - needs.host_baseline - needs.host_optimizer == GiB
    # written as one file, the save would have held every weight on the CPU at once
    assert needs.host + weights - GiB > 26 * GiB


def test_the_plan_says_which_micro_batch_fits_a_mode_stepped_in_the_backward():
    """A mode stepped in the backward cannot accumulate: where the run's micro-batch does not fit, the plan names
    the largest that does, and offers it as the change, saying that a step then holds fewer sequences."""
    from transformers import CONFIG_MAPPING

    config = dict(LLAMA2_7B)
    shape = model_shape(CONFIG_MAPPING[config.pop("model_type")](**config))
    setup = dataclasses.replace(BF16_MODE, chunk_tokens=chunk_tokens_for(shape.vocab), micro_batch=4, accumulation=1,
                                in_backward=True, state_on_host=True, cuda=True, pretrained=True,
                                mode="bf16-state-on-host")
    plan = Plan(shape, setup, machine(gpu_gib=16), "out")
    fits, tight = plan.largest_micro_batches()
    assert 1 <= fits <= tight < 4
    one_more = dataclasses.replace(setup, micro_batch=tight + 1)
    assert estimate(shape, one_more).gpu > 16 * GiB
    assert estimate(shape, dataclasses.replace(setup, micro_batch=fits)).gpu * 1.1 <= 16 * GiB
    assert plan.change().startswith(f"--per_device_train_batch_size {fits} ({fits} sequence")
    assert f"micro-batch: 4 in this run; up to {fits} sequence" in report(plan)

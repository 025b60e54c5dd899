"""The modes, and the one each run trains in: the flags of earlier releases map to their mode, `auto` takes the
fastest that fits the machine (acted out by the CLM_ASSUME_* figures that --plan --machine sets) and keeps the user's
batch, a flag that contradicts the mode is one line, and a rerun goes on in its checkpoint's mode."""

import pytest
from transformers import GPT2Config, GPTJConfig

from clmkit import modes
from clmkit.args import parse_args
from clmkit.errors import UsageError
from clmkit.machine import CARDS, assume_machine
from clmkit.plan import make_plan

XL = GPT2Config(n_embd=1600, n_layer=48, n_head=25)
GPTJ = GPTJConfig(n_embd=4096, n_layer=28, n_head=16, vocab_size=50400, rotary_dim=64)
BATCH = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"]


@pytest.fixture
def on(monkeypatch, tmp_path):
    """on("t4") or on("gpu=16,ram=32,bf16=yes"): this process plans for that machine; on(None): no GPU."""
    def machine(spec):
        for name in ("CLM_ASSUME_GPU_GIB", "CLM_ASSUME_HOST_RAM_GIB", "CLM_ASSUME_NO_BF16"):
            monkeypatch.setenv(name, "")  # recorded, so that what assume_machine sets is undone after the test
            monkeypatch.delenv(name)
        monkeypatch.setenv("CLM_ASSUME_FREE_DISK_GIB", "500")
        if spec:
            assume_machine(spec)
    return machine


def settle(tmp_path, *flags, config=XL, resumed=None):
    model_args, _, training_args, refused = parse_args(["--output_dir", str(tmp_path / "out"), "--do_train",
                                                        "--plan", *flags])
    assert refused == []
    return make_plan(config, None, model_args, training_args, 1024, None, resumed)


@pytest.mark.parametrize("flags, mode", [
    (["--deepspeed", "ds_config.json", "--fp16"], "classic"),
    (["--bf16", "--dtype", "bfloat16", "--optim", "adamw_torch_8bit", "--optim_args", "bf16_stochastic_round=True",
      "--chunked_loss"], "bf16"),
    (["--fp16", "--optim", "adamw_torch_8bit", "--chunked_loss"], "fp16"),
    (["--dtype", "float16", "--optim", "adamw_torch_8bit"], "fp16"),
    (["--bf16", "--dtype", "bfloat16", "--optimizer_in_backward"], "bf16-in-backward"),
    (["--dtype", "bfloat16", "--optimizer_in_backward", "--optimizer_state_on_host"], "bf16-state-on-host"),
    (["--optimizer_in_backward", "--max_grad_norm", "0"], "fp32"),  # fp32 weights stepped in the backward
    (["--optim", "adafactor"], "fp32"),
    (["--fp16"], None),
    ([], None),
])
def test_the_flags_of_earlier_releases_spell_their_mode(flags, mode):
    assert modes.spelled(parse_args(["--output_dir", "o", "--do_train", "--plan", *flags])[2].given_flags) == mode


def test_on_a_16_gib_bf16_card_auto_steps_in_the_backward_at_the_users_batch(tmp_path, on):
    """GPT-2 XL, 8 x 2 asked: the fastest measured mode that fits is the bf16 mode stepped in the backward, as one
    micro-batch of the same 16 sequences; the split, the way it clips and the 8-bit state are named."""
    on("16gb-bf16")
    plan = settle(tmp_path, *BATCH)
    assert plan.setup.mode == "bf16-in-backward" and plan.verdict == "fits"
    assert (plan.setup.micro_batch, plan.setup.accumulation) == (16, 1)
    assert plan.flags["per_device_train_batch_size"] == 16 and plan.flags["gradient_accumulation_steps"] == 1
    assert "max_grad_norm" not in plan.flags and plan.flags["dtype"] == "bfloat16" and plan.flags["chunked_loss"]
    assert plan.how.startswith("auto: the fastest mode that fits a 16.0 GiB GPU with bf16")
    said = "; ".join(plan.changes)
    assert "16 x 1 accumulation per GPU instead of 8 x 2 (the same 16 sequences a step)" in said
    assert "gradients clipped by the last step's norm" in said and "8 bits" in said


def test_a_clipping_norm_the_user_gave_is_kept_by_the_mode_stepped_in_the_backward(tmp_path, on):
    on("16gb-bf16")
    for norm in ("1.0", "0.5"):
        plan = settle(tmp_path, *BATCH, "--max_grad_norm", norm)
        assert plan.setup.mode == "bf16-in-backward" and plan.problems == []
        assert "max_grad_norm" not in plan.flags


def test_on_a_t4_notebook_auto_takes_the_fp16_mode_with_or_without_fp16(tmp_path, on):
    """The free notebook's T4 (15 GiB, no bf16, 12.7 GiB of RAM): --fp16 alone no longer plans 35 GiB of fp32 AdamW
    and refuses; it and no precision flag at all both take the fp16 mode, which fits."""
    on("t4")
    assert CARDS["t4"] == (15, 12.7, False)
    for flags in ([], ["--fp16"]):
        plan = settle(tmp_path, *BATCH, *flags)
        assert plan.setup.mode == "fp16" and plan.verdict == "fits", plan.how
        assert plan.flags.get("fp16", "--fp16" in flags) is True and plan.flags["dtype"] == "float16"


def test_a_6b_model_takes_the_mode_whose_optimizer_state_fits(tmp_path, on):
    on("gpu=16,ram=32,bf16=yes")
    plan = settle(tmp_path, "--per_device_train_batch_size", "2", config=GPTJ)
    assert plan.setup.mode == "bf16-state-on-host" and plan.verdict == "fits"


def test_without_a_gpu_auto_trains_as_the_cpu_does(tmp_path, on):
    on(None)
    plan = settle(tmp_path, "--use_cpu", *BATCH)
    assert plan.setup.mode == "fp32" and plan.how.startswith("no GPU here")
    # nothing changes but the mode's name: the flags it sets are the defaults, the same run as before modes existed
    assert plan.flags == {"mode": "fp32", "optimizer_in_backward": False, "optimizer_state_on_host": False}


def test_a_flag_that_contradicts_the_mode_asked_for_is_one_line(tmp_path, on):
    on("16gb-bf16")
    plan = settle(tmp_path, "--mode", "bf16-in-backward", "--max_grad_norm", "1.0", "--optim", "adamw_torch")
    assert len(plan.problems) == 1
    assert plan.problems[0].startswith("--mode bf16-in-backward (--mode) sets --optim adamw_torch_8bit but "
                                       "--optim adamw_torch was given")


def test_the_classic_recipe_asked_for_takes_the_shipped_config_and_needs_its_host_ram(tmp_path, on):
    on("16gb-bf16")
    plan = settle(tmp_path, "--mode", "classic", *BATCH)
    assert plan.problems == [] and plan.flags["deepspeed"].endswith("ds_config.json") and plan.flags["fp16"]
    assert plan.setup.offload_optimizer and plan.status["host RAM"] == "does not fit"  # 45 GiB against 32
    on("gpu=16,ram=64,bf16=yes")
    assert settle(tmp_path, "--mode", "classic", *BATCH).verdict == "fits"


def test_a_rerun_goes_on_in_its_checkpoints_mode_or_says_why_it_cannot(tmp_path, on):
    """A bf16-mode checkpoint resumes in the bf16 mode at its own split, whatever auto would take; on a card
    without bf16 that is one line; a --mode other than the checkpoint's is one line too."""
    on("16gb-bf16")
    resumed = {"path": "out/checkpoint-200", "mode": "bf16", "split": (8, 2)}
    plan = settle(tmp_path, *BATCH, resumed=resumed)
    assert plan.setup.mode == "bf16" and plan.problems == [] and "checkpoint-200" in plan.how
    assert (plan.setup.micro_batch, plan.setup.accumulation) == (8, 2)
    on("t4")
    (line,) = settle(tmp_path, *BATCH, resumed=resumed).problems
    assert "bf16 mode" in line and "this GPU has no bf16" in line and "--overwrite_output_dir" in line
    on("16gb-bf16")
    (line,) = settle(tmp_path, *BATCH, "--mode", "fp16", resumed=resumed).problems
    assert line.startswith("--mode fp16: out/checkpoint-200 was written in the bf16 mode")


def test_the_machine_flag_names_a_card_or_its_figures(on):
    on(None)
    with pytest.raises(UsageError, match=r"--machine gpu=15: give a card \(t4, "):
        assume_machine("gpu=15")
    with pytest.raises(UsageError, match="only with --plan"):
        parse_args(["--output_dir", "o", "--do_train", "--machine", "t4"])

"""Faster modes must learn the same thing: the chunked loss and the fused GELU against the defaults, bf16 weights
and fp16 weights with an 8-bit AdamW against fp32 AdamW, and a model built from a config starting from its seed."""

import json

import pytest
from conftest import logged_losses, python


def short_run(tiny_model, corpus, out, *extra, steps=8, env=None):
    return python("run_clm.py", "--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt",
                  "--do_train", "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 4,
                  "--gradient_accumulation_steps", 2, "--max_steps", steps, "--logging_steps", 1,
                  "--learning_rate", 1e-3, "--seed", 5, "--use_cpu", "--save_strategy", "no", *extra, env=env)


@pytest.fixture(scope="module")
def fp32_losses(tiny_model, corpus, tmp_path_factory):
    """The losses of fp32 weights with torch's AdamW over 16 steps: what the 16-bit modes must track."""
    out = tmp_path_factory.mktemp("fp32")
    result = short_run(tiny_model, corpus, out, steps=16)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return logged_losses(out)


def assert_tracks(losses, reference):
    """They fall, and their last four average within 2% of the reference's: a few steps' training losses of a tiny
    model, held to twice the bar the parity benchmark holds 300 steps' final eval loss to."""
    assert losses[-1] < losses[0] - 0.25, losses  # nats: well past noise
    tail = sum(losses[-4:]) / 4, sum(reference[-4:]) / 4
    assert abs(tail[0] - tail[1]) < 0.02 * tail[1], (losses, reference)


def weight_dtypes(out):
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        return {f.get_slice(key).get_dtype() for key in f.keys()}


def test_chunked_loss_and_fused_gelu_train_like_the_default(tiny_model, corpus, tmp_path):
    """Same seed, accumulation 2: the chunked loss, and GPT-2's seven-operation GELU against the one-kernel one
    run_clm.py builds by default, give the same logged losses to float rounding; the saved config still says
    gelu_new. The chunked run is also profiled over steps 3-4 (CLM_PROFILE), which must not change its losses."""
    runs = {}
    for name, extra in (("default", []), ("chunked", ["--chunked_loss"]), ("gelu_new", ["--no_fused_gelu"])):
        env = {"CLM_PROFILE": "3-4"} if name == "chunked" else None
        result = short_run(tiny_model, corpus, tmp_path / name, *extra, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        runs[name] = logged_losses(tmp_path / name)
    profile = (tmp_path / "chunked" / "profile.md").read_text()
    assert profile.startswith("# Profile of optimizer steps 3-4") and "ms a step" in profile, profile
    assert len(runs["default"]) == 8
    for other in ("chunked", "gelu_new"):
        for a, b in zip(runs["default"], runs[other]):
            assert abs(a - b) < 1e-4 * abs(a), (other, runs)
    with open(tmp_path / "default" / "config.json") as f:
        assert json.load(f)["activation_function"] == "gelu_new"


def test_bf16_weights_with_8bit_adamw_learn_like_fp32_adamw(fp32_losses, tiny_model, corpus, tmp_path):
    """The bf16 mode: bf16 weights, torchao's 8-bit AdamW with stochastic rounding, chunked loss. Over 16 steps its
    losses track fp32 weights with AdamW; the saved weights are bf16."""
    fast = tmp_path / "fast"
    result = short_run(tiny_model, corpus, fast, "--dtype", "bfloat16", "--bf16", "--optim", "adamw_torch_8bit",
                       "--optim_args", "bf16_stochastic_round=True", "--chunked_loss", steps=16)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # what it prints says so (the label looked at --bf16 only, as if the weights were fp32 under autocast)
    assert "parameters (gpt2), bf16 weights (bf16 autocast), plain PyTorch" in result.stdout
    assert_tracks(logged_losses(fast), fp32_losses)
    assert weight_dtypes(fast) == {"BF16"}


def test_the_fp16_mode_learns_like_fp32_adamw_and_holds_no_bf16(fp32_losses, tiny_model, corpus, tmp_path):
    """The fp16 mode (on the CPU, --dtype float16 stands for --fp16, which needs a GPU): fp16 weights, its 8-bit
    AdamW rounding stochastically under a loss scale. Acting like a card without bf16, it holds no bf16 tensor, its
    losses track fp32 AdamW, every logged step says the loss scale and the steps skipped for overflow, and the
    saved fp16 model reloads and generates."""
    out = tmp_path / "fp16"
    result = short_run(tiny_model, corpus, out, "--dtype", "float16", "--optim", "adamw_torch_8bit", "--chunked_loss",
                       steps=16, env={"CLM_ASSUME_NO_BF16": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "fp16 weights, loss scale and stochastic rounding (the fp16 mode)" in result.stdout
    assert "optimizer state tensors: no bf16 tensor" in result.stdout
    assert_tracks(logged_losses(out), fp32_losses)
    assert weight_dtypes(out) == {"F16"}
    with open(out / "trainer_state.json") as f:
        logged = [entry for entry in json.load(f)["log_history"] if "loss" in entry]
    assert all(entry["loss_scale"] >= 1 and entry["overflow_skipped_steps"] >= 0 for entry in logged)

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16
    prompt = torch.tensor([[5, 6]])
    assert model.generate(prompt, max_new_tokens=8, do_sample=False).shape[1] > 2


def test_the_fp16_flag_of_the_fp16_mode_leaves_no_torch_amp_behind(tiny_model, tmp_path, monkeypatch):
    """On a GPU the fp16 mode is chosen with --fp16, which TrainingArguments turns into torch.amp's mixed precision:
    its gradient scaler would refuse the fp16 gradients at the first step ("Attempting to unscale FP16
    gradients"). The Trainer built for the mode uses none of it and trains with its own loss scale. Started at a
    scale that overflows, it skips those steps, halving the scale, and they leave the learning rate where it was.
    (In-process: the command line refuses --fp16 on a machine without a GPU.)"""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from clmkit import fp16_adamw
    from clmkit.args import ClmTrainingArguments
    from clmkit.trainer import build_trainer

    monkeypatch.setattr(fp16_adamw, "INITIAL_SCALE", 2.0**22)  # the gradients overflow fp16 at this scale

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float16)
    ids = torch.randint(0, 400, (16, 32), generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = ClmTrainingArguments(output_dir=str(tmp_path), fp16=True, use_cpu=True, optim="adamw_torch_8bit",
                                do_train=True, max_steps=8, per_device_train_batch_size=4, report_to="none",
                                save_strategy="no", logging_steps=1, learning_rate=1e-3)
    assert args.mixed_precision == "fp16"
    trainer = build_trainer(model, AutoTokenizer.from_pretrained(tiny_model), args, 32, data, None)
    assert trainer.accelerator.mixed_precision == "no" and trainer.accelerator.scaler is None
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    skipped = [entry["overflow_skipped_steps"] for entry in logged]
    assert skipped[-1] >= 1 and skipped == sorted(skipped), logged
    assert logged[-1]["loss_scale"] == 2.0**22 / 2 ** skipped[-1]
    # The logged rate is the one a step trains with: unchanged through the skipped steps and the first one taken,
    # lower at each step after that.
    rates = [entry["learning_rate"] for entry in logged]
    first_taken = skipped[-1]
    assert rates[:first_taken + 1] == [rates[0]] * (first_taken + 1), logged
    assert all(later < earlier for earlier, later in zip(rates[first_taken:], rates[first_taken + 1:])), logged
    assert any(not torch.equal(p, start[name]) for name, p in model.named_parameters())
    assert next(model.parameters()).dtype == torch.float16


def test_a_model_built_from_a_config_starts_from_the_seed(tiny_model, corpus, tmp_path):
    """--model_type with --config_overrides draws random weights: the same --seed gives the same start (and so the
    same losses), another seed another start."""
    losses = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        result = python("run_clm.py", "--model_type", "gpt2", "--config_overrides",
                        "n_layer=1,n_embd=32,n_head=2,n_positions=128", "--tokenizer_name", tiny_model,
                        "--train_file", corpus / "train.txt", "--do_train", "--output_dir", tmp_path / name,
                        "--block_size", 32, "--per_device_train_batch_size", 4, "--max_steps", 2, "--logging_steps", 1,
                        "--use_cpu", "--save_strategy", "no", "--seed", seed)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        losses[name] = logged_losses(tmp_path / name)
    assert losses["a"] == losses["b"]
    assert losses["a"][0] != losses["c"][0]


def test_the_optimizer_stepped_in_the_backward_learns_and_resumes(fp32_losses, tiny_model, corpus, tmp_path):
    """The bf16 mode with --optimizer_in_backward (each weight stepped by its own 8-bit AdamW as soon as its gradient
    is complete): the same 8 sequences a step as the reference, in one micro-batch, clipped by the last step's norm.
    Its losses track fp32 AdamW and it logs the gradients' norm; its checkpoint at step 8, rerun alone, ends where the
    uninterrupted run does (the checkpoint keeps the norm its next step clips by); the saved bf16 model reloads and
    generates."""
    flags = ["--dtype", "bfloat16", "--bf16", "--optim", "adamw_torch_8bit", "--optim_args",
             "bf16_stochastic_round=True", "--chunked_loss", "--optimizer_in_backward", "--max_grad_norm", "0.5",
             "--per_device_train_batch_size", 8, "--gradient_accumulation_steps", 1, "--save_strategy", "steps",
             "--save_steps", 8]
    whole = tmp_path / "whole"
    result = short_run(tiny_model, corpus, whole, *flags, steps=16)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    losses = logged_losses(whole)
    assert_tracks(losses, fp32_losses)
    assert weight_dtypes(whole) == {"BF16"}
    with open(whole / "trainer_state.json") as f:
        norms = [entry["grad_norm"] for entry in json.load(f)["log_history"] if "loss" in entry]
    assert len(norms) == len(losses) and all(norm > 0 for norm in norms)

    import shutil

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-8", resumed / "checkpoint-8")
    result = short_run(tiny_model, corpus, resumed, *flags, steps=16)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "resuming from" in result.stdout
    assert logged_losses(resumed)[8:] == pytest.approx(losses[8:], rel=1e-6)

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resumed)
    assert model.generate(torch.tensor([[5, 6]]), max_new_tokens=8, do_sample=False).shape[1] > 2


BF16_SPELLED = ["--dtype", "bfloat16", "--bf16", "--optim", "adamw_torch_8bit", "--optim_args",
                "bf16_stochastic_round=True", "--chunked_loss"]


def test_a_mode_asked_for_by_name_trains_as_its_old_spelling_and_a_rerun_goes_on_in_it(tiny_model, corpus, tmp_path):
    """--mode bf16 gives the losses of the bf16 mode's flags of earlier releases, bit for bit. Its checkpoint, rerun
    with no mode flag at all (auto, which on the CPU takes fp32), goes on in the bf16 mode to the uninterrupted
    run's losses; a rerun asking for another mode is one line and exit 2, the checkpoint untouched."""
    spelled, named = tmp_path / "spelled", tmp_path / "named"
    result = short_run(tiny_model, corpus, spelled, *BF16_SPELLED)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mode:        bf16 (the flags given spell it)" in result.stdout
    result = short_run(tiny_model, corpus, named, "--mode", "bf16", "--save_strategy", "steps", "--save_steps", 4)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "mode:        bf16 (--mode)" in result.stdout
    assert logged_losses(named) == logged_losses(spelled)
    assert weight_dtypes(named) == {"BF16"}

    import shutil

    rerun = tmp_path / "rerun"
    rerun.mkdir()
    shutil.copytree(named / "checkpoint-4", rerun / "checkpoint-4")
    refused = short_run(tiny_model, corpus, rerun, "--mode", "fp32", "--save_strategy", "steps", "--save_steps", 4)
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: --mode fp32: {rerun / 'checkpoint-4'} was written in the bf16 mode, whose optimizer "
                      "state this mode cannot continue; drop --mode to resume in bf16, or add --overwrite_output_dir "
                      "to start again in this mode"], refused.stderr[-2000:]
    assert sorted(p.name for p in rerun.iterdir()) == ["checkpoint-4"]
    result = short_run(tiny_model, corpus, rerun, "--save_strategy", "steps", "--save_steps", 4)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"mode:        bf16 (the mode {rerun / 'checkpoint-4'} was written in)" in result.stdout
    assert logged_losses(rerun)[4:] == logged_losses(named)[4:]
    assert weight_dtypes(rerun) == {"BF16"}

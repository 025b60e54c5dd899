"""More than one process: `deepspeed --num_gpus=2 run_clm.py ...` on the CPU (DeepSpeed's CPU accelerator talks over
gloo when oneCCL is not installed) trains like one process with the same global batch, prints and writes everything
once, and its checkpoints resume on another number of processes; export_model.py turns any checkpoint into an fp32
model folder.

The model here has no dropout. With dropout, every layout draws other masks (two ranks seeded alike even share them
over different sequences), which moved the losses by about 3e-3 in a measurement: noise that would hide the
arithmetic being compared. Without it, 2 processes x 4 sequences and 1 process x 4 x 2 accumulation do the same sums
in another order.
"""

import json
import math
import os
import re
import shutil
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from clmkit.machine import free_port
from conftest import DEEPSPEED, REPO, python, run, run_until_paused

# Measured between the layouts (ZeRO-2, fp32, 12 steps), also after a resume on the other count: train loss within
# 5e-7, grad norm 1.2e-7, eval loss equal, final weights 1.1e-7; against 1 process x 8 sequences (no accumulation)
# loss 1.5e-6 and weights 2.5e-6. That is float32 summing in another order (gloo's all-reduce against accumulation
# in one process), so the tolerances leave 10x room over the worst of it. What a real mistake moves is far larger:
# a gradient summed instead of averaged over the ranks doubles grad_norm, and evaluating one rank's half of the
# evaluation set instead of all of it moves eval_loss by 3e-3 (measured on the final model).
LOSS_TOLERANCE = 2e-5
WEIGHT_TOLERANCE = 3e-5
STEPS, SAVE_EVERY, BLOCK = 12, 6, 64
# The Trainer pads a process's last evaluation batch by repeating sequences and counts that batch's mean loss, so
# unless the evaluation set divides by processes x per-device eval batch (8) eval_loss moves in the 4th decimal
# (1.5e-4, measured with all 124 sequences when .txt files were read a line at a time; they make 118 now).
# 112 = 7 x 2 x 8 keeps the comparison exact.
EVAL_SEQUENCES = 112


@pytest.fixture(scope="module")
def model(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("nodropout") / "model"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def command(processes, out, model, corpus, *extra, ds_config="ds_config.json", port=None):
    """The user's command: the deepspeed launcher with --num_gpus; on this CPU machine one process per 'GPU'."""
    flags = (["--deepspeed", os.path.join(REPO, ds_config)] if ds_config else []) + ["--model_name_or_path", model,
             "--train_file", corpus / "train.txt", "--validation_file", corpus / "validation.txt",
             "--do_train", "--do_eval", "--output_dir", out, "--block_size", BLOCK, "--max_steps", STEPS,
             "--learning_rate", 2e-3, "--logging_steps", 2, "--save_steps", SAVE_EVERY, "--eval_strategy", "steps",
             "--eval_steps", SAVE_EVERY, "--max_eval_samples", EVAL_SEQUENCES, "--seed", 1, "--use_cpu",
             "--report_to", "none", *extra]
    return [DEEPSPEED, f"--num_gpus={processes}", f"--master_port={port or free_port()}",
            os.path.join(REPO, "run_clm.py"), *map(str, flags)]


# Two processes on a 2-core machine: one thread each rather than four threads fighting over two cores.
THREADS = {"OMP_NUM_THREADS": "1"}


def launch(processes, out, model, corpus, *extra, ds_config="ds_config.json", env=None):
    result = run(command(processes, out, model, corpus, *extra, ds_config=ds_config), env=dict(THREADS, **(env or {})))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


TWO = ["--per_device_train_batch_size", 4]  # 2 processes x 4 sequences
ONE = ["--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 2]  # 1 process x 4 x 2


@pytest.fixture(scope="module")
def two(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "out"
    # A datasets cache of its own, so that the text is really tokenized in this run (not read from another test's).
    log = launch(2, out, model, corpus, *TWO, env={"HF_DATASETS_CACHE": str(out.parent / "datasets-cache")})
    return out, log


@pytest.fixture(scope="module")
def one(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    return out, launch(1, out, model, corpus, *ONE)


def history(out):
    with open(out / "trainer_state.json") as f:
        state = json.load(f)
    entries = state["log_history"]
    return {
        "step": state["global_step"],
        "loss": {e["step"]: e["loss"] for e in entries if "loss" in e},
        "grad_norm": {e["step"]: e["grad_norm"] for e in entries if "grad_norm" in e},
        "eval_loss": {e["step"]: e["eval_loss"] for e in entries if "eval_loss" in e},
    }


def assert_same_training(out, reference, from_step=0):
    got, want = history(out), history(reference)
    assert got["step"] == want["step"] == STEPS
    for key in ("loss", "grad_norm", "eval_loss"):
        steps = [step for step in want[key] if step > from_step]
        assert steps and [s for s in got[key] if s > from_step] == steps, key
        for step in steps:
            assert got[key][step] == pytest.approx(want[key][step], abs=LOSS_TOLERANCE), (key, step)


def assert_same_weights(a, b, tolerance=WEIGHT_TOLERANCE):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    # A checkpoint written under ZeRO-2 also stores the tied output layer, the input embedding under a second name.
    if "lm_head.weight" in wb and "lm_head.weight" not in wa:
        assert wb.pop("lm_head.weight").equal(wb["transformer.wte.weight"])
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], rtol=0, atol=tolerance), name


# ---------------------------------------------------------------- 2 processes against 1, same global batch


# The bf16 mode's engine on the CPU, in fp32 (bf16 weights would round each layout's sums differently): no
# DeepSpeed, so DDP with its gradients as bucket views, torchao's 8-bit AdamW and the chunked loss.
EIGHT_BIT = ["--optim", "adamw_torch_8bit", "--chunked_loss"]


@pytest.fixture(scope="module")
def two_8bit(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("two8bit") / "out"
    return out, launch(2, out, model, corpus, *TWO, *EIGHT_BIT, ds_config=None)


@pytest.fixture(scope="module")
def one_8bit(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("one8bit") / "out"
    return out, launch(1, out, model, corpus, *ONE, *EIGHT_BIT, ds_config=None)


def test_two_processes_train_like_one_with_the_same_global_batch(two, one):
    (out2, _), (out1, _) = two, one
    assert_same_training(out2, out1)
    assert_same_weights(out2, out1)
    losses = list(history(out2)["loss"].values())
    assert losses[-1] < losses[0] - 0.3  # it learns, well past the tolerance
    for out in (out2, out1):
        with open(out / "eval_results.json") as f:
            metrics = json.load(f)
        assert metrics["eval_samples"] == EVAL_SEQUENCES and math.isfinite(metrics["perplexity"])


def test_start_up_shows_the_batch_arithmetic(two, one):
    _, log2 = two
    _, log1 = one
    # once, in the run's summary (the plan and the data together, before the model loads)
    two_batch = "4 sequences per process x 1 accumulation x 2 processes = 8 sequences = 512 tokens per optimizer step"
    one_batch = "4 sequences per process x 2 accumulation x 1 process = 8 sequences = 512 tokens per optimizer step"
    assert re.search(r"^batch:       " + re.escape(two_batch) + "$", log2, re.MULTILINE), log2[-3000:]
    assert log2.count(two_batch) == 1
    assert log1.count(one_batch) == 1
    assert "940 training sequences of 64 tokens = 117 steps per epoch" in log2


def test_one_process_speaks_and_writes(two):
    out, log = two
    for once in ("mode:", "model:", "batch:", "verdict:", "***** train metrics *****",
                 "***** eval metrics *****", "run stats:", "checkpoint-6 written in"):
        assert log.count(once) == 1, once
    # checkpoint-6, checkpoint-12 and the final model, each written by one process; in a log file, no bar for any
    for once in ("checkpoint-12 written in", "final model written to"):
        assert log.count(once) == 1, once
    assert "Writing model shards" not in log and "\r" not in log and "\x1b[" not in log
    for name in ("loss.png", "trainer_state.json", "model.safetensors", "config.json", "tokenizer.json",
                 "eval_results.json", "train_results.json", "run_stats.json"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").stat().st_size > 1000
    assert not (out / ".final-model-staging").exists()
    assert sorted(p.name for p in (out / "checkpoint-12").glob("rng_state*")) == ["rng_state_0.pth",
                                                                                   "rng_state_1.pth"]


def test_text_is_read_and_tokenized_once(two):
    out, log = two
    # The first process fills the datasets cache; the other waits, then reads it. In a log file, the process that
    # runs a pass says so in one line; one that reads it back from the cache says nothing.
    assert len(re.findall(r"Reading \S*train\.txt: 1 row in", log)) == 1
    assert log.count("Tokenizing (train): ") == log.count("Tokenizing (validation): ") == 1
    assert log.count(f"Making sequences of {BLOCK} tokens (train): ") == 1
    assert log.count(f"Making sequences of {BLOCK} tokens (validation): ") == 1
    assert list((out.parent / "datasets-cache").rglob("cache-*.arrow"))


# ---------------------------------------------------------------- checkpoints across process counts


def resume(processes, checkpoint, model, corpus, tmp_path, flags, ds_config="ds_config.json"):
    """Rerun the command on another number of processes, with only `checkpoint` in --output_dir."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(checkpoint, out / checkpoint.name)
    return out, launch(processes, out, model, corpus, *flags, ds_config=ds_config)


@pytest.mark.parametrize("direction", ["2 -> 1", "1 -> 2"])
def test_checkpoint_resumes_on_another_number_of_processes(direction, two, one, model, corpus, tmp_path):
    (source, _), processes, flags, other = (two, 1, ONE, one) if direction == "2 -> 1" else (one, 2, TWO, two)
    saved_by = 3 - processes
    out, log = resume(processes, source / f"checkpoint-{SAVE_EVERY}", model, corpus, tmp_path, flags)
    assert f"resuming from {out / f'checkpoint-{SAVE_EVERY}'} (step {SAVE_EVERY})" in log
    assert (f"checkpoint-{SAVE_EVERY} was written by {saved_by} process(es) and this run has {processes}: converting "
            "its ZeRO optimizer state with DeepSpeed's ds_to_universal") in log
    assert "sequences per optimizer step; this run takes" not in log  # same global batch: no notice
    converted = out / f"checkpoint-{SAVE_EVERY}"
    assert (converted / "latest_universal").read_text().strip() == f"global_step{SAVE_EVERY}_universal"
    # Ends where the uninterrupted runs of either layout end.
    assert_same_training(out, other[0], from_step=SAVE_EVERY)
    assert_same_training(out, source, from_step=SAVE_EVERY)
    assert_same_weights(out, other[0])


def test_the_bf16_modes_engine_on_two_processes_trains_like_one(two_8bit, one_8bit):
    """DDP with gradients as bucket views, the 8-bit AdamW and the chunked loss: the same training on 2 processes
    as on 1 with the same global batch (measured: equal to the last bit here), within LOSS_TOLERANCE."""
    (out2, log2), (out1, _) = two_8bit, one_8bit
    assert "2 processes = 8 sequences" in log2 and "plain PyTorch (no DeepSpeed)" in log2
    assert_same_training(out2, out1)
    assert_same_weights(out2, out1)
    losses = list(history(out2)["loss"].values())
    assert losses[-1] < losses[0] - 0.3


def test_a_checkpoint_of_the_bf16_modes_engine_resumes_on_another_number_of_processes(two_8bit, one_8bit, model,
                                                                                      corpus, tmp_path):
    """Without DeepSpeed every process holds the whole optimizer state: the checkpoint goes on as it is, 2 -> 1 here.
    (Onto more processes: bench/cpu_resume_four.sh, 4 -> 2, and tests/unit/test_resume_rules.py for the CPU device
    the Trainer loads onto there; bench/gpu_resume_across_gpus.sh on GPUs.)"""
    (source, _), processes, flags, other = two_8bit, 1, ONE, one_8bit
    out, log = resume(processes, source / f"checkpoint-{SAVE_EVERY}", model, corpus, tmp_path, [*flags, *EIGHT_BIT],
                      ds_config=None)
    assert f"resuming from {out / f'checkpoint-{SAVE_EVERY}'} (step {SAVE_EVERY})" in log
    assert_same_training(out, other[0], from_step=SAVE_EVERY)
    assert_same_weights(out, other[0])


# The fp16 mode (--dtype float16 on the CPU): DDP averages fp16 gradients, each process rounds its update with the
# same random draws (the same seed), so the copies stay one model.
FP16_MODE = ["--dtype", "float16", "--optim", "adamw_torch_8bit", "--chunked_loss"]


def test_the_fp16_mode_on_two_processes_learns_as_fp32_weights_do(one_8bit, model, corpus, tmp_path):
    """The fp16 mode on 2 processes against fp32 weights with the same 8-bit AdamW on 1, the same global batch: the
    final eval loss within 0.2% (measured: 5.6521 against 5.6519)."""
    out = tmp_path / "two"
    log = launch(2, out, model, corpus, *TWO, *FP16_MODE, ds_config=None)
    assert "(the fp16 mode), plain PyTorch (no DeepSpeed)" in log and "2 processes = 8 sequences" in log
    two, reference = history(out), history(one_8bit[0])
    assert two["step"] == reference["step"] == STEPS
    losses = list(two["loss"].values())
    assert losses[-1] < losses[0] - 0.3
    assert two["eval_loss"][STEPS] == pytest.approx(reference["eval_loss"][STEPS], rel=0.002)


def test_changed_global_batch_is_announced(two, model, corpus, tmp_path):
    out, log = resume(1, two[0] / f"checkpoint-{SAVE_EVERY}", model, corpus, tmp_path,
                      ["--per_device_train_batch_size", 4, "--max_steps", SAVE_EVERY + 1, "--do_eval", "False",
                       "--eval_strategy", "no"])
    assert ("was written by 2 process(es) x 4 sequences x 1 accumulation = 8 sequences per optimizer step; this run "
            "takes 4") in log
    assert history(out)["step"] == SAVE_EVERY + 1


# ---------------------------------------------------------------- export_model.py


@pytest.fixture(scope="module")
def zero3_bf16(model, corpus, tmp_path_factory):
    """ZeRO-3 over 2 processes in bf16: each process holds half the fp32 master weights, and the model's own
    weights are their bf16 copies."""
    out = tmp_path_factory.mktemp("zero3") / "out"
    launch(2, out, model, corpus, "--per_device_train_batch_size", 4, "--bf16", "--max_steps", 4, "--save_steps", 4,
           "--do_eval", "False", "--eval_strategy", "no", ds_config="ds_config_zero3.json")
    return out


@pytest.fixture(scope="module")
def plain(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    result = python("run_clm.py", "--model_name_or_path", model, "--train_file", corpus / "train.txt", "--do_train",
                    "--output_dir", out, "--block_size", BLOCK, "--max_steps", 2, "--save_steps", 2, "--use_cpu",
                    "--report_to", "none", "--learning_rate", 2e-3)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def export(checkpoint, out_dir):
    from clmkit.export import export as export_checkpoint

    return export_checkpoint(str(checkpoint), str(out_dir))


def test_export_zero2_checkpoint_of_two_processes_then_generate(two, tmp_path):
    checkpoint, out = two[0] / "checkpoint-12", tmp_path / "exported"
    result = python("export_model.py", checkpoint, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "joined from 2 ZeRO partition(s) in global_step12/" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    # An fp32 run's module weights are DeepSpeed's fp32 master weights, copied back after every step.
    assert_same_weights(out, checkpoint, tolerance=0)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    generated = python("run_generation.py", "--model_name_or_path", out, "--prompt", "ROMEO:", "--length", 10,
                       "--k", 1)
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert "=== GENERATED SEQUENCE 1 (prompt 1) ===\nROMEO:" in generated.stdout


def test_export_zero3_gives_the_fp32_master_weights_not_the_bf16_copies(zero3_bf16, tmp_path):
    checkpoint, out = zero3_bf16 / "checkpoint-4", tmp_path / "exported"
    assert "joined from 2 ZeRO partition(s)" in export(checkpoint, out)
    exported, bf16 = load_file(out / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert exported.keys() == bf16.keys()
    assert {t.dtype for t in exported.values()} == {torch.float32} and {t.dtype for t in bf16.values()} == \
        {torch.bfloat16}
    for name in exported:  # the bf16 weights are the master weights rounded, which keep the bits rounding drops
        assert exported[name].to(torch.bfloat16).equal(bf16[name]), name
    assert any(not exported[name].equal(bf16[name].float()) for name in exported)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.float32
    ids = AutoTokenizer.from_pretrained(out)("ROMEO:", return_tensors="pt")["input_ids"]
    assert loaded.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5


def test_export_checkpoint_written_without_deepspeed(plain, tmp_path):
    checkpoint, out = plain / "checkpoint-2", tmp_path / "exported"
    assert "written without DeepSpeed" in export(checkpoint, out)
    assert_same_weights(out, checkpoint, tolerance=0)


def test_export_checkpoint_of_the_bf16_mode(model, corpus, tmp_path):
    """The bf16 mode trains bf16 weights with no fp32 copy: its full checkpoint exports them widened to fp32, exactly,
    rather than being refused as a DeepSpeed run's 16-bit final model."""
    out = tmp_path / "bf16"
    result = python("run_clm.py", "--model_name_or_path", model, "--train_file", corpus / "train.txt", "--do_train",
                    "--output_dir", out, "--block_size", BLOCK, "--max_steps", 2, "--save_steps", 2, "--use_cpu",
                    "--report_to", "none", "--bf16", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = out / "checkpoint-2"
    assert "widened to fp32" in export(checkpoint, tmp_path / "exported")
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    trained = load_file(checkpoint / "model.safetensors")
    assert all(exported[name].dtype == torch.float32 and exported[name].equal(trained[name].float())
               for name in trained)


def test_export_refuses_bad_input_and_overwrites_nothing(two, zero3_bf16, model, tmp_path):
    from clmkit.errors import UsageError

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = python("export_model.py", two[0] / "checkpoint-12", full)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: OUT_DIR {full}: not empty; give a new or empty folder "
                                                  "(nothing is overwritten)"]
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"

    cut_short = tmp_path / "checkpoint-5"
    shutil.copytree(two[0] / "checkpoint-6", cut_short)
    (cut_short / "trainer_state.json").unlink()
    final_model_only = tmp_path / "final"
    final_model_only.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "trainer_state.json"):
        shutil.copy(zero3_bf16 / name, final_model_only)
    (tmp_path / "afile").write_text("x")
    cases = {
        tmp_path / "nowhere": "no such folder",
        two[0]: f"a training run's output folder, not one checkpoint; give one of its checkpoint folders, e.g. "
                f"{two[0] / 'checkpoint-12'}",
        model: "not a checkpoint (no trainer_state.json)",
        cut_short: "no trainer_state.json, so the checkpoint was cut short",
        final_model_only: "holds only 16-bit weights and no DeepSpeed optimizer state",
    }
    for checkpoint, expected in cases.items():
        with pytest.raises(UsageError) as err:
            export(checkpoint, tmp_path / "new")
        [problem] = err.value.problems
        assert problem.startswith(f"CHECKPOINT_DIR {checkpoint}: ") and expected in problem, problem
    with pytest.raises(UsageError, match="is a file"):
        export(two[0] / "checkpoint-12", tmp_path / "afile")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def evaluate_only(processes, model, corpus, out, ds_config=None):
    """The training command less --do_train: eval_results.json and the run's stderr."""
    flags = ["--model_name_or_path", model, "--validation_file", corpus / "validation.txt", "--do_eval",
             "--output_dir", out, "--block_size", BLOCK, "--max_eval_samples", EVAL_SEQUENCES, "--use_cpu",
             "--report_to", "none"] + (["--deepspeed", os.path.join(REPO, ds_config)] if ds_config else [])
    launcher = [DEEPSPEED, f"--num_gpus={processes}", f"--master_port={free_port()}"] if ds_config else [sys.executable]
    result = run([*launcher, os.path.join(REPO, "run_clm.py"), *map(str, flags)], env=THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out / "eval_results.json") as f:
        evaluated = json.load(f)
    assert evaluated["eval_samples"] == EVAL_SEQUENCES
    assert "epoch" not in evaluated  # nothing was trained: no epoch to report
    assert "gradient checkpointing" not in result.stdout  # nor a backward pass to recompute for
    return evaluated["eval_loss"], result.stderr


def test_evaluating_the_fine_tuned_model_gives_the_loss_the_run_ended_with(two, corpus, tmp_path):
    """The same command less --do_train, on the model the 2-process run saved. ZeRO-2 has no evaluation-only mode
    in the Trainer (this stopped with a traceback): the run evaluates without DeepSpeed and says so."""
    out, _ = two
    loss, stderr = evaluate_only(2, out, corpus, tmp_path / "eval", "ds_config.json")
    assert "notice: --do_eval without --do_train: evaluating without DeepSpeed" in stderr
    assert loss == pytest.approx(history(out)["eval_loss"][STEPS], abs=LOSS_TOLERANCE)


def test_zero3_keeps_embedding_rows_beyond_the_tokenizer(two, corpus, tmp_path):
    """GPT-J has 50,400 embedding rows for 50,257 tokens. Under ZeRO-3 each process holds a slice of the embedding,
    whose .shape is empty: read as 0 rows, it would be 'resized' to the tokenizer's size, cutting the extra rows
    off and changing the model. ZeRO-3's evaluation of such a model equals a plain one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    padded = tmp_path / "padded"
    tokenizer = AutoTokenizer.from_pretrained(two[0])
    model = AutoModelForCausalLM.from_pretrained(two[0])
    model.resize_token_embeddings(len(tokenizer) + 12)
    model.save_pretrained(padded)
    tokenizer.save_pretrained(padded)
    plain, _ = evaluate_only(1, padded, corpus, tmp_path / "plain")
    zero3, stderr = evaluate_only(2, padded, corpus, tmp_path / "zero3", "ds_config_zero3.json")
    assert "without DeepSpeed" not in stderr
    assert zero3 == pytest.approx(plain, abs=LOSS_TOLERANCE)


# ---------------------------------------------------------------- what a run leaves on the machine


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory lives in /dev/shm on Linux")
def test_a_killed_run_leaves_no_shared_memory_behind(model, corpus, tmp_path):
    """DeepSpeed's CPU all-reduce maps a 66 MB file in /dev/shm for each process and never removes it: a day of test
    runs left 300 of them, 20 GB of a 24 GB machine's RAM. The names go once training starts (the mappings live on
    until the processes end), so even a run killed in the middle leaves none."""

    import psutil

    port = free_port()
    proc = run_until_paused(command(2, tmp_path / "out", model, corpus, *TWO, port=port), "step:2")
    try:
        mapped = []  # the workers' mappings of the segments: the op that makes them is in use
        for worker in psutil.Process(proc.pid).children(recursive=True):
            with open(f"/proc/{worker.pid}/maps") as f:
                mapped += [line.split(None, 5)[-1].strip() for line in f if f"_{port}_" in line]
        assert mapped and all(m.endswith("(deleted)") for m in mapped), mapped
        left = [name for name in os.listdir("/dev/shm") if f"_{port}_" in name]
        assert left == [], left
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Two gloo processes, each seeing another machine (as free RAM measured a moment apart can differ), print what
# each ends with. Run as a script of its own: spawning from the test's process would leave multiprocessing's resource
# tracker running in it.
TWO_RANKS = """
import sys
import torch.distributed as dist
import torch.multiprocessing as mp
from clmkit.machine import same_on_every_process

def rank_main(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    seen = same_on_every_process(("bf16", (8, 2)) if rank == 0 else ("fp16", (4, 4)))
    print(f"rank {rank}: {seen}", flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank_main, args=(int(sys.argv[1]),), nprocs=2)
"""


def test_every_process_trains_in_the_mode_rank_0_chose(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    result = run([sys.executable, str(script), str(free_port())], env={"PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("rank ")) == [
        "rank 0: ('bf16', (8, 2))", "rank 1: ('bf16', (8, 2))"]

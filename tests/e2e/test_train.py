"""run_clm.py trains a tiny GPT-2 for real: with the DeepSpeed launcher and the shipped ds_config.json, and without."""

import json
import math
import os
import re
import shutil
import socket
import sys

import pytest

from conftest import DEEPSPEED, REPO, check_trained_run, common_flags, deepspeed_run, logged_losses, python, run

def test_deepspeed_zero2_offload_trains_evaluates_saves(tiny_model, corpus, tmp_path):
    out = tmp_path / "ds"
    result = deepspeed_run("--deepspeed", os.path.join(REPO, "ds_config.json"), "--bf16",
                           *common_flags(tiny_model, corpus, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DeepSpeed ZeRO-2 with the optimizer in CPU RAM" in result.stdout
    # No --warmup_steps: DeepSpeed's scheduler would refuse 0 warmup steps; the run starts anyway, without a notice
    # on every run.
    assert "--warmup_steps" not in result.stdout + result.stderr
    check_trained_run(out)


def test_the_classic_recipe_runs_without_its_launcher(tiny_model, corpus, tmp_path):
    """`python run_clm.py --mode classic` (and so `python run_clm.py --deepspeed ds_config.json`, an easy slip since
    the other modes start with python): this one process stands in for the deepspeed launcher, where DeepSpeed
    would otherwise look for MPI and fail with a traceback, and trains as under the launcher."""
    out = tmp_path / "classic"
    result = python("run_clm.py", "--mode", "classic", *common_flags(tiny_model, corpus, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "mode:        classic (--mode)" in result.stdout
    assert "DeepSpeed ZeRO-2 with the optimizer in CPU RAM" in result.stdout and "Traceback" not in result.stderr
    check_trained_run(out)


def test_without_deepspeed(tiny_model, corpus, tmp_path):
    out = tmp_path / "plain"
    result = python("run_clm.py", *common_flags(tiny_model, corpus, out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "plain PyTorch (no DeepSpeed)" in result.stdout
    check_trained_run(out)


def test_separate_examples_masks_padding(tiny_model, corpus, tmp_path):
    """Each line on its own, padded to the block: padding never counts in the loss."""
    lines = [line for line in (corpus / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    (tmp_path / "lines.txt").write_text("\n".join(lines[:400]), encoding="utf-8")
    # A .txt file is one example; a csv with one row per line makes each line one.
    converted = python("texttocsv.py", "lines.txt", "--split", "line", cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    out = tmp_path / "separate"
    result = python("run_clm.py", "--model_name_or_path", tiny_model, "--train_file", tmp_path / "lines.csv",
                    "--do_train", "--do_eval", "--separate_examples", "--block_size", 32, "--output_dir", out,
                    "--per_device_train_batch_size", 16, "--max_steps", 20, "--learning_rate", 2e-3,
                    "--logging_steps", 5, "--use_cpu", "--save_strategy", "no")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = logged_losses(out)
    assert losses[-1] < losses[0]


CLASSIC_COMMAND = (
    "deepspeed --num_gpus=1 run_clm.py --deepspeed ds_config.json --model_name_or_path gpt2-xl "
    "--train_file train.csv --validation_file validation.csv --do_train --do_eval --fp16 --overwrite_cache "
    '--evaluation_strategy="steps" --output_dir finetuned --save_steps 200 --eval_steps 200 --num_train_epochs 1 '
    "--gradient_accumulation_steps 2 --per_device_train_batch_size 8"
)


def test_classic_command_line(tiny_model, corpus, tmp_path):
    """The classic guide's command, word for word but the model path and --fp16 (no fp16 on a CPU)."""
    for name in ("train", "validation"):
        shutil.copy(corpus / f"{name}.txt", tmp_path / f"{name}.txt")
    converted = python("texttocsv.py", cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    shutil.copy(os.path.join(REPO, "ds_config.json"), tmp_path)
    classic = CLASSIC_COMMAND.replace("run_clm.py", os.path.join(REPO, "run_clm.py"))
    classic = classic.replace("gpt2-xl", str(tiny_model)).replace("--fp16", "--bf16 --use_cpu")
    result = run(["bash", "-c", classic], cwd=tmp_path,
                 env={"PATH": os.path.dirname(DEEPSPEED) + os.pathsep + os.environ["PATH"]})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--evaluation_strategy is now --eval_strategy" in result.stderr
    out = tmp_path / "finetuned"
    with open(out / "eval_results.json") as f:
        assert math.isfinite(json.load(f)["perplexity"])
    with open(out / "trainer_state.json") as f:
        state = json.load(f)
    assert state["global_step"] > 0 and state["epoch"] == pytest.approx(1.0)
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("launcher", ["python", "deepspeed"])
def test_arguments_from_a_json_file(launcher, tiny_model, corpus, tmp_path):
    """`python run_clm.py args.json`, and docs/training.md's `deepspeed --num_gpus=1 run_clm.py args.json` (the
    launcher puts --local_rank=0 before the file). A null value is the flag's default, not the text "None"."""
    out = tmp_path / "fromjson"
    args = {"model_name_or_path": str(tiny_model), "train_file": str(corpus / "train.txt"),
            "do_train": True, "output_dir": str(out), "block_size": 64, "max_steps": 3, "use_cpu": True,
            "save_strategy": "no", "report_to": ["none"], "tokenizer_name": None, "max_train_samples": None}
    if launcher == "deepspeed":
        args["deepspeed"] = os.path.join(REPO, "ds_config.json")
    (tmp_path / "args.json").write_text(json.dumps(args))
    run_it = deepspeed_run if launcher == "deepspeed" else lambda *a: python("run_clm.py", *a)
    result = run_it(tmp_path / "args.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("DeepSpeed ZeRO-2" in result.stdout) == (launcher == "deepspeed")
    with open(out / "trainer_state.json") as f:
        assert json.load(f)["global_step"] == 3



def test_prompt_completion_examples_train_on_their_completions(tiny_model, corpus, tmp_path):
    """A jsonl of prompt/completion pairs: one sequence per example, the loss on the completions, the start-up
    summary says so; the loss falls and the model generates."""
    lines = [line for line in (corpus / "train.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [{"prompt": lines[i] + "\n", "completion": lines[i + 1]} for i in range(0, 600, 2)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(pair) for pair in pairs), encoding="utf-8")
    out = tmp_path / "pairs"
    result = python("run_clm.py", "--model_name_or_path", tiny_model, "--train_file", tmp_path / "pairs.jsonl",
                    "--do_train", "--output_dir", out, "--block_size", 48, "--per_device_train_batch_size", 8,
                    "--max_steps", 20, "--learning_rate", 2e-3, "--logging_steps", 5, "--use_cpu",
                    "--save_strategy", "no")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"(\d+) train prompt/completion examples, (\d+) of them cut to the block of 48 tokens; "
                        r"([\d,]+) completion tokens count in the loss", result.stdout)
    assert summary and int(summary[1]) == 300, result.stdout[-3000:]
    assert 0 < int(summary[3].replace(",", "")) < 300 * 48
    losses = logged_losses(out)
    assert losses[-1] < losses[0]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).generate(max_new_tokens=5, do_sample=False).shape[1] > 1


def test_a_port_in_use_is_one_line_naming_the_flag(tiny_model, corpus, tmp_path):
    """Another run holds the launcher's rendezvous port: one line that says which port and what to pass."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run([DEEPSPEED, "--num_gpus=1", f"--master_port={port}", os.path.join(REPO, "run_clm.py"),
                      "--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt", "--do_train",
                      "--output_dir", tmp_path / "out", "--use_cpu", "--max_steps", "1"])
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # Said once, and again once the launcher has said its own lines, so that it is what the user reads last.
    assert errors == 2 * [f"error: port {port}, where the launcher's processes meet, is in use (another run on this "
                          f"machine?); give the launcher a free one: deepspeed --master_port {port + 1} --num_gpus=N "
                          "run_clm.py ... (torchrun takes --master_port too)"], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_run_stats_start_a_line_of_their_own_in_a_log_file(tiny_model, corpus, tmp_path):
    """Both streams into one log file, as `python run_clm.py ... > train.log 2>&1` makes it: the run stats line
    came while the progress bar still held its line, and was glued to its end."""
    import subprocess

    out = tmp_path / "out"
    with open(tmp_path / "train.log", "w") as log:
        code = subprocess.call([sys.executable, os.path.join(REPO, "run_clm.py"), "--model_name_or_path",
                                str(tiny_model), "--train_file", str(corpus / "train.txt"), "--do_train",
                                "--output_dir", str(out), "--block_size", "64", "--max_steps", "4",
                                "--save_strategy", "no", "--use_cpu"], stdout=log, stderr=subprocess.STDOUT)
    text = (tmp_path / "train.log").read_text()
    assert code == 0, text[-3000:]
    assert [line for line in text.splitlines() if "run stats: {" in line][0].startswith("run stats: {")

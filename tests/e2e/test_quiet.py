"""A run prints what a user needs and no warning a user has to think about: the lines libraries print that are
known to be harmless here are gone, from a first run, a resumed one and one under the deepspeed launcher. Written to
a log file (these runs' output is a pipe), it has no progress bar: one plain line per phase. Under the launcher, the
tool's error is the last thing said."""

import json
import os
import re
import subprocess
import sys

from clmkit.machine import free_port
from conftest import DEEPSPEED, REPO, run

# What these runs printed before, each harmless (clmkit/quiet.py and the fixes at their source say why).
NOISE = [
    "OMP_NUM_THREADS/MKL_NUM_THREADS unset",
    "Gradient accumulation steps mismatch",
    "The tokenizer has new PAD/BOS/EOS tokens",
    "loss_type=None",
    "built successfully",
    "There were missing keys in the checkpoint model loaded",
    "Failed to load",
    "Attempting to get learning rate from scheduler before it has started",
    "is an Enum subclass",
    "Traceback",
    "deprecated",  # e.g. Transformers 5.23's notice for gradient_checkpointing, now activation_checkpointing
]
# The deepspeed launcher's own processes start before any code of ours and say this on a machine without a GPU.
LAUNCHERS_OWN = "Setting accelerator to CPU"


def flags(tiny_model, corpus, out, steps):
    return ["--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt", "--validation_file",
            corpus / "validation.txt", "--do_train", "--do_eval", "--output_dir", out, "--block_size", 64,
            "--max_steps", steps, "--save_steps", 2, "--eval_strategy", "steps", "--eval_steps", 2,
            "--logging_steps", 1, "--use_cpu", "--report_to", "none"]


def assert_quiet(result, launched=False):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in text, noise
    worker_lines = [line for line in text.splitlines() if LAUNCHERS_OWN in line]
    assert len(worker_lines) == (2 if launched else 0), worker_lines  # the runner's and launch.py's, none of ours
    # A log file: no carriage return or cursor move of a redrawn bar, no bar of the libraries', a line per log.
    assert "\r" not in text and "\x1b[" not in text
    for bar in ("Writing model shards", "Loading weights", "Generating train split", "it/s]"):
        assert bar not in text, bar
    assert re.search(r"^step \d+/\d+ \(\d+%.*\): loss ", result.stdout, re.M) and "): eval_loss " in result.stdout


def test_a_run_and_its_resume_print_no_known_noise(tiny_model, corpus, tmp_path):
    out = tmp_path / "out"
    first = run([sys.executable, os.path.join(REPO, "run_clm.py"), *map(str, flags(tiny_model, corpus, out, 2))])
    assert_quiet(first)
    resumed = run([sys.executable, os.path.join(REPO, "run_clm.py"), *map(str, flags(tiny_model, corpus, out, 4))])
    assert_quiet(resumed)
    assert "resuming from" in resumed.stdout


def test_a_run_under_the_launcher_prints_no_known_noise(tiny_model, corpus, tmp_path):
    """Two processes under DeepSpeed with gradient accumulation, OMP_NUM_THREADS unset as on a fresh machine: every
    source of the noise at once."""
    command = [DEEPSPEED, "--num_gpus=2", f"--master_port={free_port()}", os.path.join(REPO, "run_clm.py"),
               *map(str, flags(tiny_model, corpus, tmp_path / "out", 2)), "--deepspeed",
               os.path.join(REPO, "ds_config.json"), "--bf16", "--gradient_accumulation_steps", "2"]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    assert_quiet(subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600),
                 launched=True)


def test_an_error_under_the_launcher_is_the_last_line(tmp_path, tiny_model, corpus):
    """The launcher answers the worker's exit with lines of its own (the processes it kills, the whole command and
    its exit code): the tool's error is repeated after them, and nothing is written."""
    config = json.loads(open(os.path.join(REPO, "ds_config.json")).read())
    config["zero_optimization"]["stage"] = 5
    (tmp_path / "stage5.json").write_text(json.dumps(config))
    command = [DEEPSPEED, "--num_gpus=1", f"--master_port={free_port()}", os.path.join(REPO, "run_clm.py"),
               "--deepspeed", tmp_path / "stage5.json", *flags(tiny_model, corpus, tmp_path / "out", 2)]
    result = subprocess.run(list(map(str, command)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    error = '"zero_optimization.stage" is 5'
    assert error in lines[-1] and lines[-1].startswith("error: "), lines[-4:]
    assert "sigkill_handler" in "\n".join(lines[:-1])  # the launcher's lines came, before it
    assert "Traceback" not in result.stdout and not (tmp_path / "out").exists()

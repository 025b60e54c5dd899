"""What a rerun says and does beyond picking up where a killed run stopped: a second Ctrl-C, a changed learning rate,
a weights-only checkpoint, a finished command run again, a build lock left by a killed run. (A separate file from
test_resume.py so that the two run side by side on CI's two workers.)"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from conftest import REPO, SAVE_EVERY, STEPS, final_state, resume_command, run_to_end, run_until_paused


def test_a_second_ctrl_c_stops_at_once_in_one_line(tiny_model, corpus, tmp_path):
    """The first Ctrl-C asks for a checkpoint at the end of the step; a second one stops at once, as docs/resume.md
    says: with exit code 130 and one line, not a KeyboardInterrupt traceback."""
    proc = run_until_paused(resume_command(tiny_model, corpus, tmp_path / "out", use_deepspeed=False), "step:3")
    os.killpg(proc.pid, signal.SIGINT)
    for line in proc.stdout:  # the first is taken: the run goes on to the end of step 4 (about a second here)
        if "notice: Ctrl-C (SIGINT) received" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    assert "stopped at once by a second Ctrl-C" in rest and "Traceback" not in rest, rest[-3000:]


def test_a_second_ctrl_c_while_a_checkpoint_is_written_says_what_a_rerun_does(tiny_model, corpus, tmp_path):
    """Stopped inside the write of checkpoint-12: the half-written folder is named, and what the rerun does with it;
    the rerun then does just that."""
    out = tmp_path / "out"
    cmd = resume_command(tiny_model, corpus, out, use_deepspeed=False)
    proc = run_until_paused(cmd, "save:12:hold")
    os.killpg(proc.pid, signal.SIGINT)
    for line in proc.stdout:  # one at a time: two pending SIGINTs would arrive as one
        if "notice: Ctrl-C (SIGINT) received" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    assert (f"stopped at once by a second Ctrl-C; {out / 'checkpoint-12'} was being written and is incomplete: "
            f"rerunning the same command removes it and resumes from {out / 'checkpoint-6'}") in rest, rest[-3000:]
    log = run_to_end(cmd)
    assert f"notice: removing {out / 'checkpoint-12'}" in log and f"resuming from {out / 'checkpoint-6'}" in log


@pytest.mark.parametrize("use_deepspeed", [False, True], ids=["plain", "deepspeed"])
def test_a_changed_learning_rate_on_resume_is_named_with_the_one_that_goes_on(use_deepspeed, tiny_model, corpus,
                                                                              tmp_path):
    """Without DeepSpeed the optimizer state from the checkpoint holds the learning rate; DeepSpeed's scheduler is
    built from the flags. The notice says which, and the logged learning rate after the resume shows it."""
    out = tmp_path / "out"
    cmd = resume_command(tiny_model, corpus, out, use_deepspeed)
    at = cmd.index("--max_steps")
    first = cmd[:at + 1] + ["6"] + cmd[at + 2:] + ["--lr_scheduler_type", "constant"]
    run_to_end(first)
    log = run_to_end(first[:at + 1] + ["12"] + first[at + 2:] + ["--learning_rate", "5e-3"])
    winner = "this run's value, 0.005" if use_deepspeed else "the checkpoint's value, 0.001"
    assert f"notice: --learning_rate is 0.005 here and 0.001 in {out / 'checkpoint-6'}: {winner}," in log, log[-3000:]
    with open(out / "trainer_state.json") as f:
        rates = {entry["step"]: entry["learning_rate"] for entry in json.load(f)["log_history"]
                 if "learning_rate" in entry}
    if use_deepspeed:  # its WarmupDecayLR from 0.005 down to 0 at step 12: above what 0.001 can give at step 7
        assert rates[7] > 0.0011, rates
    else:  # a constant schedule on the checkpoint's rate
        assert rates[7] == pytest.approx(1e-3) and rates[12] == pytest.approx(1e-3), rates


def test_a_weights_only_checkpoint_is_not_resumed_as_if_whole(tiny_model, corpus, tmp_path):
    """--save_only_model checkpoints hold no optimizer state: a rerun went on with a fresh optimizer and learning-rate
    schedule without a word (under DeepSpeed it blamed the checkpoint for being written without DeepSpeed). Now it
    says what the checkpoint is and how to go on from it, and changes nothing."""
    out = tmp_path / "out"
    cmd = resume_command(tiny_model, corpus, out, use_deepspeed=False) + ["--save_only_model"]
    proc = run_until_paused(cmd, "step:9")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = contents(out)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"error: {out}/checkpoint-6: weights only (--save_only_model), no optimizer state to resume" in \
        result.stderr and "--model_name_or_path" in result.stderr and "Traceback" not in result.stderr
    assert contents(out) == before


# ---------------------------------------------------------------- a finished run, rerun


def contents(folder):
    """{relative path: file bytes} of everything under folder."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_rerunning_a_finished_command_changes_nothing(tiny_model, corpus, tmp_path):
    """docs/cloud.md's start-up script reruns the command at every boot, also once it has finished. Resumed at
    its last step, the Trainer trained one step more (under DeepSpeed that changed the weights), wrote a wrong
    train_loss over the real one, and --save_total_limit then deleted the last real checkpoint. Now the rerun says
    the run is finished and touches nothing; a higher --max_steps still trains on from the last checkpoint. The
    check comes before any engine is built, so one without DeepSpeed stands for both."""
    out = tmp_path / "out"
    cmd = resume_command(tiny_model, corpus, out, use_deepspeed=False)
    run_to_end(cmd)
    finished = contents(out)
    log = run_to_end(cmd)
    assert f"already finished at step {STEPS}" in log
    assert contents(out) == finished
    longer = list(cmd)
    longer[longer.index("--max_steps") + 1] = str(STEPS + SAVE_EVERY)
    log = run_to_end(longer)
    assert f"resuming from {out}/checkpoint-{STEPS}" in log
    assert final_state(out)[0] == STEPS + SAVE_EVERY
    # The new steps run at the tail of the schedule the Trainer builds for the longer run: said, with the way out.
    assert (f"notice: {out}/checkpoint-{STEPS} ended a run of {STEPS} steps; its {SAVE_EVERY} new steps "
            f"({STEPS + 1}-{STEPS + SAVE_EVERY}) go on at the end of its learning-rate schedule: 0 (where the "
            f"{STEPS}-step schedule ended), then 0.000208 falling to 4.17e-05 (--learning_rate 0.001, linear)") in log, \
        log[-3000:]
    with open(out / "trainer_state.json") as f:  # the rates it names are the ones the steps trained at
        rates = [entry["learning_rate"] for entry in json.load(f)["log_history"] if "loss" in entry][STEPS:]
    assert rates[0] == 0 and rates[1] == pytest.approx(0.000208, rel=1e-2) and rates[-1] == pytest.approx(4.17e-5,
                                                                                                          rel=1e-2)
    assert f"--model_name_or_path {out} --output_dir ANOTHER_FOLDER --max_steps {SAVE_EVERY}" in log


def test_weights_in_shards_resume_and_a_replaced_model_leaves_no_file_of_the_old_one(tiny_model, corpus, tmp_path):
    """The weights are written in shards, so that host RAM holds one shard's copy at a time (a 7B model's 13.5 GB
    at once otherwise); here a tiny model's are split with CLM_TEST_SHARD_BYTES. A checkpoint in shards resumes, and
    a final model written over an earlier one in other files leaves none of the earlier files behind, which
    from_pretrained would read instead."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from clmkit.saving import weight_files

    out = tmp_path / "out"
    cmd = resume_command(tiny_model, corpus, out, use_deepspeed=False)
    run_to_end(cmd, env={"CLM_TEST_SHARD_BYTES": "100000"})
    shards = weight_files(out)
    assert len(shards) > 3 and "model.safetensors.index.json" in shards and "model.safetensors" not in shards, shards
    assert "model.safetensors.index.json" in weight_files(out / f"checkpoint-{STEPS}")
    longer = list(cmd)
    longer[longer.index("--max_steps") + 1] = str(STEPS + SAVE_EVERY)
    log = run_to_end(longer)
    assert f"resuming from {out}/checkpoint-{STEPS}" in log
    assert final_state(out)[0] == STEPS + SAVE_EVERY
    assert weight_files(out) == ["model.safetensors"]
    # what the checkpoints cost, said and in run_stats.json: their size, the time to write one and to read one back
    last = out / f"checkpoint-{STEPS + SAVE_EVERY}"
    size = sum(path.stat().st_size for path in last.rglob("*") if path.is_file())
    assert re.search(rf"checkpoint-{STEPS + SAVE_EVERY} written in \d+\.\d s \({size / 2**30:.2f} GiB\)", log), log
    assert re.search(rf"{out}/checkpoint-{STEPS} read in \d+\.\d s \(\d+\.\d\d GiB\)", log), log
    with open(out / "run_stats.json") as f:
        stats = json.load(f)
    assert stats["checkpoint_gib"] == pytest.approx(size / 2**30) and stats["checkpoint_write_s"] > 0
    assert 0 < stats["checkpoint_read_s"] < 60 and stats["checkpoint_read_gib"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    saved = load_file(out / f"checkpoint-{STEPS + SAVE_EVERY}" / "model.safetensors")
    for name, value in model.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name


# ---------------------------------------------------------------- a build killed half-way


def test_a_rerun_clears_the_build_lock_a_killed_run_left(tiny_model, corpus, tmp_path):
    """A run killed while torch built DeepSpeed's CPU Adam leaves `lock` in the build folder. torch takes that lock
    on every run, even when the build is done, and waited on it forever without a word. The rerun removes it, says
    so, and trains. The builds live in a folder of this test's own (TORCH_EXTENSIONS_DIR), so that no other run
    clears the lock first and this lock never holds up another run."""
    from torch.utils.cpp_extension import _get_build_directory

    shared = os.path.dirname(_get_build_directory("cpu_adam", verbose=False))
    own = tmp_path / "extensions"
    if os.path.isdir(shared):  # the builds done so far, so that this run need not compile again
        shutil.copytree(shared, own, ignore=shutil.ignore_patterns("lock"))
    lock = own / "cpu_adam" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    killed_at = time.time() - 600
    os.utime(lock, (killed_at, killed_at))
    out = run_to_end(resume_command(tiny_model, corpus, tmp_path / "out", use_deepspeed=True),
                     env={"TORCH_EXTENSIONS_DIR": str(own)})
    assert f"notice: removed {lock}, left by a build of cpu_adam that was killed" in out
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")

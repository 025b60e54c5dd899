"""Pre-emption: a run killed anywhere and rerun with the identical command ends where an uninterrupted run ends.

Exact equality holds on CPU in full precision: the Trainer restores weights, optimizer, scheduler, RNG and
the data position, so the arithmetic after resume is the same arithmetic.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from clmkit.machine import free_port
from conftest import DEEPSPEED, REPO

STEPS, SAVE_EVERY = 18, 6


# The fp16 mode on the CPU: fp16 weights, its 8-bit AdamW with stochastic rounding, the loss scale.
FP16_MODE = ["--dtype", "float16", "--optim", "adamw_torch_8bit"]


def command(tiny_model, corpus, out, use_deepspeed, fp16_mode=False):
    flags = ["--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt", "--do_train",
             "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 4,
             "--max_steps", STEPS, "--save_steps", SAVE_EVERY, "--logging_steps", 1, "--learning_rate", 1e-3,
             "--seed", 3, "--use_cpu", "--report_to", "none",
             "--save_total_limit", 1]  # pruning must never remove the only complete checkpoint
    script = [os.path.join(REPO, "run_clm.py"), *map(str, flags), *(FP16_MODE if fp16_mode else [])]
    if use_deepspeed:  # full precision: DeepSpeed's CPU Adam on fp32 master weights
        return [DEEPSPEED, "--num_gpus=1", f"--master_port={free_port()}", *script,
                "--deepspeed", os.path.join(REPO, "ds_config.json")]
    return [sys.executable, *script]


def start(cmd, env=None):
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_to_end(cmd, env=None):
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def run_until_paused(cmd, hook):
    """Start the run with the test hook; return the process once it says it has paused there."""
    proc = start(cmd, {"CLM_TEST_PAUSE": hook})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "test hook: paused" in line:  # progress bars share the line
            proc.seen = "".join(seen)
            return proc
    proc.wait()
    pytest.fail(f"the run ended (exit {proc.returncode}) before the hook {hook}:\n" + "".join(seen[-40:]))


def final_state(out):
    with open(out / "trainer_state.json") as f:
        state = json.load(f)
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    with open(out / "train_results.json") as f:
        train_loss = json.load(f)["train_loss"]
    return state["global_step"], losses, train_loss, load_file(out / "model.safetensors")


def assert_same_result(reference, out):
    step, losses, train_loss, weights = final_state(out)
    ref_step, ref_losses, ref_train_loss, ref_weights = reference
    assert step == ref_step == STEPS
    assert losses[-1] == ref_losses[-1]
    # the mean loss over every step of the run, the resumed ones and those before the checkpoint alike
    assert train_loss == pytest.approx(ref_train_loss, rel=1e-6)
    assert weights.keys() == ref_weights.keys()
    for name in weights:
        assert weights[name].equal(ref_weights[name]), name


@pytest.fixture(scope="module", params=["plain", "deepspeed", "fp16"])
def setup(request, tiny_model, corpus, tmp_path_factory):
    """(the command of this way of training, for an --output_dir; the uninterrupted run's final state)."""
    mode = request.param
    out = tmp_path_factory.mktemp("reference") / "out"

    def cmd(out):
        return command(tiny_model, corpus, out, mode == "deepspeed", fp16_mode=mode == "fp16")
    run_to_end(cmd(out))
    cmd.mode = mode
    return cmd, final_state(out)


@pytest.mark.parametrize("hook, resumes_from", [
    ("step:3", None),                        # before the first checkpoint: starts again from step 0
    ("step:9", "checkpoint-6"),              # between checkpoints
    ("save:12", "checkpoint-6"),             # while checkpoint-12 is being written: it must not be used
])
def test_sigkill_then_rerun_matches_uninterrupted(setup, hook, resumes_from, tmp_path):
    make_command, reference = setup
    if make_command.mode != "plain" and hook != {"deepspeed": "save:12", "fp16": "step:9"}[make_command.mode]:
        # Kept to the case where DeepSpeed's own files are cut short, and to one resume of the fp16 mode (its loss
        # scale and random rounding carry on from the checkpoint), to keep CI short; the other points exercise the
        # same resume path as the plain run.
        pytest.skip("covered by the plain run")
    out = tmp_path / "out"
    cmd = make_command(out)
    proc = run_until_paused(cmd, hook)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if hook.startswith("save:"):
        assert not (out / "checkpoint-12" / "trainer_state.json").exists()
        assert (out / "checkpoint-6" / "trainer_state.json").is_file()  # not pruned for a half-written one
    log = run_to_end(cmd)
    if resumes_from:
        assert f"resuming from {out / resumes_from}" in log
    else:
        assert "resuming from" not in log
    assert_same_result(reference, out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-18"]  # --save_total_limit 1


def test_sigterm_checkpoints_and_exits_then_rerun_matches(setup, tmp_path):
    make_command, reference = setup
    if make_command.mode == "fp16":
        pytest.skip("the fp16 mode's resume is covered after a SIGKILL")
    out = tmp_path / "out"
    cmd = make_command(out)
    proc = run_until_paused(cmd, "step:8")
    # To the whole process group, as a cloud's shutdown or Ctrl-C does: DeepSpeed's single-node runner
    # does not forward a signal sent to it alone.
    os.killpg(proc.pid, signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait(timeout=120)
    assert "SIGTERM received" in rest
    assert "stopped by SIGTERM after step 9" in rest, rest[-3000:]
    assert (out / "checkpoint-9" / "trainer_state.json").is_file()  # a fresh checkpoint, off the save schedule
    assert not (out / "model.safetensors").exists()  # no final model from an unfinished run
    log = run_to_end(cmd)
    assert f"resuming from {out / 'checkpoint-9'}" in log
    assert_same_result(reference, out)


def test_fresh_start_keeps_the_earlier_run_until_it_finishes(setup, tmp_path):
    make_command, _ = setup
    if make_command.mode != "plain":
        pytest.skip("folder handling is the same in every mode")
    out = tmp_path / "out"
    cmd = make_command(out)
    run_to_end(cmd)
    earlier = (out / "model.safetensors").read_bytes()
    proc = run_until_paused(cmd + ["--overwrite_output_dir"], "step:2")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "starting from step 0 (--overwrite_output_dir)" in proc.seen
    aside = [p for p in out.iterdir() if p.name.startswith("previous-run-")]
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes() == earlier
    assert (aside[0] / "checkpoint-18" / "trainer_state.json").is_file()
    run_to_end(cmd + ["--overwrite_output_dir"])
    assert (out / "trainer_state.json").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith("previous-run-")]


def test_a_second_ctrl_c_stops_at_once_in_one_line(tiny_model, corpus, tmp_path):
    """The first Ctrl-C asks for a checkpoint at the end of the step; a second one stops at once, as docs/resume.md
    says: with exit code 130 and one line, not a KeyboardInterrupt traceback."""
    proc = run_until_paused(command(tiny_model, corpus, tmp_path / "out", use_deepspeed=False), "step:3")
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
    cmd = command(tiny_model, corpus, out, use_deepspeed=False)
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
    cmd = command(tiny_model, corpus, out, use_deepspeed)
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
    cmd = command(tiny_model, corpus, out, use_deepspeed=False) + ["--save_only_model"]
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
    cmd = command(tiny_model, corpus, out, use_deepspeed=False)
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
    out = run_to_end(command(tiny_model, corpus, tmp_path / "out", use_deepspeed=True),
                     env={"TORCH_EXTENSIONS_DIR": str(own)})
    assert f"notice: removed {lock}, left by a build of cpu_adam that was killed" in out
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")

"""Pre-emption: a run killed anywhere and rerun with the identical command ends where an uninterrupted run ends.

Exact equality holds on CPU in full precision: the Trainer restores weights, optimizer, scheduler, RNG and
the data position, so the arithmetic after resume is the same arithmetic.
"""

import os
import signal

import pytest

from conftest import STEPS, final_state, resume_command, run_to_end, run_until_paused


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
        return resume_command(tiny_model, corpus, out, mode == "deepspeed", fp16_mode=mode == "fp16")
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




def test_a_streamed_run_killed_and_rerun_sees_each_example_once_in_order(tiny_model, tmp_path):
    """--streaming: the run killed (SIGKILL) at step 6, its checkpoint at step 4, and rerun, trains steps 5-8 on the
    sequences the uninterrupted run trained them on: none again, none skipped, in the file's order."""
    import json
    import sys

    from conftest import REPO

    rows = [f"example {i:04d} " + "to be or not to be " * (i % 3 + 1) for i in range(200)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows), encoding="utf-8")

    def command(out):
        return [sys.executable, os.path.join(REPO, "run_clm.py"), "--model_name_or_path", str(tiny_model),
                "--train_file", str(data), "--streaming", "--separate_examples", "--do_train", "--output_dir",
                str(out), "--block_size", "32", "--per_device_train_batch_size", "4", "--max_steps", "8",
                "--save_steps", "4", "--seed", "3", "--use_cpu", "--report_to", "none"]

    def recorded(path):
        steps = {}
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            steps.setdefault(entry["step"], []).append(entry["sequences"])
        return steps

    run_to_end(command(tmp_path / "whole"), env={"CLM_TEST_RECORD": str(tmp_path / "whole.jsonl")})
    whole = recorded(tmp_path / "whole.jsonl")
    assert sorted(whole) == list(range(1, 9)) and all(len(batches) == 1 for batches in whole.values())
    seen = [tuple(sequence) for step in sorted(whole) for sequence in whole[step][0]]
    assert len(set(seen)) == 32  # 8 steps x 4: 32 examples, each once
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert [list(s[:12]) for s in seen] == [tokenizer(row)["input_ids"][:12] for row in rows[:32]]  # in order

    proc = run_until_paused(command(tmp_path / "killed"), "step:6")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    output = run_to_end(command(tmp_path / "killed"), env={"CLM_TEST_RECORD": str(tmp_path / "rerun.jsonl")})
    assert "resuming from" in output and "checkpoint-4" in output
    rerun = recorded(tmp_path / "rerun.jsonl")
    assert sorted(rerun) == [5, 6, 7, 8]
    for step in (5, 6, 7, 8):
        assert rerun[step] == whole[step], step

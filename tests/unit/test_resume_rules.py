"""What a rerun says about the checkpoint it continues from, and how a stop signal is told apart from a second
Ctrl-C."""

import json
import signal

import pytest

from clmkit.args import parse_args
from clmkit.checkpoints import RunFlags, changed_flag_notices, what_a_rerun_finds
from clmkit.trainer import StopOnSignal


def checkpoint_trained_with(folder, *flags):
    _, _, training_args, _ = parse_args(["--output_dir", str(folder.parent), "--do_train", *flags])
    folder.mkdir(parents=True)
    state = {"stateful_callbacks": {"RunFlags": RunFlags(training_args).state()}, "global_step": 4}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_a_changed_flag_is_named_with_the_value_that_goes_on(tmp_path):
    checkpoint = checkpoint_trained_with(tmp_path / "out" / "checkpoint-4", "--learning_rate", "1e-3")
    _, _, same, _ = parse_args(["--output_dir", "out", "--do_train", "--learning_rate", "1e-3"])
    assert changed_flag_notices(str(checkpoint), same) == []
    _, _, changed, _ = parse_args(["--output_dir", "out", "--do_train", "--learning_rate", "5e-3",
                                   "--max_grad_norm", "0.5"])
    learning_rate, clipping = changed_flag_notices(str(checkpoint), changed)
    # without DeepSpeed the optimizer state, loaded from the checkpoint, holds the learning rate
    assert learning_rate.startswith(f"notice: --learning_rate is 0.005 here and 0.001 in {checkpoint}: the "
                                    "checkpoint's value, 0.001, is used from here on")
    assert "--overwrite_output_dir" in learning_rate
    assert clipping.startswith(f"notice: --max_grad_norm is 0.5 here and 1.0 in {checkpoint}: this run's value, 0.5,")


def test_a_rerun_after_a_stop_at_once_is_described(tmp_path):
    out = tmp_path / "out"
    assert what_a_rerun_finds(str(out)) == "rerunning the same command starts from step 0 (no complete checkpoint)"
    checkpoint_trained_with(out / "checkpoint-6")
    (out / "checkpoint-12").mkdir()  # cut short: no trainer_state.json
    assert what_a_rerun_finds(str(out)) == (f"{out / 'checkpoint-12'} was being written and is incomplete: rerunning "
                                            f"the same command removes it and resumes from {out / 'checkpoint-6'}")


@pytest.fixture
def stop():
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield StopOnSignal()
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])


@pytest.mark.parametrize("first, then", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)])
def test_a_ctrl_c_passed_on_by_the_launcher_is_one_stop(stop, first, then):
    """In a terminal a Ctrl-C reaches the worker itself and, through the deepspeed launcher, as a SIGTERM."""
    stop._on_signal(first, None)
    stop._on_signal(then, None)  # no KeyboardInterrupt: the checkpoint is still written
    assert stop.received == signal.SIGINT


def test_a_second_ctrl_c_stops_at_once(stop):
    stop._on_signal(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        stop._on_signal(signal.SIGINT, None)
    other = StopOnSignal()
    other._on_signal(signal.SIGTERM, None)
    assert other.received == signal.SIGTERM  # a cloud's notice alone is reported as what it is


def test_a_checkpoint_loads_onto_an_indexed_cpu_device(tmp_path):
    """The Trainer of several CPU processes loads optimizer.pt onto each process's device, "cpu:<n>"; torch's own
    CPU deserializer takes "cpu" only, and a bf16-mode checkpoint could not resume on 2 CPU processes."""
    import torch

    from clmkit.checkpoints import allow_loading_onto_indexed_cpu

    torch.save({"state": torch.arange(3.0)}, tmp_path / "optimizer.pt")
    allow_loading_onto_indexed_cpu()
    loaded = torch.load(tmp_path / "optimizer.pt", map_location=torch.device("cpu", 0), weights_only=True)
    assert torch.equal(loaded["state"], torch.arange(3.0)) and loaded["state"].device.type == "cpu"

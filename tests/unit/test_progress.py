"""In a log file a run says where it is in one plain line per log: the step of how many, the time so far and left."""

import time

from transformers import TrainerState

from clmkit.progress import log_line


def test_a_log_line_says_the_step_and_the_time_left():
    state = TrainerState(global_step=40, max_steps=400)
    line = log_line(state, {"loss": 3.21049, "learning_rate": 4.5e-05, "epoch": 0.1}, time.time() - 62, 0)
    assert line == "step 40/400 (10%, 0:01:02 so far, about 0:09:18 left): loss 3.21, learning_rate 4.5e-05, epoch 0.1"


def test_a_resumed_run_times_only_its_own_steps():
    state = TrainerState(global_step=220, max_steps=400)
    line = log_line(state, {"loss": 2.0}, time.time() - 20, 200)  # 20 steps in 20 s since the resume at 200
    assert line.startswith("step 220/400 (55%, 0:00:20 so far, about 0:03:00 left): ")


def test_an_evaluation_alone_has_no_step():
    assert log_line(TrainerState(), {"eval_loss": 4.5}, time.time(), 0) == "eval_loss 4.5"

"""run_stats.json's figures: what each one covers."""

import json
from types import SimpleNamespace

import psutil

from clmkit.machine import GiB, TreeMemorySampler
from clmkit.stats import RunStatsCallback


def test_the_host_peak_covers_what_the_run_held_before_training(tmp_path):
    """Loading a model can hold more host RAM than training does (a whole checkpoint read on the CPU): the sampler
    started with the command, not the one the Trainer's callback would start, gives the peak."""
    sampler = TreeMemorySampler(root=psutil.Process())
    loaded = bytearray(512 * 1024 * 1024)  # touched below, so resident
    loaded[::4096] = b"\x01" * len(loaded[::4096])
    held = sampler.sample()
    del loaded
    stats = RunStatsCallback(str(tmp_path), tokens_per_step=1024, host_memory=sampler).summary()
    assert stats["peak_host_rss_gib"] >= held / GiB > 0.5


def test_the_peak_through_the_final_save_is_added_after_training(tmp_path):
    """Writing the final model copies every weight to the CPU after training ended: run_stats.json keeps the
    training peak and gains the peak through that save, which --plan's host RAM figure covers."""
    callback = RunStatsCallback(str(tmp_path), tokens_per_step=1024,
                                host_memory=TreeMemorySampler(root=psutil.Process()))
    callback.on_train_end(None, SimpleNamespace(is_world_process_zero=True), None)
    with open(tmp_path / "run_stats.json") as f:
        during_training = json.load(f)["peak_host_rss_gib"]
    copies = bytearray(768 * 1024 * 1024)  # the weights' CPU copies of a save
    copies[::4096] = b"\x01" * len(copies[::4096])
    callback.add_peak_through_save(is_main_process=True)
    with open(tmp_path / "run_stats.json") as f:
        stats = json.load(f)
    assert stats["peak_host_rss_gib"] == during_training
    assert stats["peak_host_rss_through_save_gib"] > during_training + 0.7


def test_the_time_to_the_first_step_runs_to_its_end(tmp_path, monkeypatch):
    """A first step that compiles (--torch_compile on a CPU: 74 s) is part of the wait: the figure runs from the
    command's start to the end of the first step, not to its beginning."""
    from clmkit import stats as stats_module

    callback = RunStatsCallback(str(tmp_path), tokens_per_step=1024,
                                host_memory=TreeMemorySampler(root=psutil.Process()))
    callback.launched = 1000.0
    for now, event in ((1006.0, callback.on_step_begin), (1080.0, callback.on_step_end),
                       (1081.0, callback.on_step_begin), (1082.0, callback.on_step_end)):
        monkeypatch.setattr(stats_module.time, "time", lambda now=now: now)
        event(None, None, None)
    assert callback.summary()["time_to_first_step_s"] == 80.0

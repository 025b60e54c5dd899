"""run_stats.json's figures: what each one covers."""

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

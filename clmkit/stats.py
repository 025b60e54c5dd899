"""What a run cost, measured: s/step, tokens/s, peak GPU and host memory, time from launch to the end of the first
step (loading, and compiling where a step compiles, included).

Written to output_dir/run_stats.json by rank 0 at the end of training; the benchmark and docs/gpu-runs.md read it.
Once the final model is written, the host peak through that save is added: writing the weights copies them to the
CPU (a shard at a time without DeepSpeed, clmkit/saving.py), and --plan's host RAM figure covers it.
"""

import json
import os
import statistics
import time

import torch
from transformers import TrainerCallback

from .machine import GiB, TreeMemorySampler, run_root


class RunStatsCallback(TrainerCallback):
    def __init__(self, output_dir, tokens_per_step, host_memory=None, warmup_steps=3):
        self.path = os.path.join(output_dir, "run_stats.json")
        self.tokens_per_step = tokens_per_step
        self.warmup_steps = warmup_steps  # the first steps' times (compiling, allocating) are left out
        self.launched = run_root().create_time()  # when the user's command started
        self.line = ""  # run_stats.json in one line, once written
        self.first_step_done = None  # the end of the first step: what a user waits for (compiling included)
        self.step_ends = []
        self.host = host_memory or TreeMemorySampler()  # peak from launch to the end of training
        self.extra = {}  # figures other callbacks measure (the checkpoints' sizes and times)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.time())
        if self.first_step_done is None:
            self.first_step_done = self.step_ends[0]

    def summary(self):
        durations = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])][self.warmup_steps:]
        s_per_step = statistics.median(durations) if durations else None
        stats = {
            "steps_timed": len(durations),
            "s_per_step": s_per_step,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_per_step / s_per_step if s_per_step else None,
            "time_to_first_step_s": self.first_step_done - self.launched if self.first_step_done else None,
            "peak_host_rss_gib": self._host_peak() / GiB,
            **self.extra,
        }
        if torch.cuda.is_available():
            stats["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
            stats["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
            stats["gpu"] = torch.cuda.get_device_name()
        return stats

    def _host_peak(self):
        self.host.sample()
        return self.host.peak

    def on_train_end(self, args, state, control, optimizer=None, **kwargs):
        stats = self.summary()
        skipped = getattr(getattr(optimizer, "optimizer", optimizer), "skipped_steps", None)  # the fp16 mode's
        if skipped is not None:
            stats["overflow_skipped_steps"] = skipped
        if state.is_world_process_zero:
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(stats, f, indent=2)
            # said once training has returned (report_run_stats): here the progress bar is still on its line
            self.line = "run stats: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                    for k, v in stats.items()})

    def add_peak_through_save(self, is_main_process):
        """After the final model is written: the host peak from launch through that save, into run_stats.json."""
        peak = self.host.stop()
        if not is_main_process or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            stats = json.load(f)
        stats["peak_host_rss_through_save_gib"] = peak / GiB
        with open(self.path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
        os.replace(self.path + ".tmp", self.path)  # whoever reads it mid-way gets the old file whole, or the new
        print(f"host RAM peak through the final save: {peak / GiB:.2f} GiB", flush=True)

"""Measured cost of a run: s/step, tokens/s, peak GPU and host memory, time to the first step.

Written to output_dir/run_stats.json by rank 0; the benchmark and docs/gpu-runs.md read it.
"""

import json
import os
import statistics
import threading
import time

from transformers import TrainerCallback

GiB = 2**30


def apply_gpu_memory_cap():
    """CLM_GPU_MEMORY_GIB=16 makes a large card behave like a 16 GB one (for measuring; users don't need it)."""
    cap = os.environ.get("CLM_GPU_MEMORY_GIB")
    if not cap:
        return
    import torch

    if torch.cuda.is_available():
        device = int(os.environ.get("LOCAL_RANK", "0"))
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * GiB / total), device)
        print(f"notice: GPU memory capped at {float(cap):g} GiB (CLM_GPU_MEMORY_GIB)", flush=True)


def run_root():
    """The process the user started: the topmost `deepspeed` launcher above us (the runner starts
    `python -m deepspeed.launcher.launch`, which starts this worker), else this process."""
    import psutil

    root = psutil.Process()
    parent = root.parent()
    while parent is not None:
        try:
            if not any("deepspeed" in part for part in parent.cmdline()):
                break
        except psutil.Error:
            break
        root, parent = parent, parent.parent()
    return root


def launch_time() -> float:
    """When the user's command started."""
    return run_root().create_time()


class HostMemorySampler:
    """Peak resident memory of the whole process tree (launcher and workers), sampled twice a second."""

    def __init__(self, interval=0.5):
        import psutil

        self.root = run_root()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_rss(self):
        import psutil

        total = 0
        try:
            tree = [self.root] + self.root.children(recursive=True)
        except psutil.Error:  # the launcher at the root has gone (killed with its shell): count this process
            self.root = psutil.Process()
            tree = [self.root]
        for proc in tree:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self.peak = max(self.peak, self._tree_rss())
        return self.peak


class RunStatsCallback(TrainerCallback):
    def __init__(self, output_dir, tokens_per_step, warmup_steps=3):
        self.path = os.path.join(output_dir, "run_stats.json")
        self.tokens_per_step = tokens_per_step
        self.warmup_steps = warmup_steps
        self.launched = launch_time()
        self.first_step_at = None
        self.step_ends = []
        self.host = HostMemorySampler()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.time())

    def summary(self):
        durations = [b - a for a, b in zip(self.step_ends, self.step_ends[1:])][self.warmup_steps:]
        s_per_step = statistics.median(durations) if durations else None
        stats = {
            "steps_timed": len(durations),
            "s_per_step": s_per_step,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_per_step / s_per_step if s_per_step else None,
            "time_to_first_step_s": self.first_step_at - self.launched if self.first_step_at else None,
            "peak_host_rss_gib": self.host.stop() / GiB,
        }
        import torch

        if torch.cuda.is_available():
            stats["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
            stats["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
            stats["gpu"] = torch.cuda.get_device_name()
        return stats

    def on_train_end(self, args, state, control, **kwargs):
        stats = self.summary()
        if state.is_world_process_zero:
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(stats, f, indent=2)
            print("run stats: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                              for k, v in stats.items()}), flush=True)

"""Where a real training step's time goes, off unless asked for: CLM_PROFILE=A-B runs torch.profiler over optimizer
steps A to B of the run (counted as the Trainer does, from 1) and writes profile.md into --output_dir:

- the wall time of those steps and the share of it the GPU was busy (the rest is the GPU waiting for the host:
  Python, the data loader, DeepSpeed's CPU Adam, a copy that waits);
- the GPU's time by kind of kernel: matrix multiplications, attention, Triton kernels (compiled blocks and torchao's
  8-bit Adam step), copies, the rest (PyTorch's own elementwise, norm and reduction kernels);
- the GPU time spent inside optimizer steps (torch.optim's `Optimizer.step#...` ranges, the per-weight steps of
  --optimizer_in_backward included);
- the top kernels.

bench/throughput.py passes CLM_PROFILE on to every row, so one invocation profiles each configuration it times.
"""

import os
import time

import torch
from transformers import TrainerCallback

VARIABLE = "CLM_PROFILE"

# Kernel name fragments, checked in this order; the first that matches names the kind.
KINDS = (
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("matrix multiplication", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "wgmma")),
    ("Triton (compiled blocks, torchao's Adam step)", ("triton",)),
    ("copies and fills", ("memcpy", "memset")),
)
OTHER = "other (PyTorch's elementwise, norm, reduction kernels)"


def asked_steps():
    """(first, last) optimizer step to profile from CLM_PROFILE=A-B (or =A for one step), or None."""
    value = os.environ.get(VARIABLE, "").strip()
    if not value:
        return None
    first, dash, last = value.partition("-")
    last = last if dash else first
    if not (first.isdigit() and last.isdigit()) or not 1 <= int(first) <= int(last):
        raise ValueError(f"{VARIABLE}={value}: give the steps to profile as A-B, e.g. {VARIABLE}=6-8")
    return int(first), int(last)


def kind_of(kernel_name):
    name = kernel_name.lower()
    return next((kind for kind, fragments in KINDS if any(f in name for f in fragments)), OTHER)


def busy_time_us(intervals):
    """The time covered by at least one of the (start, end) intervals: kernels on several streams overlap."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        covered += end - max(start, reach)
        reach = end
    return covered


def summarize(events, wall_s, first, last):
    """profile.md's text from the profiler's events of steps first..last, which took wall_s seconds."""
    # Device-side events are kernels, copies and the GPU spans of annotated ranges (an optimizer step's, from its
    # first kernel to its last, gaps included): those spans are not work, so they are left out.
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    steps = last - first + 1
    lines = [f"# Profile of optimizer steps {first}-{last} ({VARIABLE}={first}-{last})", "",
             f"- wall time: {wall_s * 1000 / steps:,.1f} ms a step"]
    if not kernels:
        lines.append("- no GPU kernels ran (a CPU run): the time is all the host's")
        return "\n".join(lines + host_table(events, steps)) + "\n"
    busy = busy_time_us((e.time_range.start, e.time_range.end) for e in kernels) / 1e6
    lines.append(f"- GPU busy: {busy * 1000 / steps:,.1f} ms a step, {busy / wall_s:.0%} of the wall time; idle "
                 f"{(wall_s - busy) * 1000 / steps:,.1f} ms a step (the GPU waiting for the host)")
    by_kind, by_name = {}, {}
    for e in kernels:
        kind = kind_of(e.name)
        by_kind[kind] = by_kind.get(kind, 0.0) + e.time_range.elapsed_us()
        count, total = by_name.get(e.name, (0, 0.0))
        by_name[e.name] = (count + 1, total + e.time_range.elapsed_us())
    total = sum(by_kind.values())
    steps_taken = [e for e in events if e.name.startswith("Optimizer.step#")
                   and e.device_type == torch.autograd.DeviceType.CPU]
    optimizer = sum(e.device_time_total for e in steps_taken)
    host = sum(e.cpu_time_total for e in steps_taken)
    lines.append(f"- inside optimizer steps: {optimizer / 1000 / steps:,.1f} ms of GPU time a step "
                 f"({optimizer / total:.0%} of the kernel time), {host / 1000 / steps:,.1f} ms of host time (which "
                 "the profiler itself lengthens)")
    lines += ["", "| kernels | ms a step | share of kernel time |", "|---|---:|---:|"]
    for kind, us in sorted(by_kind.items(), key=lambda item: -item[1]):
        lines.append(f"| {kind} | {us / 1000 / steps:,.1f} | {us / total:.0%} |")
    lines += ["", "| top kernels | calls a step | ms a step | share |", "|---|---:|---:|---:|"]
    for name, (count, us) in sorted(by_name.items(), key=lambda item: -item[1][1])[:15]:
        lines.append(f"| {cell(name)} | {count / steps:g} | {us / 1000 / steps:,.2f} | {us / total:.1%} |")
    lines += host_table(events, steps)
    return "\n".join(lines) + "\n"


def host_table(events, steps):
    """The host's top operations by their own time (not their children's): what keeps the GPU waiting."""
    by_name = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CPU:
            count, total = by_name.get(e.name, (0, 0.0))
            by_name[e.name] = (count + 1, total + e.self_cpu_time_total)
    lines = ["", "| top host operations (own time, lengthened by the profiler) | calls a step | ms a step |",
             "|---|---:|---:|"]
    for name, (count, us) in sorted(by_name.items(), key=lambda item: -item[1][1])[:12]:
        lines.append(f"| {cell(name)} | {count / steps:g} | {us / 1000 / steps:,.2f} |")
    return lines


def cell(name):
    """A kernel's or operation's name as a table cell: at most 90 characters, no column bar."""
    short = name if len(name) <= 90 else name[:87] + "..."
    return f"`{short.replace('|', '/')}`"


class ProfileSteps(TrainerCallback):
    def __init__(self, first, last):
        self.first, self.last = first, last
        self.profiler = self.started = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 != self.first:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.__enter__()
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step != self.last:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)
        try:
            text = summarize(self.profiler.events(), wall_s, self.first, self.last)
        except Exception as err:  # a diagnostic: its failure must not end the training it watches
            text = f"# Profile of optimizer steps {self.first}-{self.last}\n\nnot summarized: {err!r}\n"
        self.profiler = None
        if state.is_world_process_zero:
            with open(os.path.join(args.output_dir, "profile.md"), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"profile of steps {self.first}-{self.last} written to {args.output_dir}/profile.md", flush=True)


def callbacks():
    steps = asked_steps()
    return [] if steps is None else [ProfileSteps(*steps)]

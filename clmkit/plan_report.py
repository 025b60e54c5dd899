"""The plan in words: the start-up summary every run prints once, the whole plan for --plan, and the lines that
stop a run host RAM or disk cannot hold."""

import json
from .machine import gib
from .modes import NAMES
from .plan import GPU_MARGIN, OVER

# The GPU estimate is held to within 15% of what runs measure: beyond that over the free memory, a run stops.
GPU_STOP_MARGIN = 1.15


def params(n):
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def host_terms(plan):
    """What the host RAM peak is made of, largest parts first as they add up."""
    n = plan.needs
    if n.host_loading >= n.host_training:
        return f"loading {gib(n.host_loading)} + baseline {gib(n.host_baseline)}"
    pinned = plan.setup.pin_memory and not plan.setup.use_cpu
    terms = [("optimizer state", n.host_optimizer), ("pinned buffers" if pinned else "offload buffers", n.host_pinned),
             ("model states and activations", 0 if n.on_gpu else n.gpu), ("saving", n.host_saving),
             ("baseline", n.host_baseline)]
    return " + ".join(f"{name} {gib(value)}" for name, value in terms if value)


def gpu_line(plan):
    n = plan.needs
    if plan.setup.use_cpu:
        return "GPU not used (--use_cpu): model states and activations are in host RAM"
    free = plan.machine.gpu_free
    against = f"{gib(free)} free{plan.machine.gpu_note}: {plan.status['GPU']}" if free is not None else \
        "no GPU here (--plan --machine NAME plans for one)"
    return (f"GPU {gib(n.gpu)} peak per device (model states {gib(n.gpu_states)} + activations "
            f"{gib(n.activations)} + buffers {gib(n.gpu_buffers)}) of {against}")


def stop_problems(plan):
    """One line for each of GPU memory, host RAM and disk that clearly cannot hold the run."""
    problems = []
    needs, machine = plan.needs, plan.machine
    if plan.status.get("GPU") == OVER and needs.gpu > GPU_STOP_MARGIN * machine.gpu_free:
        problems.append(f"GPU: the run needs about {gib(needs.gpu)} on each GPU at its peak (model states "
                        f"{gib(needs.gpu_states)} + activations {gib(needs.activations)} + buffers "
                        f"{gib(needs.gpu_buffers)}) but {gib(machine.gpu_free)} is free{machine.gpu_note}; "
                        f"{plan.compute_change()}")
    if plan.status["host RAM"] == OVER:
        problems.append(f"host RAM: the run needs about {gib(needs.host)} at its peak ({host_terms(plan)}) "
                        f"but {gib(machine.ram)} is available{machine.ram_note}; {plan.compute_change()}")
    if plan.status["disk"] == OVER:
        what = "one checkpoint (weights and optimizer state)" if plan.setup.checkpoints else "the model weights"
        problems.append(f"--output_dir {plan.output_dir}: {what} needs about {gib(needs.disk_checkpoint)} but "
                        f"only {gib(machine.disk)} is free on its disk{machine.disk_note}; {plan.disk_change()}")
    return problems


def built_config(config):
    """A model built from a config rather than loaded: the config, as what differs from its family's defaults."""
    return f"config:      built from scratch: {json.dumps(config.to_diff_dict(), sort_keys=True)}"


def startup_summary(plan, training_args, n_train_sequences, n_eval_sequences, notes=(), speedups="",
                    streamed=False):
    """The lines every run prints once its data is read, before the model loads. n_train_sequences is None for a
    run that only evaluates, or one that streams its training text (streamed); notes: more lines on the data
    (prompt/completion files); speedups: which of the speed switches apply to this model."""
    n, m, s = plan.needs, plan.machine, plan.setup
    out = training_args.output_dir
    engine = f"{params(plan.shape.n_params)} parameters ({plan.shape.model_type}), {s.precision_label}, {s.engine}"
    if n_train_sequences is None and not streamed:
        return "\n".join([mode_line(plan, "mode:        "), f"model:       {engine}",
                          f"data:        {n_eval_sequences:,} evaluation sequences of {s.block_size} tokens; "
                          f"results in {out}", *(f"             {note}" for note in notes)])
    evaluation = f"; {n_eval_sequences:,} evaluation sequences" if n_eval_sequences else ""
    if streamed:
        data = (f"streamed (--streaming): sequences of {s.block_size} tokens made as training reads the text, "
                f"{training_args.max_steps:,} steps (--max_steps){evaluation}")
    else:
        steps = max(1, n_train_sequences // (s.micro_batch * s.accumulation * s.ranks * s.nodes))
        data = (f"{n_train_sequences:,} training sequences of {s.block_size} tokens = {steps:,} steps per epoch"
                f"{evaluation}")
    change = plan.change()
    return "\n".join([
        mode_line(plan, "mode:        "),
        *([f"             differs from what was asked: {'; '.join(plan.changes)}"] if plan.changes else []),
        f"model:       {engine}, gradient checkpointing {'on' if s.checkpointing else 'off'}",
        *([f"speed-ups:   {speedups}"] if speedups else []),
        f"batch:       {s.batch}",
        f"data:        {data}",
        *(f"             {note}" for note in notes),
        f"memory:      {gpu_line(plan)}",
        f"             host RAM {gib(n.host)} peak ({host_terms(plan)}) of {gib(m.ram)} available{m.ram_note}: "
        f"{plan.status['host RAM']}",
        f"             disk {gib(n.disk_checkpoint)} per checkpoint, {gib(m.disk)} free at {m.disk_path}"
        f"{m.disk_note}: {plan.status['disk']}",
        f"verdict:     {plan.verdict}" + (f"; change: {change}" if change else ""),
        f"checkpoints: {out}/checkpoint-<step> every {training_args.save_steps:g} steps; final model in {out}",
    ])


def report(plan) -> str:
    """The whole plan, for --plan: each term of each resource, this machine, the verdict and the change."""
    n, m, s, shape = plan.needs, plan.machine, plan.setup, plan.shape
    tokens = s.micro_batch * s.block_size
    row = "  {:<22}{:>10}   {}".format
    lines = [
        f"plan for {shape.model_type}: {shape.n_params:,} parameters ({params(shape.n_params)}), "
        f"{s.precision_label}, {s.engine}" + (f" ({s.deepspeed})" if s.deepspeed else ""),
        f"  {s.micro_batch} sequences x {s.block_size} tokens per micro-batch, gradient checkpointing "
        f"{'on' if s.checkpointing else 'off'}" + (f", loss in chunks of {s.chunk_tokens} tokens" if s.chunk_tokens
                                                   else ""),
        f"  batch: {s.batch}",
        "GPU, per device" + (" (with --use_cpu: in host RAM)" if s.use_cpu else ""),
        row("model states", gib(n.gpu_states), states_text(plan.setup)),
        row("activations", gib(n.activations),
            f"kept {gib(n.kept)} ({'each layer input' if s.checkpointing else 'every layer'}, {tokens:,} "
            f"tokens) + loss over {min(tokens, s.chunk_tokens or tokens):,} x {shape.vocab:,} logits "
            f"{gib(n.loss)}" + (f", or a recomputed layer {gib(2 * n.layer)}" if s.checkpointing else "")),
        row("buffers", gib(n.gpu_buffers), buffers_text(s, n)),
        row("peak", gib(n.gpu), f"allocated; allow {round((GPU_MARGIN - 1) * 100)}% more for fragmentation"),
        "host RAM",
        row("optimizer state", gib(n.host_optimizer), host_state_text(s) if n.host_optimizer else
            "none offloaded (on the GPU)"),
        row("pinned buffers" if s.pin_memory and not s.use_cpu else "offload buffers", gib(n.host_pinned),
            ", ".join(f"{k} {gib(v)}" for k, v in n.pinned_parts.items() if v) or "none"),
        row("loading", gib(n.host_loading), loading_text(plan.setup)),
        row("saving", gib(n.host_saving), ("the weights copied to the CPU to write model.safetensors" if s.deepspeed
                                           else "one shard of the weights at a time, copied to the CPU to write it")
            if n.host_saving else "written from where they are"),
        row("baseline", gib(n.host_baseline), f"Python, torch and libraries in {s.ranks} worker(s)"
            + (" with CUDA" if s.cuda and not s.use_cpu else "") + (" + the launcher" if s.launcher else "")),
        row("peak", gib(n.host), "baseline + the larger of loading and "
            + ("optimizer + buffers + saving" if n.on_gpu else "states, activations and buffers")),
    ]
    if n.deepspeed_host and s.offload_optimizer and s.stage < 3:
        lines.append(row("", "", f"(DeepSpeed's cold estimate of the host model states: {gib(n.deepspeed_host)})"))
    what = "weights, DeepSpeed's module states and optimizer state" if s.deepspeed else "weights and optimizer"
    lines += [
        "disk",
        row("per checkpoint", gib(n.disk_checkpoint), what if s.checkpoints else "the weights only"),
        row("final model", gib(n.disk_weights), f"model.safetensors in {s.precision if s.deepspeed else s.weights}"),
        "this machine",
    ]
    for label, free in m.gpus:
        lines.append(f"  {label}: {gib(free)} free{m.gpu_note}")
    if not m.gpus:
        lines.append("  no GPU")
    lines += [f"  RAM: {gib(m.ram)} available{m.ram_note}", f"  disk: {gib(m.disk)} free at {m.disk_path}"
              f"{m.disk_note}"]
    if not s.use_cpu and m.gpus:
        lines.append(f"modes on this machine, at {s.micro_batch * s.accumulation} sequences a step per GPU "
                     "(* the one this run trains in)")
        rows = plan.modes()
        width = max(len(mode.name) for mode, _, _ in rows) + 2
        lines += [f"{'*' if mode.name == s.mode else ' '} {mode.name:<{width}}{verdict}" for mode, _, verdict in rows]
    lines.append(mode_line(plan, "mode: "))
    if not s.use_cpu and m.gpus:
        lines.append(f"  micro-batch: {s.micro_batch} in this run; {micro_batch_text(plan)}")
    if plan.changes:
        lines.append(f"  differs from what was asked: {'; '.join(plan.changes)}")
    checks = ", ".join(f"{key} {value}" for key, value in plan.status.items())
    change = plan.change()
    lines.append(f"verdict: {plan.verdict} ({checks})" + (f"\n  change: {change}" if change else ""))
    return "\n".join(lines)


def mode_line(plan, label):
    """'mode: NAME (why, in a few words); how to choose another'."""
    others = ", ".join(name for name in NAMES if name != plan.setup.mode)
    return f"{label}{plan.setup.mode or 'fp32'} ({plan.how}); --mode NAME chooses another: {others}"


def states_text(s):
    if not s.deepspeed:
        weights = "fp32" if s.load_bytes == 4 else "16-bit"
        adam = "8-bit " if "8bit" in s.optim else "4-bit " if "4bit" in s.optim else ""
        if s.state_on_host:
            return (f"{weights} weights, gradients of one layer at a time (stepped in the backward) and one weight's "
                    f"{adam}Adam state (the rest in host RAM)")
        if s.in_backward:
            return f"{weights} weights, {adam}Adam state, gradients of one layer at a time (stepped in the backward)"
        return (f"{weights} weights and gradients, {adam}Adam state"
                + (", 16-bit weight copies" if s.half and s.load_bytes == 4 else ""))
    where = "16-bit weights" if s.half else "fp32 weights"
    if s.stage == 3 and s.offload_param:
        return "the largest layer gathered (DeepSpeed's ZeRO-3 estimate)"
    if s.offload_optimizer and s.stage == 1:
        return f"{where} and gradients, which go to CPU RAM once a step (DeepSpeed's ZeRO-2 estimate + gradients)"
    if s.offload_optimizer:
        return f"{where} (DeepSpeed's ZeRO-{s.stage} estimate); gradients go to CPU RAM as they are made"
    return f"{where}, gradients, fp32 master weights and Adam state (DeepSpeed's ZeRO-{s.stage} estimate)"


def buffers_text(s, needs):
    if s.deepspeed:
        return "DeepSpeed's gradient buckets and offload staging"
    if needs.gpu_buffers:
        return ("the low-bit optimizer's working memory: one weight's step at a time"
                + (", its state copied in from host RAM" if s.state_on_host else "")
                + (", beyond the activations it follows" if s.in_backward else ""))
    return "none" + (" (DDP's buckets are the gradients)" if s.ranks * s.nodes > 1 else "")


def host_state_text(s):
    if not s.state_on_host:
        return "Adam's fp32 m and v, offloaded"
    adam = "8-bit m and v with their scales" if "8bit" in s.optim else "m and v"
    pinned = ", pinned" if s.cuda else ""
    return f"Adam's {adam}{pinned}; each weight's copied to the GPU for its step (--optimizer_state_on_host)"


def loading_text(s):
    if s.deepspeed and s.stage == 3:
        return "zero.Init partitions each layer as it is built"
    if s.loads_to_gpu:
        return "read straight onto the GPU, one tensor at a time" + (f", in each of {s.ranks} workers"
                                                                     if s.ranks > 1 else "")
    dtype = "fp32" if s.load_bytes == 4 else "16-bit"
    return f"the {dtype} model on the CPU before " + ("training" if s.use_cpu else "it moves to the GPU") + (
        f", in each of {s.ranks} workers" if s.ranks > 1 else "")


def micro_batch_text(plan):
    """Which micro-batches fit the GPU in the run's mode, in words."""
    fits, tight = plan.largest_micro_batches()
    tokens = f"of {plan.setup.block_size} tokens"
    if not tight:
        return f"not one sequence {tokens} fits the GPU in this mode"
    text = f"up to {fits} sequence{'s' * (fits > 1)} {tokens} fit the GPU in this mode" if fits else \
        f"not one sequence {tokens} fits the GPU in this mode with {round((GPU_MARGIN - 1) * 100)}% to spare"
    if tight > fits:
        text += f"; {fits + 1}" + (f"-{tight}" if tight > fits + 1 else "") + " tight"
    return text

"""What a run will cost: parameters, tokens per step, GPU and host memory, disk per checkpoint."""

import json

GiB = 2**30


def gib(n_bytes) -> str:
    return f"{n_bytes / GiB:.1f} GiB" if n_bytes >= 0.1 * GiB else f"{n_bytes / 2**20:.0f} MiB"


def count_parameters(config) -> int:
    """Parameter count of a causal LM built from `config`, without allocating its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def deepspeed_settings(path):
    """(zero stage, optimizer offloaded to CPU?) from a DeepSpeed config file, or (0, False) without one."""
    if not path:
        return 0, False
    if isinstance(path, dict):
        config = path
    else:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    zero = config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
    return int(zero.get("stage", 0)), offload


def estimate_memory(n_params, config, micro_batch, block_size, half_precision, checkpointing, offload):
    """Rough peak bytes on the GPU and in host RAM; the plan issue refines these against measurements."""
    hidden = getattr(config, "n_embd", None) or getattr(config, "hidden_size", 1024)
    layers = getattr(config, "n_layer", None) or getattr(config, "num_hidden_layers", 24)
    heads = getattr(config, "n_head", None) or getattr(config, "num_attention_heads", 16)
    vocab = getattr(config, "vocab_size", 50257)
    weight_bytes = 2 if half_precision else 4
    # Weights and gradients in the training dtype stay on the GPU; Adam's fp32 master, m and v
    # (plus fp32 gradients) go to the host when the optimizer is offloaded.
    optimizer_bytes = (12 if half_precision else 8) * n_params + (4 * n_params if half_precision else 0)
    gpu_states = 2 * weight_bytes * n_params + (0 if offload else optimizer_bytes)
    tokens = micro_batch * block_size
    one_layer = tokens * hidden * 34 * weight_bytes / 2 + 5 * heads * block_size * tokens * weight_bytes / 2
    kept = tokens * hidden * weight_bytes * layers if checkpointing else one_layer * layers
    logits = tokens * vocab * (weight_bytes + 8)  # half logits, their fp32 copy for the loss, its gradient
    gpu = gpu_states + kept + one_layer + logits
    host = optimizer_bytes + 2 * weight_bytes * n_params if offload else 4 * n_params
    # A checkpoint holds the weights in the training dtype plus fp32 master weights and Adam's m and v
    # (measured: 24 GB for GPT-2 XL in fp16, about 15 bytes a parameter).
    return {"gpu": gpu, "host": host, "checkpoint_disk": (weight_bytes + 12) * n_params}


def describe_run(n_params, config, training_args, block_size, world_size, n_train_sequences):
    """The lines printed before training starts."""
    micro = training_args.per_device_train_batch_size
    accumulation = training_args.gradient_accumulation_steps
    sequences_per_step = micro * accumulation * world_size
    half = training_args.fp16 or training_args.bf16
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    stage, offload = deepspeed_settings(training_args.deepspeed)
    memory = estimate_memory(n_params, config, micro, block_size, half, training_args.gradient_checkpointing, offload)
    engine = f"DeepSpeed ZeRO-{stage}" + (" with the optimizer in CPU RAM" if offload else "") \
        if training_args.deepspeed else "plain PyTorch (no DeepSpeed)"
    size = f"{n_params / 1e9:.2f}B" if n_params >= 1e8 else f"{n_params / 1e6:.2f}M"
    return "\n".join([
        f"model:       {size} parameters, {precision}, {engine}, "
        f"gradient checkpointing {'on' if training_args.gradient_checkpointing else 'off'}",
        f"batch:       {micro} sequences x {accumulation} accumulation x {world_size} GPU(s) = "
        f"{sequences_per_step} sequences = {sequences_per_step * block_size:,} tokens per optimizer step",
        f"data:        {n_train_sequences:,} training sequences of {block_size} tokens = "
        f"{max(1, n_train_sequences // sequences_per_step):,} steps per epoch",
        f"memory:      about {gib(memory['gpu'])} GPU per device, {gib(memory['host'])} host RAM (estimate)",
        f"checkpoints: {training_args.output_dir}/checkpoint-<step> every {training_args.save_steps} steps "
        f"(about {gib(memory['checkpoint_disk'])} each); final model in {training_args.output_dir}",
    ])

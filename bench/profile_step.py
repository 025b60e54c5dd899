#!/usr/bin/env python
"""Where a GPT-2 XL-shaped forward + backward spends its time on the GPU, and what model-level switches buy.

No Trainer, no optimizer: one micro-batch of random tokens through an XL-wide GPT-2 in bf16 with gradient
checkpointing, timed after warm-up, for each variant below; then the top CUDA kernels of the first variant
from torch.profiler. Tokens/s here is the compute ceiling of the training rows in throughput.py.

    python bench/profile_step.py --n_layer 12 --micro_batch 8 --out docs/profile-step.md
"""

import argparse
import time

import torch

VARIANTS = {
    # name: config changes, gradient checkpointing on?
    "as shipped (gelu_new, dropout 0.1, checkpointing)": ({}, True),
    "gelu_pytorch_tanh (same function, one kernel)": ({"activation_function": "gelu_pytorch_tanh"}, True),
    "no dropout": ({"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}, True),
    "gelu_pytorch_tanh + no dropout": ({"activation_function": "gelu_pytorch_tanh", "attn_pdrop": 0.0,
                                        "resid_pdrop": 0.0, "embd_pdrop": 0.0}, True),
    "no checkpointing (memory permitting)": ({}, False),
}


def build(n_layer, changes, checkpointing):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=1600, n_layer=n_layer, n_head=25, n_positions=1024, vocab_size=50257, **changes)
    with torch.device("cuda"):
        model = GPT2LMHeadModel(config).to(torch.bfloat16)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def one_step(model, ids):
    model(input_ids=ids, labels=ids).loss.backward()


def time_variant(model, ids, repeats):
    for _ in range(3):
        one_step(model, ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        one_step(model, ids)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_layer", type=int, default=12, help="layers (each costs the same; XL has 48)")
    parser.add_argument("--micro_batch", type=int, default=8, help="sequences of 1024 tokens per forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward + backward passes per variant")
    parser.add_argument("--out", default=None, help="also write the markdown here")
    args = parser.parse_args()
    ids = torch.randint(0, 50257, (args.micro_batch, 1024), device="cuda")
    lines = [f"# Forward + backward of an XL-wide GPT-2, {args.n_layer} layers, micro-batch {args.micro_batch} x 1024, "
             f"bf16, {torch.cuda.get_device_name()}", "", "| variant | ms per micro-batch | tokens/s | peak GiB |",
             "|---|---:|---:|---:|"]
    for name, (changes, checkpointing) in VARIANTS.items():
        torch.cuda.reset_peak_memory_stats()
        try:
            model = build(args.n_layer, changes, checkpointing)
            seconds = time_variant(model, ids, args.repeats)
            lines.append(f"| {name} | {seconds * 1000:.0f} | {ids.numel() / seconds:,.0f} | "
                         f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |")
        except torch.OutOfMemoryError:
            lines.append(f"| {name} | out of memory | | |")
        print(lines[-1], flush=True)
        model = None
        torch.cuda.empty_cache()
    model = build(args.n_layer, {}, True)
    one_step(model, ids)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        one_step(model, ids)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    lines += ["", "Top CUDA kernels, first variant, one micro-batch:", "", "```", table, "```"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

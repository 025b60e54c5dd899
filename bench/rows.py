"""The benchmark's rows: what each one changes against the flags every row gets (runner.common_flags), and which
of DeepSpeed's compiled ops the rows will load. Add a row with one line in CONFIGS (bench/README.md)."""

import json
import os
from typing import NamedTuple, Optional, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAP = "cap"  # a row's gpu_memory_gib: whatever the invocation's cap is (--gpu_memory_gib)


class Config(NamedTuple):
    """One row of the table."""

    ds_config: Optional[str]  # DeepSpeed config, relative to the repo root; None: run without --deepspeed
    flags: tuple = ()  # run_clm.py flags, placed after the common ones so that they win
    env: Optional[dict] = None  # extra environment variables; a value of None unsets that variable
    gpu_memory_gib: Union[str, float, None] = CAP  # CAP: the invocation's cap; None: uncapped; a number: that cap
    gpus: Optional[int] = None  # GPUs for this row; None: the invocation's count (--num_gpus)
    scales: Optional[str] = None  # the one-GPU row this multi-GPU row's tokens/s per GPU is compared with

    def cap(self, default_gib):
        """This row's GPU memory cap in GiB, None for the whole card."""
        return default_gib if self.gpu_memory_gib == CAP else self.gpu_memory_gib

    def gpu_count(self, default):
        return self.gpus or default


def batch(micro, accumulation):
    return ("--per_device_train_batch_size", str(micro), "--gradient_accumulation_steps", str(accumulation))


CLASSIC = "classic"
# The classic recipe, frozen: the original guide's ds_config (bench/ds_classic.json: ZeRO-2, optimizer offloaded to
# CPU) with --fp16, micro-batch 8 x accumulation 2, weights loaded in fp32 and cast by DeepSpeed, GPT-2's own GELU,
# PyTorch's default CUDA allocator; gradient checkpointing is run_clm.py's default. "shipped" is the shipped
# ds_config.json with the same flags.
BF16_8BIT = ("--bf16", "--dtype", "bfloat16", "--optim", "adamw_torch_8bit", "--chunked_loss")
BF16_8BIT_SR = (*BF16_8BIT, "--optim_args", "bf16_stochastic_round=True")
FP16_8BIT_SR = ("--fp16", "--optim", "adamw_torch_8bit", "--chunked_loss")  # the fp16 mode always rounds so
CONFIGS = {
    # name:           Config(DeepSpeed config, run_clm.py flags, env vars, GPU cap)
    CLASSIC:          Config("bench/ds_classic.json", ("--fp16", "--dtype", "float32", "--no_fused_gelu", *batch(8, 2)),
                             env={"PYTORCH_CUDA_ALLOC_CONF": ""}),  # PyTorch's default allocator
    "shipped":        Config("ds_config.json", ("--fp16", *batch(8, 2))),
    "classic-bf16":   Config("ds_config.json", ("--bf16", *batch(8, 2))),
    "classic-acc8":   Config("ds_config.json", ("--fp16", *batch(8, 8))),
    "no-offload-80g": Config("bench/ds_zero2_no_offload.json", ("--fp16", *batch(8, 2)), gpu_memory_gib=None),
    # ZeRO stage 1 on one GPU: gradients stay on the GPU until the step, moved to CPU once per step instead of
    # being moved and summed in host memory after every micro-batch; 2 bytes a parameter more on the GPU.
    "zero1":          Config("ds_config_zero1.json", ("--fp16", *batch(8, 2))),
    # ZenFlow: important gradient columns updated on the GPU every step, the rest by CPU Adam every few
    # steps, overlapped with the next steps' compute. Changes the update rule: needs the parity run.
    "zenflow":        Config("bench/ds_zenflow.json", ("--fp16", *batch(8, 2))),
    # Same 16 sequences a step in one micro-batch: one gradient offload a step instead of two, and no
    # fp32 gradient accumulation buffer in host RAM. The chunked loss makes micro-batch 16 fit.
    "mb16-chunked":   Config("ds_config.json", ("--fp16", "--chunked_loss", *batch(16, 1))),
    "mb16-chunked-bigbuckets": Config("bench/ds_offload_big_buckets.json", ("--fp16", "--chunked_loss",
                                                                            *batch(16, 1))),
    # No DeepSpeed, nothing in host RAM: bf16 weights and an 8-bit AdamW (torchao) on the GPU; stochastic
    # rounding so that updates smaller than a bf16 step are not lost on average.
    "bf16-adam8bit":  Config(None, (*BF16_8BIT, *batch(8, 2))),
    "bf16-adam8bit-sr": Config(None, (*BF16_8BIT_SR, *batch(8, 2))),
    "bf16-adam8bit-sr-mb16": Config(None, (*BF16_8BIT_SR, *batch(16, 1))),
    # --torch_compile compiles each transformer block (one graph, reused), not the whole model.
    "bf16-adam8bit-sr-compile": Config(None, (*BF16_8BIT_SR, "--torch_compile", *batch(8, 2))),
    # Each weight stepped in the backward pass and its gradient freed there (no 2.9 GiB set of gradients, no
    # separate step): one micro-batch of 16 instead of 8 x 2, unclipped (as first measured; the mode now clips).
    "bf16-adam8bit-sr-compile-inbackward": Config(None, (*BF16_8BIT_SR, "--torch_compile", "--optimizer_in_backward",
                                                         "--max_grad_norm", "0", *batch(16, 1))),
    # The mode for models whose state does not fit the card: stepped in the backward, the 8-bit state in host RAM,
    # copied to the GPU weight by weight.
    "bf16-adam8bit-sr-inbackward-host": Config(None, (*BF16_8BIT_SR, "--optimizer_in_backward",
                                                      "--optimizer_state_on_host", "--max_grad_norm", "0",
                                                      *batch(16, 1))),
    # The LM head as it is (50,257 rows) instead of padded to 50,304 for the chunked loss's matmuls.
    "bf16-adam8bit-sr-unpadded": Config(None, (*BF16_8BIT_SR, "--no_padded_lm_head", *batch(8, 2))),
    # A card without bf16 (T4, V100, P100), acted out by CLM_ASSUME_NO_BF16 on a 15 GiB cap (a T4's usable memory):
    # fp16 weights, the fp16 mode's 8-bit AdamW with stochastic rounding and a loss scale, nothing in host RAM;
    # micro-batch 4 x 4 keeps the classic recipe's 16 sequences a step.
    "fp16-adam8bit-sr": Config(None, (*FP16_8BIT_SR, *batch(4, 4)), env={"CLM_ASSUME_NO_BF16": "1"},
                               gpu_memory_gib=15),
    # The README's command with no mode flags (--mode auto), beside the mode auto takes there asked for by name, at the
    # same 8 x 2 asked: on a 16 GiB card with bf16, and acting as a T4 (no bf16, 15 GiB).
    "auto":           Config(None, batch(8, 2)),
    "mode-bf16-in-backward": Config(None, ("--mode", "bf16-in-backward", *batch(8, 2))),
    # The same with each weight's 8-bit update its own compiled call (580 a step for GPT-2 XL), not one a block.
    "mode-bf16-in-backward-each-weight": Config(None, ("--mode", "bf16-in-backward", *batch(8, 2)),
                                                env={"CLM_STEP_EACH_WEIGHT": "1"}),
    "auto-t4":        Config(None, batch(8, 2), env={"CLM_ASSUME_NO_BF16": "1"}, gpu_memory_gib=15),
    "mode-fp16-t4":   Config(None, ("--mode", "fp16", *batch(8, 2)), env={"CLM_ASSUME_NO_BF16": "1"},
                             gpu_memory_gib=15),
    # The fp16 mode as a T4 with its blocks compiled (fewer, fused kernels launched by the host), and with the 16
    # sequences a step as one micro-batch (one forward and backward launched a step instead of two).
    "mode-fp16-t4-compile": Config(None, ("--mode", "fp16", "--torch_compile", *batch(8, 2)),
                                   env={"CLM_ASSUME_NO_BF16": "1"}, gpu_memory_gib=15),
    "mode-fp16-t4-mb16": Config(None, ("--mode", "fp16", *batch(16, 1)), env={"CLM_ASSUME_NO_BF16": "1"},
                                gpu_memory_gib=15),
    "mode-fp16-t4-compile-mb16": Config(None, ("--mode", "fp16", "--torch_compile", *batch(16, 1)),
                                        env={"CLM_ASSUME_NO_BF16": "1"}, gpu_memory_gib=15),
    # The bf16 mode after the backward, compiled, 8 x 2: the first row.
    "mode-bf16": Config(None, ("--mode", "bf16", *batch(8, 2))),
    # The same per-GPU micro-batch and accumulation on more GPUs: the global batch grows with them.
    "shipped-2gpu":   Config("ds_config.json", ("--fp16", *batch(8, 2)), gpus=2, scales="shipped"),
    "zero1-2gpu":     Config("ds_config_zero1.json", ("--fp16", *batch(8, 2)), gpus=2, scales="zero1"),
    "shipped-4gpu":   Config("ds_config.json", ("--fp16", *batch(8, 2)), gpus=4, scales="shipped"),
    "bf16-adam8bit-sr-2gpu": Config(None, (*BF16_8BIT_SR, *batch(8, 2)), gpus=2, scales="bf16-adam8bit-sr"),
    "bf16-adam8bit-sr-4gpu": Config(None, (*BF16_8BIT_SR, *batch(8, 2)), gpus=4, scales="bf16-adam8bit-sr"),
    "fp16-adam8bit-sr-2gpu": Config(None, (*FP16_8BIT_SR, *batch(4, 4)), env={"CLM_ASSUME_NO_BF16": "1"},
                                    gpu_memory_gib=15, gpus=2, scales="fp16-adam8bit-sr"),
}


def selected_rows(configs_flag, with_classic=True):
    """(row names to run, classic first unless with_classic is False; problems): an unknown name is one line naming it
    and the valid ones."""
    if configs_flag is None:
        return list(CONFIGS), []
    asked = [name.strip() for name in configs_flag.split(",") if name.strip()]
    unknown = [name for name in asked if name not in CONFIGS]
    if unknown:
        return [], [f"--configs: unknown configuration{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                    f"valid names: {', '.join(CONFIGS)}"]
    return list(dict.fromkeys([CLASSIC, *asked] if with_classic else asked)), []


def ops_needed(names):
    """DeepSpeed's compiled Adam ops the rows will load: CPUAdam with the optimizer offloaded, else FusedAdam."""
    needed = []
    for name in names:
        path = CONFIGS[name].ds_config
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                ds_config = json.load(f)
        except (TypeError, OSError, ValueError):  # no config, or one the row will fail on by itself
            continue
        optimizer = ds_config.get("optimizer", {})
        if not optimizer or optimizer.get("params", {}).get("torch_adam"):
            continue
        offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        needed.append("CPUAdamBuilder" if offload in ("cpu", "nvme") else "FusedAdamBuilder")
    return list(dict.fromkeys(needed))

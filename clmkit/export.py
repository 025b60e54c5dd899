"""A checkpoint-<step> folder -> a model folder anyone can load: fp32 weights in safetensors, config and tokenizer.

DeepSpeed checkpoints (ZeRO-1/2/3, written by any number of GPUs) keep the fp32 master weights split across their
optimizer state files; DeepSpeed's zero_to_fp32 joins them. A checkpoint written without DeepSpeed holds the weights
it trained in its model.safetensors: fp32, or bf16 in the bf16 mode (widened to fp32, exactly). Either way the
weights go through the model class's save_pretrained, so tied weights, sharding and the config are written the way
from_pretrained reads them.
"""

import json
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from .checkpoints import CHECKPOINT_DIR, checkpoints_in, deepspeed_tag, is_complete, weights_only, zero_files
from .errors import UsageError, raise_if_any
from .loading import WEIGHT_FILES, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def checkpoint_problems(checkpoint):
    """Why `checkpoint` is not a checkpoint-<step> folder this can export, one line each."""
    if not os.path.exists(checkpoint):
        return [f"CHECKPOINT_DIR {checkpoint}: no such folder; give a checkpoint-<step> folder from a training run's "
                "--output_dir"]
    if not os.path.isdir(checkpoint):
        return [f"CHECKPOINT_DIR {checkpoint}: not a folder; give a checkpoint-<step> folder from a training run's "
                "--output_dir"]
    inside = [path for _, path in checkpoints_in(checkpoint) if is_complete(path)]
    if inside:
        return [f"CHECKPOINT_DIR {checkpoint}: a training run's output folder, not one checkpoint; give one of its "
                f"checkpoint folders, e.g. {inside[-1]} (its newest complete one)"]
    if not is_complete(checkpoint):
        if CHECKPOINT_DIR.match(os.path.basename(os.path.normpath(checkpoint))):
            return [f"CHECKPOINT_DIR {checkpoint}: no trainer_state.json, so the checkpoint was cut short while being "
                    "written; give an earlier checkpoint-<step> folder"]
        return [f"CHECKPOINT_DIR {checkpoint}: not a checkpoint (no trainer_state.json); give a checkpoint-<step> "
                "folder written by run_clm.py"]
    problems = []
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        problems.append(f"CHECKPOINT_DIR {checkpoint}: no config.json; give a checkpoint-<step> folder written by "
                        "run_clm.py")
    tag = deepspeed_tag(checkpoint)
    if tag is not None and not zero_files(checkpoint, tag):
        problems.append(f"CHECKPOINT_DIR {checkpoint}: its DeepSpeed folder {tag}/ holds no ZeRO optimizer state "
                        "(*_optim_states.pt), where the fp32 weights are; give a checkpoint of a full run (not "
                        "--save_only_model)")
    elif tag is None and not any(os.path.isfile(os.path.join(checkpoint, name)) for name in WEIGHT_FILES):
        problems.append(f"CHECKPOINT_DIR {checkpoint}: no weights (no DeepSpeed 'latest' file and no "
                        f"{' or '.join(WEIGHT_FILES[::2])}); give a checkpoint-<step> folder written by run_clm.py")
    elif weights_only(checkpoint) and sixteen_bit_weights(checkpoint):
        # A DeepSpeed run's final model, or its --save_only_model checkpoint: the fp32 master weights were never
        # written, and widening 16-bit weights would only pretend to be them. (A full checkpoint of the bf16 mode
        # has its optimizer state: its bf16 weights are the ones it trained.)
        problems.append(f"CHECKPOINT_DIR {checkpoint}: holds only 16-bit weights and no DeepSpeed optimizer state, so "
                        "there are no fp32 weights to export (a DeepSpeed run's final model, or --save_only_model); "
                        "from_pretrained loads the folder as it is, or give a checkpoint-<step> folder of a full run")
    return problems


def sixteen_bit_weights(checkpoint):
    """Whether the safetensors weights of a folder are fp16/bf16 (read from the file headers, not loaded)."""
    files = ["model.safetensors"]
    index = os.path.join(checkpoint, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    for name in files:
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            continue
        with safe_open(path, framework="pt") as weights:
            for key in weights.keys():
                if weights.get_slice(key).get_dtype() in ("F16", "BF16"):
                    return True
    return False


def out_dir_problems(out_dir):
    """OUT_DIR must be new or an empty folder: nothing already there is ever overwritten."""
    if os.path.isfile(out_dir) or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        return [f"OUT_DIR {out_dir}: is a file; give a new or empty folder"]
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        return [f"OUT_DIR {out_dir}: not empty; give a new or empty folder (nothing is overwritten)"]
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        return [f"OUT_DIR {out_dir}: its parent folder {parent} does not exist; create it first or give another path"]
    if not os.access(parent, os.W_OK):
        return [f"OUT_DIR {out_dir}: cannot write in {parent}; give a folder you can write to"]
    return []


def tokenizer_problems(checkpoint, tokenizer):
    if tokenizer or not os.path.isdir(checkpoint) or not is_complete(checkpoint):
        return []
    if any(os.path.isfile(os.path.join(checkpoint, name)) for name in TOKENIZER_FILES):
        return []
    return [f"CHECKPOINT_DIR {checkpoint}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); give --tokenizer with "
            "the model or folder the run took its tokenizer from"]


def fp32_state_dict(checkpoint):
    """(state dict of fp32 tensors, where they came from)."""
    tag = deepspeed_tag(checkpoint)
    if tag is not None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        partitions = len(zero_files(checkpoint, tag))
        state = get_fp32_state_dict_from_zero_checkpoint(checkpoint, tag=tag)
        return state, f"DeepSpeed's fp32 master weights, joined from {partitions} ZeRO partition(s) in {tag}/"
    # Without DeepSpeed the Trainer saves the weights it trains: fp32 under mixed precision, or 16-bit ones (the
    # bf16 mode), which widen to fp32 exactly.
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if sixteen_bit_weights(checkpoint):
        return model.state_dict(), ("the 16-bit weights a run without DeepSpeed trained (it keeps no fp32 copy), "
                                    "widened to fp32")
    return model.state_dict(), "the fp32 weights of a checkpoint written without DeepSpeed"


def build_model(checkpoint, state):
    """The checkpoint's model class with `state` as its weights, built without allocating weights twice."""
    config = AutoConfig.from_pretrained(checkpoint)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()  # a tied output layer shares the input embedding, saved once
    still_meta = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
                  if tensor.is_meta]
    if still_meta or unexpected:
        raise UsageError(f"CHECKPOINT_DIR {checkpoint}: its weights do not fit its config.json (missing: "
                         f"{', '.join(still_meta[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'}); "
                         "give a checkpoint-<step> folder written by run_clm.py")
    model.config.dtype = torch.float32  # training under DeepSpeed fp16/bf16 saved a 16-bit config
    if os.path.isfile(os.path.join(checkpoint, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(checkpoint)
    return model.eval()


def export(checkpoint, out_dir, tokenizer=None):
    """Write the checkpoint's model into out_dir; returns what was written, in words."""
    raise_if_any(checkpoint_problems(checkpoint) + out_dir_problems(out_dir)
                 + tokenizer_problems(checkpoint, tokenizer))
    tokenizer_source = tokenizer or checkpoint
    loaded_tokenizer = load_tokenizer(tokenizer_source, flag="--tokenizer" if tokenizer else "CHECKPOINT_DIR")
    state, source = fp32_state_dict(checkpoint)
    model = build_model(checkpoint, state)
    n_params = sum(p.numel() for p in model.parameters())
    # Written beside OUT_DIR, then renamed into place: OUT_DIR never holds half an export.
    parent = os.path.dirname(os.path.abspath(out_dir))
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; OUT_DIR gets the usual permissions
    try:
        model.save_pretrained(staging)
        loaded_tokenizer.save_pretrained(staging)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); rmdir refuses if something appeared since
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    weights = sum(os.path.getsize(os.path.join(out_dir, name)) for name in os.listdir(out_dir)
                  if name.endswith(".safetensors"))
    return (f"exported {checkpoint} to {out_dir}: {n_params:,} parameters in fp32 ({weights / 2**20:,.1f} MiB of "
            f"safetensors) from {source}, with config and tokenizer; try it with "
            f"python run_generation.py --model_name_or_path {out_dir}")

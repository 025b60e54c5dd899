"""Writing the model's weights piece by piece. safetensors copies every GPU tensor of a file to the CPU and keeps the
copies until the file is written, so a model written as one file (Transformers' default up to 50 GB) needs host RAM
for all its weights at once: 13.5 GB for a 7B model in bf16, on top of an 8-bit optimizer state of 12.7 GB in host
RAM. Written in shards of SHARD_BYTES, host RAM holds one shard's copy at a time. A model under that size is still
one model.safetensors."""

import os
import re

from . import testhooks

SHARD_BYTES = 1 << 30
# The weight files save_pretrained writes: one model.safetensors, or shards and their index.
WEIGHT_FILE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")


def write_model(model, output_dir, tokenizer=None):
    """The model (weights in shards, config, generation config) and its tokenizer."""
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, max_shard_size=testhooks.shard_bytes(SHARD_BYTES))
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)


def weight_files(folder):
    return sorted(name for name in os.listdir(folder) if WEIGHT_FILE.match(name))


def host_copy_bytes(weight_bytes_total, largest_tensor_bytes, shard_bytes=SHARD_BYTES):
    """Host RAM a GPU model's save copies at once: one shard (a single tensor larger than a shard is a shard)."""
    return min(weight_bytes_total, max(shard_bytes, largest_tensor_bytes))

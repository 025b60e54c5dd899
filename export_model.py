#!/usr/bin/env python
"""Export one training checkpoint as a model folder: consolidated fp32 weights (model.safetensors), config and
tokenizer, loadable by run_generation.py and AutoModelForCausalLM.from_pretrained.

    python export_model.py finetuned/checkpoint-200 finetuned-step200

CHECKPOINT_DIR is a checkpoint-<step> folder of a run_clm.py --output_dir: one written through DeepSpeed (ZeRO-2 as in
ds_config.json, ZeRO-3 as in ds_config_zero3.json, by any number of GPUs; the fp32 master weights are joined from the
optimizer state with DeepSpeed's zero_to_fp32), or one written without DeepSpeed. It runs on the CPU and needs RAM for
about twice the fp32 weights (GPT-2 XL: about 13 GB). OUT_DIR must be new or empty: nothing is ever overwritten, and
the export appears there only once complete.

The final model a DeepSpeed --fp16/--bf16 run leaves in --output_dir holds 16-bit weights; this gives the fp32
master weights of any checkpoint instead.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clmkit/ beside this file, wherever it is run from

from clmkit.errors import run_cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="A checkpoint-<step> folder written by run_clm.py.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="Where to write the model: a new or empty folder.")
    parser.add_argument("--tokenizer", default=None,
                        help="Take the tokenizer from this folder or hub name (default: the one in the checkpoint).")
    args = parser.parse_args(argv)
    from clmkit.export import export

    print(export(args.checkpoint, args.out_dir, args.tokenizer), flush=True)


if __name__ == "__main__":
    run_cli(main)

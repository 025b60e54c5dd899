#!/usr/bin/env python
"""Build a GPT-2 tokenizer (byte-level BPE trained on your text) and, optionally, a randomly initialised model.

For machines that cannot reach a model hub: the tests use a tiny model made this way, and the GPU
runs use a GPT-2 XL-sized one (same speed and memory as the pretrained weights), or another family's shapes.

    python tools/make_offline_model.py --text train.txt --out tiny --vocab_size 1000 \
        --model n_layer=2,n_embd=64,n_head=2,n_positions=256
    python tools/make_offline_model.py --text train.txt --out llama-3b --vocab_size 8000 --model_type llama \
        --model hidden_size=3072,intermediate_size=8192,num_hidden_layers=28,num_attention_heads=24,\
num_key_value_heads=8,vocab_size=128256,tie_word_embeddings=True --device cuda --dtype bfloat16
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clmkit.errors import UsageError, raise_if_any, run_cli  # noqa: E402

END_OF_TEXT = "<|endoftext|>"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", nargs="+", required=True, help="UTF-8 text files to train the tokenizer on.")
    parser.add_argument("--out", required=True, help="Folder to save the tokenizer (and model) in.")
    parser.add_argument("--vocab_size", type=int, default=1000, help="Tokenizer vocabulary size.")
    parser.add_argument("--model", default=None,
                        help="Also save a random model with these config values, e.g. n_layer=2,n_embd=64. "
                             "vocab_size defaults to the tokenizer's (a larger one keeps the family's LM head).")
    parser.add_argument("--model_type", default="gpt2",
                        help="The model's family, as Transformers names it: gpt2 (default), llama, qwen2, gptj, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="The saved weights' dtype (default float32); bfloat16 halves a large model's file.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the random weights.")
    parser.add_argument("--device", default="cpu",
                        help="Where to draw the random weights: cuda does a GPT-2 XL-sized model in seconds, the CPU "
                             "in a minute or more. The saved files are the same either way (not the same numbers).")
    return parser.parse_args(argv)


def build_tokenizer(text_files, vocab_size):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train(text_files, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT], show_progress=False)
    return GPT2TokenizerFast(tokenizer_object=bpe, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                             unk_token=END_OF_TEXT, model_max_length=1024)


def build_model(overrides, tokenizer, seed, device="cpu", model_type="gpt2", dtype="float32"):
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    torch.manual_seed(seed)
    # The values go to the config's constructor, not onto a made config, so that what it derives from them (Qwen2's
    # one layer type per layer) is derived from these.
    values = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    values.update(_parse_values(overrides))
    config = CONFIG_MAPPING[model_type](**values)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))


def _parse_values(text):
    """{key: value} of "a=1,b=0.5,c=True,d=name": ints, floats and booleans as such, the rest as strings."""
    values = {}
    for pair in filter(None, text.split(",")):
        key, _, raw = pair.partition("=")
        if raw in ("True", "False", "true", "false"):
            values[key.strip()] = raw.lower() == "true"
            continue
        for cast in (int, float, str):
            try:
                values[key.strip()] = cast(raw)
                break
            except ValueError:
                continue
    return values


def main(argv=None):
    args = parse(argv)
    raise_if_any([f"--text {path}: no such file" for path in args.text if not os.path.isfile(path)])
    if args.vocab_size < 258:
        raise UsageError(f"--vocab_size {args.vocab_size}: must be at least 258 (256 bytes plus specials)")
    from transformers import CONFIG_MAPPING

    if args.model is not None and args.model_type not in CONFIG_MAPPING:
        raise UsageError(f"--model_type {args.model_type}: not a model family Transformers knows; use e.g. gpt2, "
                         "llama, qwen2, gptj or gpt_neox")
    tokenizer = build_tokenizer(args.text, args.vocab_size)
    tokenizer.save_pretrained(args.out)
    if args.model is not None:
        model = build_model(args.model, tokenizer, args.seed, args.device, args.model_type, args.dtype)
        model.save_pretrained(args.out)
        print(f"{args.out}: {args.model_type} with {model.num_parameters():,} parameters, tokenizer of "
              f"{len(tokenizer)} tokens")
    else:
        print(f"{args.out}: tokenizer of {len(tokenizer)} tokens")


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python
"""Build a GPT-2 tokenizer (byte-level BPE trained on your text) and, optionally, a randomly initialised GPT-2.

For machines that cannot reach a model hub: the tests use a tiny model made this way, and the GPU
runs use a GPT-2 XL-sized one (same speed and memory as the pretrained weights).

    python tools/make_offline_model.py --text train.txt --out tiny --vocab_size 1000 \
        --model n_layer=2,n_embd=64,n_head=2,n_positions=256
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
                        help="Also save a random GPT-2 with these config overrides, e.g. n_layer=2,n_embd=64. "
                             "vocab_size defaults to the tokenizer's.")
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


def build_model(overrides, tokenizer, seed, device="cpu"):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    config.update_from_string(overrides)
    with torch.device(device):
        return GPT2LMHeadModel(config)


def main(argv=None):
    args = parse(argv)
    raise_if_any([f"--text {path}: no such file" for path in args.text if not os.path.isfile(path)])
    if args.vocab_size < 258:
        raise UsageError(f"--vocab_size {args.vocab_size}: must be at least 258 (256 bytes plus specials)")
    tokenizer = build_tokenizer(args.text, args.vocab_size)
    tokenizer.save_pretrained(args.out)
    if args.model is not None:
        model = build_model(args.model, tokenizer, args.seed, args.device)
        model.save_pretrained(args.out)
        print(f"{args.out}: GPT-2 with {model.num_parameters():,} parameters, tokenizer of {len(tokenizer)} tokens")
    else:
        print(f"{args.out}: tokenizer of {len(tokenizer)} tokens")


if __name__ == "__main__":
    run_cli(main)

#!/usr/bin/env python
"""Sample text from a causal language model saved by run_clm.py (its --output_dir).

    python run_generation.py --model_type=gpt2 --model_name_or_path=finetuned --length 200
    python run_generation.py --model_name_or_path finetuned --prompt "To be, or not to be"
    python run_generation.py --model_name_or_path finetuned --prompt_file prompts.txt --num_return_sequences 3

Without --prompt or --prompt_file it asks for prompts on standard input, one a line, until an empty
line, 'quit' or end of input. --prompt_file holds one prompt a line (blank lines skipped), all sampled
in one left-padded batch.

Output, on standard output: for each prompt and each returned sequence a header line
`=== GENERATED SEQUENCE <n> (prompt <m>) ===`, then the prompt followed by its continuation.
Notices and errors go to standard error.

Choices worth knowing:
  * Each prompt is sampled right after seeding with --seed, so the same prompt, flags and seed give the
    same text, also in interactive mode and whatever came before it. --k 1 makes sampling greedy.
  * Prompt plus continuation must fit the model's context (n_positions). When they do not, --length is
    cut (with a notice) rather than the prompt: text the user wrote is never dropped silently. A prompt
    that alone fills the context is an error.
  * --fp16 needs a CUDA GPU. On a CPU, float16 is slow or missing for some operations, and a bfloat16
    fallback would quietly give different text, so it is refused; drop --fp16 to run in float32.
    Without --fp16 the weights are loaded in float32 even when the checkpoint holds float16
    (as DeepSpeed fp16 training saves them), for the same reason.
"""

import argparse
import json
import os
import sys

from clmkit.errors import UsageError, raise_if_any, run_cli

HEADER = "=== GENERATED SEQUENCE {sequence} (prompt {prompt}) ==="
INTERACTIVE_PROMPT = "Model prompt >>> "
QUIT_WORDS = ("", "quit")


def main(argv=None):
    args = parse(argv)
    prompts, device = check_inputs(args)
    model, tokenizer = load_model(args, device)
    if prompts is None:
        interactive(model, tokenizer, args)
    else:
        samples = generate(model, tokenizer, prompts, args, first_prompt_number=1)
        print_samples(samples)


# ---------------------------------------------------------------- flags


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module text as written, and each flag's default after its help."""


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--model_name_or_path", required=True,
                        help="Folder the model was saved in: the --output_dir of run_clm.py.")
    parser.add_argument("--model_type", default=None,
                        help="Accepted for compatibility (e.g. gpt2); must match the saved config's model_type.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="One prompt. Without it or --prompt_file: interactive.")
    source.add_argument("--prompt_file", default=None,
                        help="UTF-8 file, one prompt a line (blank lines skipped), sampled as one batch.")
    parser.add_argument("--length", type=int, default=200, help="New tokens to generate per sequence.")
    parser.add_argument("--num_return_sequences", type=int, default=1, help="Sequences per prompt.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature, > 0.")
    parser.add_argument("--k", type=int, default=0, help="Top-k sampling; 0 turns it off, 1 is greedy.")
    parser.add_argument("--p", type=float, default=0.9, help="Top-p (nucleus) sampling, in (0, 1]; 1 turns it off.")
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="1.0 means no penalty.")
    parser.add_argument("--stop_token", default=None, help="Cut each continuation at the first occurrence of this.")
    parser.add_argument("--seed", type=int, default=42, help="Random seed; the same seed gives the same text.")
    parser.add_argument("--fp16", action="store_true", help="Half precision (float16); needs a CUDA GPU.")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    parser.add_argument("--no_cuda", "--use_cpu", dest="use_cpu", action="store_true", help="Same as --device cpu.")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- checks, all before the model is loaded


def check_inputs(args):
    """Every mistake a user can make in the flags, reported together. Returns (prompts or None, device)."""
    problems = check_model_folder(args) + check_numbers(args)
    prompts, prompt_problems = read_prompts(args)
    device, device_problems = choose_device(args)
    raise_if_any(problems + prompt_problems + device_problems)
    return prompts, device


def check_model_folder(args) -> list[str]:
    path = args.model_name_or_path
    rerun_hint = "give the --output_dir that run_clm.py saved the model in"
    if not os.path.exists(path):
        return [f"--model_name_or_path {path}: no such folder; {rerun_hint}"]
    if not os.path.isdir(path):
        return [f"--model_name_or_path {path}: is a file, not a folder; {rerun_hint}"]
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return [f"--model_name_or_path {path}: no config.json in this folder, so no saved model; {rerun_hint}"]
    try:
        with open(config_file, encoding="utf-8") as handle:
            saved_type = json.load(handle).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        return [f"--model_name_or_path {path}: config.json is unreadable ({err})"]
    if args.model_type and saved_type and args.model_type != saved_type:
        return [f"--model_type {args.model_type}: the model in {path} is a {saved_type} model "
                f"(its config.json says so); give --model_type {saved_type} or leave it out"]
    return []


def check_numbers(args) -> list[str]:
    rules = [
        (args.length < 1, f"--length {args.length}: must be at least 1 new token"),
        (args.num_return_sequences < 1, f"--num_return_sequences {args.num_return_sequences}: must be at least 1"),
        (not args.temperature > 0, f"--temperature {args.temperature}: must be above 0 (use --k 1 for greedy)"),
        (not 0 < args.p <= 1, f"--p {args.p}: must be in (0, 1]; 1 turns top-p off"),
        (args.k < 0, f"--k {args.k}: must be 0 (off) or more"),
        (not args.repetition_penalty > 0, f"--repetition_penalty {args.repetition_penalty}: must be above 0"),
        (args.stop_token == "", "--stop_token: empty; leave it out to keep whole continuations"),
    ]
    return [message for broken, message in rules if broken]


def read_prompts(args):
    """(prompts or None for interactive mode, problems)."""
    if args.prompt is not None:
        if not args.prompt.strip():
            return None, ["--prompt: empty; give some text to continue"]
        return [args.prompt], []
    if args.prompt_file is None:
        return None, []
    return read_prompt_file(args.prompt_file)


def read_prompt_file(path):
    flag = f"--prompt_file {path}"
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, [f"{flag}: no such file"]
    except IsADirectoryError:
        return None, [f"{flag}: is a folder; give a text file with one prompt a line"]
    except OSError as err:
        return None, [f"{flag}: cannot be read ({err.strerror})"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        return None, [f"{flag}: not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
                      f"(line {line}): {err.reason}; save the file as UTF-8"]
    # A BOM is stripped after decoding so that byte offsets above count from the file's real start.
    prompts = [line for line in text.removeprefix("\ufeff").splitlines() if line.strip()]
    if not prompts:
        return None, [f"{flag}: no prompts in it (empty or only blank lines); give one prompt a line"]
    return prompts, []


def choose_device(args):
    """(device name, problems). --fp16 is refused on a CPU: see the module docstring."""
    import torch

    requested = "cpu" if args.use_cpu else args.device
    if args.use_cpu and args.device not in ("auto", "cpu"):
        return None, [f"--no_cuda/--use_cpu contradicts --device {args.device}; give one of them"]
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        return None, [f"--device {args.device}: unknown; give auto, cpu, cuda or cuda:N"]
    if device.type == "cuda" and not cuda_index_exists(torch, device):
        return None, [f"--device {args.device}: no such CUDA GPU here "
                      f"({torch.cuda.device_count()} found); give --device cpu"]
    if args.fp16 and device.type != "cuda":
        why = "no CUDA GPU was found" if args.device == "auto" and not args.use_cpu else "the device is the CPU"
        return None, [f"--fp16: half precision needs a CUDA GPU and {why}; "
                      "leave out --fp16 to generate in float32 on the CPU"]
    return str(device), []


def cuda_index_exists(torch, device) -> bool:
    return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


# ---------------------------------------------------------------- loading


def load_model(args, device):
    from transformers.utils import logging

    from clmkit.loading import load_model_for_generation

    # The per-tensor loading bar is noise for a command whose output is meant to be read or parsed.
    logging.disable_progress_bar()
    # float32 unless --fp16: an fp16-saved checkpoint would otherwise stay fp16, which CPUs handle poorly.
    dtype = "float16" if args.fp16 else "float32"
    return load_model_for_generation(args.model_name_or_path, dtype, device)


# ---------------------------------------------------------------- generation


def generate(model, tokenizer, prompts, args, first_prompt_number):
    """[(prompt number, sequence number, text)] for every prompt, all prompts in one left-padded batch."""
    from transformers import set_seed

    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    length = fit_length(batch["attention_mask"], model.config, args.length, first_prompt_number)
    set_seed(args.seed)  # per call, so a prompt's text does not depend on the prompts before it
    output = model.generate(
        **batch,
        max_new_tokens=length,
        do_sample=True,
        temperature=args.temperature,
        top_k=args.k,
        top_p=args.p,
        repetition_penalty=args.repetition_penalty,
        num_return_sequences=args.num_return_sequences,
        pad_token_id=tokenizer.pad_token_id,
    )
    continuations = output[:, batch["input_ids"].shape[1]:]
    n = args.num_return_sequences
    return [
        (first_prompt_number + row // n, row % n + 1,
         prompts[row // n] + continuation_text(tokens, tokenizer, args.stop_token))
        for row, tokens in enumerate(continuations)
    ]


def fit_length(attention_mask, config, length, first_prompt_number) -> int:
    """--length, cut so that the longest prompt plus its continuation fits the model's positions."""
    context = context_size(config)
    prompt_lengths = attention_mask.sum(dim=1).tolist()
    longest = max(prompt_lengths)
    if context is None or longest + length <= context:
        return length
    if longest >= context:
        too_long = [f"prompt {first_prompt_number + i}: {n} tokens, but the model's context is {context} "
                    "tokens and at least 1 must be left to generate; shorten it"
                    for i, n in enumerate(prompt_lengths) if n >= context]
        raise UsageError(*too_long)
    print(f"notice: --length {length} cut to {context - longest}: the longest prompt takes {longest} "
          f"of the model's {context} positions", file=sys.stderr, flush=True)
    return context - longest


def context_size(config):
    """Positions the model has embeddings for, or None where it names no limit."""
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return getattr(config, name)
    return None


def continuation_text(tokens, tokenizer, stop_token) -> str:
    """The new tokens as text: up to the end-of-text token the model emitted, then up to --stop_token."""
    tokens = tokens.tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if stop_token and stop_token in text:
        text = text[:text.index(stop_token)]
    return text


def print_samples(samples):
    for prompt_number, sequence_number, text in samples:
        print(HEADER.format(sequence=sequence_number, prompt=prompt_number))
        print(text, flush=True)


# ---------------------------------------------------------------- interactive mode


def interactive(model, tokenizer, args):
    """Prompts from standard input until an empty line, 'quit' or end of input; a bad prompt is reported, not fatal."""
    prompt_number = 1
    for prompt in read_interactive_prompts():
        try:
            print_samples(generate(model, tokenizer, [prompt], args, first_prompt_number=prompt_number))
        except UsageError as err:
            for problem in err.problems:
                print(f"error: {problem}", file=sys.stderr, flush=True)
        prompt_number += 1


def read_interactive_prompts():
    while True:
        # The invitation goes to stderr so that stdout holds only generated text, even when piped.
        print(INTERACTIVE_PROMPT, end="", file=sys.stderr, flush=True)
        try:
            line = input()
        except EOFError:
            return
        if line.strip().lower() in QUIT_WORDS:
            return
        yield line


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    run_cli(main)

"""Tests for run_generation.py, run as a user runs it (a subprocess), on the tiny random GPT-2 of conftest.

The model is random, so the text is gibberish: the tests check structure, batching, seeding and errors.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, python

SCRIPT = "run_generation.py"
HEADER = re.compile(r"^=== GENERATED SEQUENCE (\d+) \(prompt (\d+)\) ===$", re.MULTILINE)
# Prompts of different token lengths, so that the batch really is left-padded.
PROMPTS = ["ROMEO:", "To be, or not to be, that is the question:", "Now is the winter of our discontent"]
SHORT = ("--length", 12)
# Top-k of 1 is greedy: deterministic whatever the batch. The repetition penalty stops the random model
# repeating its last token, so its output depends on the whole prompt and a wrong padding or mask shows.
GREEDY = ("--k", 1, "--repetition_penalty", 2)


def generate(model, *args, stdin=""):
    """A short run; `stdin` is what interactive mode reads (conftest's python() has no way to pass it)."""
    command = [sys.executable, os.path.join(REPO, SCRIPT), "--model_name_or_path", model, *SHORT, *args]
    return subprocess.run(list(map(str, command)), cwd=REPO, input=stdin, capture_output=True, text=True,
                          timeout=120)


def samples(result):
    """[(sequence number, prompt number, text)] from stdout, after checking the run succeeded."""
    assert result.returncode == 0, result.stderr
    parts = HEADER.split(result.stdout)
    assert parts[0] == "", f"text before the first header: {parts[0]!r}"
    return [(int(seq), int(prompt), text.removesuffix("\n").removeprefix("\n"))
            for seq, prompt, text in zip(parts[1::3], parts[2::3], parts[3::3])]


def error_lines(result):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    # Blank lines between prompts are skipped, not prompts of their own.
    path.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n   \n{PROMPTS[2]}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seeded_run(tiny_model):
    """One --prompt run with --seed 7, shared by the tests that compare against it."""
    return generate(tiny_model, "--model_type", "gpt2", "--prompt", PROMPTS[1], "--seed", 7)


# ---------------------------------------------------------------- output


def test_prompt_gives_header_then_prompt_and_continuation(seeded_run):
    [(seq, prompt, text)] = samples(seeded_run)
    assert (seq, prompt) == (1, 1)
    assert text.startswith(PROMPTS[1]) and len(text) > len(PROMPTS[1])


def test_prompt_file_is_one_batch_equal_to_each_prompt_alone(tiny_model, prompt_file):
    batch = samples(generate(tiny_model, "--prompt_file", prompt_file, *GREEDY))
    assert [(seq, prompt) for seq, prompt, _ in batch] == [(1, 1), (1, 2), (1, 3)]
    # Interactive mode generates each prompt alone (a batch of one, no padding): left padding must not
    # change what a prompt produces.
    alone = samples(generate(tiny_model, *GREEDY, stdin="\n".join(PROMPTS) + "\n"))
    assert batch == alone
    assert [text[:len(p)] for (_, _, text), p in zip(batch, PROMPTS)] == PROMPTS


def test_num_return_sequences_numbers_sequences_per_prompt(tiny_model, prompt_file):
    got = samples(generate(tiny_model, "--prompt_file", prompt_file, "--num_return_sequences", 2))
    assert [(seq, prompt) for seq, prompt, _ in got] == [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3), (2, 3)]


def test_same_seed_same_text_other_seed_other_text(tiny_model, seeded_run):
    again = generate(tiny_model, "--prompt", PROMPTS[1], "--seed", 7)
    other = generate(tiny_model, "--prompt", PROMPTS[1], "--seed", 8)
    assert samples(again) == samples(seeded_run)
    assert samples(other) != samples(seeded_run)


def test_interactive_reads_prompts_until_end_of_input(tiny_model):
    got = samples(generate(tiny_model, stdin=f"{PROMPTS[0]}\n{PROMPTS[2]}\n"))
    assert [(seq, prompt) for seq, prompt, _ in got] == [(1, 1), (1, 2)]
    assert got[0][2].startswith(PROMPTS[0]) and got[1][2].startswith(PROMPTS[2])


def test_length_is_cut_to_the_models_context(tiny_model):
    # The tiny model has 256 positions; asking for 1000 new tokens is cut, with a notice, not an error.
    result = python(SCRIPT, "--model_name_or_path", tiny_model, "--prompt", PROMPTS[0], "--length", 1000, *GREEDY)
    assert len(samples(result)) == 1
    assert re.search(r"^notice: --length 1000 cut to \d+", result.stderr, re.MULTILINE)


# ---------------------------------------------------------------- user mistakes


@pytest.mark.parametrize("case", ["missing model folder", "temperature 0", "empty prompt file", "bad byte"])
def test_bad_input_exits_2_naming_the_flag(tiny_model, tmp_path, case):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("first prompt\ncaf\u00e9\n".encode("latin-1"))
    model, args, expected = {
        "missing model folder": (tmp_path / "finetuned", ["--prompt", "x"],
                                 ["--model_name_or_path", "finetuned", "--output_dir"]),
        "temperature 0": (tiny_model, ["--prompt", "x", "--temperature", 0], ["--temperature"]),
        "empty prompt file": (tiny_model, ["--prompt_file", empty], ["--prompt_file", "empty.txt"]),
        "bad byte": (tiny_model, ["--prompt_file", latin1], ["--prompt_file", "latin1.txt", "byte offset 16"]),
    }[case]
    [line] = error_lines(python(SCRIPT, "--model_name_or_path", model, *args))
    assert all(word in line for word in expected), line


def test_every_problem_is_reported_at_once(tiny_model, tmp_path):
    result = python(SCRIPT, "--model_name_or_path", tiny_model, "--model_type", "bert", "--length", 0,
                    "--p", 0, "--k", -1, "--num_return_sequences", 0, "--prompt_file", tmp_path / "nope.txt")
    flags = [line.split()[1] for line in error_lines(result)]
    assert flags == ["--model_type", "--length", "--num_return_sequences", "--p", "--k", "--prompt_file"]


# ---------------------------------------------------------------- the classic snippet, on a saved folder


def test_classic_gpt2_snippet_loads_what_was_saved(tiny_model):
    from transformers import GPT2LMHeadModel, GPT2Tokenizer

    tokenizer = GPT2Tokenizer.from_pretrained(str(tiny_model))
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    model = GPT2LMHeadModel.from_pretrained(str(tiny_model))
    prompt = "I enjoy walking with my cute dog"
    input_ids = tokenizer.encode(prompt, return_tensors="pt")
    greedy_output = model.generate(input_ids, max_length=40, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(greedy_output[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)

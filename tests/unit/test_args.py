"""run_clm.py's flags, parsed as the command parses them."""

import json

import pytest

from clmkit.args import make_parser, parse_args
from clmkit.errors import UsageError
from clmkit.loading import checkpointing_on


def test_gradient_checkpointing_on_by_default():
    _, _, on, _ = parse_args(["--output_dir", "x", "--do_train"])
    _, _, off, _ = parse_args(["--output_dir", "x", "--do_train", "--no_gradient_checkpointing"])
    assert checkpointing_on(on) is True and checkpointing_on(off) is False


def test_flags_after_a_json_file_override_its_values(tmp_path):
    (tmp_path / "args.json").write_text(json.dumps({"output_dir": str(tmp_path / "out"), "do_train": True,
                                                    "max_steps": 500, "learning_rate": 1e-4}))
    _, _, training_args, _ = parse_args([str(tmp_path / "args.json"), "--max_steps", "1"])
    assert training_args.max_steps == 1  # the flag after the file
    assert training_args.learning_rate == 1e-4  # the file's, untouched
    # as the deepspeed launcher passes them: its --local_rank first
    _, _, training_args, _ = parse_args(["--local_rank=0", str(tmp_path / "args.json"), "--max_steps=2"])
    assert training_args.max_steps == 2


def test_a_misspelled_flag_gets_the_nearest_one_and_none_is_abbreviated():
    with pytest.raises(UsageError) as err:
        parse_args(["--output_dir", "x", "--do_train", "--lerning_rate", "1e-3", "--num_train_epoch", "1"])
    assert err.value.problems == ["unknown flag --lerning_rate: did you mean --learning_rate?",
                                  "unknown flag --num_train_epoch: did you mean --num_train_epochs?"]


def test_help_opens_with_a_description_and_this_tools_flags():
    text = make_parser().format_help()
    usage, description = text.split("\n\n")[:2]
    assert usage.count("\n") <= 1 and "--learning_rate" not in usage  # not hundreds of flags
    assert description.startswith("Fine-tune every parameter")
    ours, trainer = text.index("this tool's flags:"), text.index("Trainer flags: ")
    for flag in ("--plan", "--chunked_loss", "--model_name_or_path", "--train_file", "--prompt_column"):
        assert ours < text.index(f"\n  {flag} ") < trainer, flag
    assert trainer < text.index("\n  --learning_rate ")
    assert text.index("\n  --plan ") < text.index("\n  --model_name_or_path ")  # the run's own switches first


def test_generation_help_shows_each_default_and_takes_no_abbreviation(capsys):
    import run_generation

    with pytest.raises(SystemExit):
        run_generation.parse(["--help"])
    text = capsys.readouterr().out
    assert "New tokens to generate per sequence. (default: 200)" in " ".join(text.split())
    assert "(default: 42)" in text
    with pytest.raises(SystemExit):
        run_generation.parse(["--model_name_or_path", "m", "--leng", "5"])
    assert "unrecognized arguments: --leng" in capsys.readouterr().err


def test_plan_takes_bf16_for_an_assumed_gpu(monkeypatch):
    """--plan with CLM_ASSUME_GPU_GIB plans the bf16 mode on a machine without a GPU (or with one) instead of
    refusing --bf16; a real run on such a machine is still refused."""
    monkeypatch.setenv("CLM_ASSUME_GPU_GIB", "16")
    flags = ["--output_dir", "x", "--do_train", "--bf16", "--dtype", "bfloat16", "--plan"]
    _, _, training_args, refused = parse_args(flags)
    assert training_args.bf16 is True and refused == []


def test_help_puts_the_tools_flags_first_each_pair_once_and_groups_the_trainers(monkeypatch):
    """--help was 617 lines: every --X/--no_X pair said its paragraph twice, wrapped at 55 characters, and some 150
    Trainer flags followed in one heap."""
    from clmkit.args import make_parser

    monkeypatch.setenv("COLUMNS", "120")  # a terminal as wide as the page; a narrower one wraps more
    text = make_parser().format_help()
    headings = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings[:3] == ["options:", "this tool's flags:", "Trainer flags: what to run and where results go:"]
    assert "Trainer flags: batch, schedule and optimizer:" in headings and len(headings) == 8
    assert text.count("Recompute activations in the backward pass") == 1  # --gradient_checkpointing, not its --no_
    assert "--no_gradient_checkpointing) turns it off" in text or "--no_gradient_checkpointing turns it off" in text
    assert "--overwrite-output-dir" not in text
    assert text.index("\n  --mode {") < text.index("\n  --model_name_or_path VALUE") < \
        text.index("\n  --learning_rate NUMBER")
    assert len(text.splitlines()) < 420


def test_an_unknown_flag_suggests_the_training_flag_meant():
    from clmkit.args import make_parser, unknown_flag_problems

    assert unknown_flag_problems(["--per_device_batch_size"], make_parser()) == [
        "unknown flag --per_device_batch_size: did you mean --per_device_train_batch_size?"]

"""How text becomes training sequences, in this process: flags about line breaks, the held-out tail, examples cut
or padded to the block, prompt/completion files, a training and a validation file of different formats."""

import json
from types import SimpleNamespace

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from clmkit.args import parse_args
from clmkit.checks import data_file_problems, flag_problems
from clmkit.data import (PAIRS, TEXT, load_raw_texts, make_sequences, pad_examples, pad_pairs, split_sequences,
                         tokenize_texts)
from conftest import BLOCK, sequences_of


@pytest.mark.parametrize("flag", ["--keep_linebreaks", "--keep_linebreaks=true"])
def test_keep_linebreaks_is_still_accepted(tiny_model, tmp_path, flag):
    """Older command lines pass it; line breaks are kept whatever it says."""
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    raw, _, _, _ = sequences_of(tmp_path, tiny_model, tmp_path / "a.txt",
                                extra=[flag])
    assert raw["train"]["text"] == ["one\ntwo\n"]


@pytest.mark.parametrize("flag", ["--no_keep_linebreaks", "--keep_linebreaks=false"])
def test_dropping_line_breaks_of_a_txt_file_is_refused_with_the_way_to_do_it(tmp_path, flag):
    """Ignoring it would train on something else than asked: one example per line, without line breaks, is what
    texttocsv.py --split line makes."""
    def problems(train):
        args = parse_args(["--output_dir", str(tmp_path), "--do_train", "--train_file", str(train), flag])
        return [line for line in flag_problems(*args[:3]) if "linebreaks" in line]

    [line] = problems(tmp_path / "a.txt")
    assert "keep_linebreaks" in line and "texttocsv.py" in line and "--split line" in line
    assert problems(tmp_path / "a.csv") == []  # it never did anything to a csv file


def test_text_is_held_out_only_for_a_run_that_evaluates():
    """Without a validation file the tail of the training text is the eval set, but only when there is an
    evaluation: a --do_train run without --do_eval set 5% of its text aside and never used it."""
    _, data_args, _, _ = parse_args(["--output_dir", "unused", "--do_train", "--train_file", "train.txt"])
    sequences = DatasetDict({"train": Dataset.from_dict({"input_ids": [[step] * BLOCK for step in range(40)]})})
    train, evaluation = split_sequences(sequences, data_args, BLOCK, evaluating=False)
    assert len(train) == 40 and evaluation is None
    train, evaluation = split_sequences(sequences, data_args, BLOCK, evaluating=True)
    assert (len(train), len(evaluation)) == (38, 2)  # 5%: the last two sequences
    assert evaluation["input_ids"][0][0] == 38


def test_separate_examples_says_how_much_text_it_cuts(corpus, tiny_model, tmp_path, capsys):
    """With one row per file (texttocsv.py's default) --separate_examples keeps one block of each file, and says
    how much of the rest is never seen."""
    _, tokens, sequences, _ = sequences_of(tmp_path, tiny_model, corpus / "train.txt", extra=["--separate_examples"])
    total = len(tokens["train"]["input_ids"][0])
    printed = capsys.readouterr().out
    assert ("notice: --separate_examples: 1 of 1 train examples are longer than the block of 64 tokens and are cut "
            f"to it; {total - BLOCK:,} of their {total:,} tokens are never seen") in printed
    assert sequences["train"].column_names == ["input_ids", "attention_mask", "labels"]


def test_padding_never_counts_in_the_loss(tiny_model):
    """--separate_examples: each example truncated or right-padded to the block; padding is masked out of the
    attention and of the labels alike."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(["To be", "or not to be, that is the question"])["input_ids"]
    batch = pad_examples({"input_ids": ids}, 8, tokenizer.eos_token_id)
    assert all(len(seq) == 8 for seq in batch["input_ids"])
    for mask, labels in zip(batch["attention_mask"], batch["labels"]):
        assert [label == -100 for label in labels] == [m == 0 for m in mask]
    assert batch["cut_tokens"][0] == max(0, len(ids[0]) - 8) and batch["cut_tokens"][1] == len(ids[1]) - 8


def test_prompt_and_completion_make_one_sequence_with_the_loss_on_the_completion():
    batch = {"prompt_ids": [[5, 6, 7], [8]], "completion_ids": [[9, 10, 0], [11, 12, 13, 14, 15, 16, 17, 0]]}
    out = pad_pairs(batch, 6, pad_id=0)
    assert out["input_ids"] == [[5, 6, 7, 9, 10, 0], [8, 11, 12, 13, 14, 15]]
    assert out["labels"] == [[-100, -100, -100, 9, 10, 0], [-100, 11, 12, 13, 14, 15]]
    assert out["attention_mask"] == [[1] * 6, [1] * 6]
    assert out["cut_tokens"] == [0, 3]
    assert out["loss_tokens"] == [3, 5]
    short = pad_pairs({"prompt_ids": [[5]], "completion_ids": [[9, 0]]}, 6, pad_id=0)
    assert short["input_ids"] == [[5, 9, 0, 0, 0, 0]] and short["labels"] == [[-100, 9, 0, -100, -100, -100]]
    assert short["attention_mask"] == [[1, 1, 1, 0, 0, 0]]


def test_a_prompt_completion_file_trains_on_its_completions(tiny_model, tmp_path):
    rows = [{"prompt": "Question: who loves Juliet?\n", "completion": " Romeo."},
            {"prompt": "Question: who is the Prince of Denmark?\n", "completion": " Hamlet."},
            {"prompt": "", "completion": ""}]  # nothing to learn: left out
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    _, data_args, training_args, _ = parse_args(["--output_dir", str(tmp_path / "out"), "--do_train", "--use_cpu",
                                                 "--train_file", str(tmp_path / "pairs.jsonl")])
    assert data_file_problems("--train_file", str(tmp_path / "pairs.jsonl"), data_args) == []
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    raw, kinds = load_raw_texts(data_args, cache_dir=str(tmp_path / "cache"))
    assert kinds == {"train": PAIRS}
    tokens = tokenize_texts(raw, kinds, tokenizer, data_args, training_args)
    sequences, notes = make_sequences(tokens, kinds, tokenizer, 32, data_args, training_args)
    train = sequences["train"]
    assert len(train) == 2 and train.column_names == ["input_ids", "attention_mask", "labels"]
    prompt = tokenizer(rows[0]["prompt"], add_special_tokens=False)["input_ids"]
    completion = tokenizer(rows[0]["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert train[0]["input_ids"][:len(prompt) + len(completion)] == prompt + completion
    assert [label for label in train[0]["labels"] if label != -100] == completion
    in_loss = sum(len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) + 1 for row in rows[:2])
    assert notes == {"train": f"2 train prompt/completion examples, 0 of them cut to the block of 32 tokens; "
                              f"{in_loss} completion tokens count in the loss"}


def test_a_txt_training_file_goes_with_a_csv_validation_file(tmp_path):
    (tmp_path / "train.txt").write_text("To be, or not to be.\n", encoding="utf-8")
    (tmp_path / "validation.csv").write_text("body\nThat is the question.\n", encoding="utf-8")
    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path / "out"), "--do_train", "--do_eval",
                                     "--train_file", str(tmp_path / "train.txt"), "--text_column", "body",
                                     "--validation_file", str(tmp_path / "validation.csv")])
    assert flag_problems(data_args=data_args, model_args=SimpleNamespace(
        model_name_or_path="m", model_type=None, config_name=None, config_overrides=None, dtype=None),
        training_args=parse_args(["--output_dir", "x", "--do_train"])[2]) == []
    raw, kinds = load_raw_texts(data_args, cache_dir=str(tmp_path / "cache"))
    assert kinds == {"train": TEXT, "validation": TEXT}
    assert raw["train"]["text"] == ["To be, or not to be.\n"]
    assert raw["validation"]["text"] == ["That is the question."]

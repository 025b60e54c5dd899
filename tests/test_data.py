"""How text files become training sequences: a .txt file is one document, like the csv texttocsv.py makes of it."""

import shutil

import pytest

from conftest import python

BLOCK = 64


def sequences_of(tmp_path, tiny_model, train, validation=None, extra=()):
    """(raw texts, tokenized documents, training sequences) as run_clm.py makes them, in this process."""
    from transformers import AutoTokenizer

    from clmkit.args import parse_args
    from clmkit.data import load_raw_texts, make_sequences, tokenize_texts

    flags = ["--output_dir", tmp_path / "out", "--do_train", "--use_cpu", "--train_file", train,
             "--block_size", BLOCK, *extra]
    if validation:
        flags += ["--validation_file", validation]
    _, data_args, training_args = parse_args(list(map(str, flags)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    raw, column = load_raw_texts(data_args, cache_dir=str(tmp_path / "cache"))
    tokens = tokenize_texts(raw, column, tokenizer, data_args, training_args)
    sequences = make_sequences(tokens, tokenizer, BLOCK, data_args, training_args)
    return raw, tokens, sequences, tokenizer.eos_token_id


def convert(folder, *names):
    result = python("texttocsv.py", *names, cwd=folder)
    assert result.returncode == 0, result.stderr


def test_txt_gives_the_same_sequences_as_the_csv_made_of_it(corpus, tiny_model, tmp_path):
    for name in ("train", "validation"):
        shutil.copy(corpus / f"{name}.txt", tmp_path / f"{name}.txt")
    convert(tmp_path)  # the README's step: train.txt, validation.txt -> train.csv, validation.csv

    _, txt_tokens, from_txt, eos = sequences_of(tmp_path / "t", tiny_model, tmp_path / "train.txt",
                                                tmp_path / "validation.txt")
    _, csv_tokens, from_csv, _ = sequences_of(tmp_path / "c", tiny_model, tmp_path / "train.csv",
                                              tmp_path / "validation.csv")

    for split in ("train", "validation"):
        assert from_txt[split]["input_ids"] == from_csv[split]["input_ids"], split
        assert txt_tokens[split]["input_ids"] == csv_tokens[split]["input_ids"], split
        # One document per file, so one end-of-text token, at its end: not one after every line.
        [document] = txt_tokens[split]["input_ids"]
        assert document.count(eos) == 1 and document[-1] == eos, split
    assert len(from_txt["train"]) > 20  # enough text that the comparison means something


def test_line_breaks_blank_lines_and_spaces_are_kept_exactly(tiny_model, tmp_path):
    # CRLF and a byte order mark: texttocsv.py turns them into \n and drops the mark; reading the .txt must too.
    text = "  ROMEO:\nBut, soft!\n\n\n   what light  \nthrough yonder\twindow breaks?\n\n"
    (tmp_path / "lf.txt").write_text(text, encoding="utf-8")
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    convert(tmp_path, "lf.txt", "crlf.txt")

    for name in ("lf", "crlf"):
        raw_txt, tokens, _, eos = sequences_of(tmp_path / f"{name}-t", tiny_model, tmp_path / f"{name}.txt")
        raw_csv, _, _, _ = sequences_of(tmp_path / f"{name}-c", tiny_model, tmp_path / f"{name}.csv")
        assert raw_txt["train"]["text"] == [text], name
        assert raw_csv["train"]["text"] == [text], name
        assert [ids.count(eos) for ids in tokens["train"]["input_ids"]] == [1], name


@pytest.mark.parametrize("flag", ["--keep_linebreaks", "--keep_linebreaks=true"])
def test_keep_linebreaks_is_still_accepted(tiny_model, tmp_path, flag):
    """Older command lines pass it; line breaks are kept whatever it says."""
    (tmp_path / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    raw, _, _, _ = sequences_of(tmp_path, tiny_model, tmp_path / "a.txt",
                                extra=[flag])
    assert raw["train"]["text"] == ["one\ntwo\n"]


@pytest.mark.parametrize("flag", ["--no_keep_linebreaks", "--keep_linebreaks=false"])
def test_dropping_line_breaks_of_a_txt_file_is_refused_with_the_way_to_do_it(tmp_path, flag):
    """It used to make each line an example without its line break; ignoring it now would train on something
    else than asked."""
    from clmkit.args import parse_args
    from clmkit.checks import flag_problems

    def problems(train):
        args = parse_args(["--output_dir", str(tmp_path), "--do_train", "--train_file", str(train), flag])
        return [line for line in flag_problems(*args) if "linebreaks" in line]

    [line] = problems(tmp_path / "a.txt")
    assert "keep_linebreaks" in line and "texttocsv.py" in line and "--split line" in line
    assert problems(tmp_path / "a.csv") == []  # it never did anything to a csv file


def test_text_is_held_out_only_for_a_run_that_evaluates():
    """Without a validation file the tail of the training text is the eval set, but only when there is an
    evaluation: a --do_train run without --do_eval set 5% of its text aside and never used it."""
    from datasets import Dataset, DatasetDict

    from clmkit.args import parse_args
    from clmkit.data import split_sequences

    _, data_args, _ = parse_args(["--output_dir", "unused", "--do_train", "--train_file", "train.txt"])
    sequences = DatasetDict({"train": Dataset.from_dict({"input_ids": [[step] * BLOCK for step in range(40)]})})
    train, evaluation = split_sequences(sequences, data_args, BLOCK, evaluating=False)
    assert len(train) == 40 and evaluation is None
    train, evaluation = split_sequences(sequences, data_args, BLOCK, evaluating=True)
    assert (len(train), len(evaluation)) == (38, 2)  # 5%: the last two sequences
    assert evaluation["input_ids"][0][0] == 38


def test_separate_examples_says_how_much_text_it_cuts(corpus, tiny_model, tmp_path, capsys):
    """With one row per file (texttocsv.py's default) --separate_examples keeps one block of each file: it used to
    drop the rest without a word."""
    _, tokens, sequences, _ = sequences_of(tmp_path, tiny_model, corpus / "train.txt", extra=["--separate_examples"])
    total = len(tokens["train"]["input_ids"][0])
    printed = capsys.readouterr().out
    assert ("notice: --separate_examples: 1 of 1 train examples are longer than the block of 64 tokens and are cut "
            f"to it; {total - BLOCK:,} of their {total:,} tokens are never seen") in printed
    assert sequences["train"].column_names == ["input_ids", "attention_mask", "labels"]

"""How text files become training sequences: a .txt file is one document, like the csv texttocsv.py makes of it."""

import shutil

from conftest import python, sequences_of

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


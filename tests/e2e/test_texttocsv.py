"""Tests for texttocsv.py, run as the user runs it: a subprocess in a scratch folder."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

SCRIPT = Path(REPO) / "texttocsv.py"

# Quotes, commas, blank lines and non-ASCII are what a naive csv writer gets wrong.
POEM = 'From off a hill, "whose" concave womb\n\n\nre-worded — ŝ\n  indented line\n'


def run(cwd, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def rows(path):
    """The `text` column, read with the csv module (no type guessing)."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["text"]
        return [row[0] for row in reader]


def error_lines(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()


def snapshot(folder):
    """Every entry of a folder with its bytes (None for folders), to prove nothing changed."""
    return {p.name: p.read_bytes() if p.is_file() else None for p in folder.iterdir()}


# ---------------------------------------------------------------- round trips


def test_default_converts_train_and_validation_one_row_each(tmp_path):
    (tmp_path / "train.txt").write_text(POEM * 3, encoding="utf-8")
    (tmp_path / "validation.txt").write_text(POEM, encoding="utf-8")

    result = run(tmp_path)

    assert result.returncode == 0, result.stderr
    for name, text in [("train", POEM * 3), ("validation", POEM)]:
        frame = pd.read_csv(tmp_path / f"{name}.csv", keep_default_na=False)
        assert list(frame.columns) == ["text"]
        assert frame["text"].tolist() == [text]
    assert result.stdout.splitlines() == [
        f"train.csv: 1 row, {len(POEM) * 3:,} characters",
        f"validation.csv: 1 row, {len(POEM):,} characters",
    ]


def test_named_files_go_next_to_inputs_or_into_output_dir(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\nbeta", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("gamma", encoding="utf-8")

    assert run(tmp_path, "a.txt", "sub/b.txt").returncode == 0
    assert rows(tmp_path / "a.csv") == ["alpha\nbeta"]
    assert rows(tmp_path / "sub" / "b.csv") == ["gamma"]

    (tmp_path / "out").mkdir()
    assert run(tmp_path, "a.txt", "sub/b.txt", "--output_dir", "out").returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.csv", "b.csv"]


def test_crlf_line_breaks_become_lf(tmp_path):
    # Decision: one line-break convention in training data, so \r\n and \r read back as \n.
    (tmp_path / "win.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\rfour\r\n")

    assert run(tmp_path, "win.txt").returncode == 0
    assert rows(tmp_path / "win.csv") == ["one\ntwo\n\nthree\nfour\n"]


def test_utf8_bom_is_stripped(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhello\n")

    assert run(tmp_path, "bom.txt").returncode == 0
    assert rows(tmp_path / "bom.csv") == ["hello\n"]


def test_split_line_gives_one_row_per_non_blank_line(tmp_path):
    (tmp_path / "l.txt").write_text("first, line\n\n   \nsecond \"q\"\n  third\n", encoding="utf-8")

    result = run(tmp_path, "l.txt", "--split", "line")

    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "l.csv") == ["first, line", 'second "q"', "  third"]
    assert "l.csv: 3 rows," in result.stdout


def test_split_paragraph_keeps_inner_line_breaks(tmp_path):
    text = "\n\nstanza one\nline two\n\n\n \nstanza two\n\nlast\nlines\n"
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")

    assert run(tmp_path, "p.txt", "--split", "paragraph").returncode == 0
    assert rows(tmp_path / "p.csv") == ["stanza one\nline two", "stanza two", "last\nlines"]


def text_folder(tmp_path, files):
    """tmp_path/texts holding {name: text}."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for name, text in files.items():
        (texts / name).write_text(text, encoding="utf-8")
    return texts


def test_from_folder_makes_one_row_per_txt_file_sorted(tmp_path):
    text_folder(tmp_path, {"b.txt": "bee\n", "a.txt": "ay\nay\n", "notes.md": "not a text"})

    assert run(tmp_path, "--from_folder", "texts").returncode == 0
    assert rows(tmp_path / "texts.csv") == ["ay\nay\n", "bee\n"]

    assert run(tmp_path, "--from_folder", "texts", "--output", "all.csv", "--split", "line").returncode == 0
    assert rows(tmp_path / "all.csv") == ["ay", "ay", "bee"]


# ---------------------------------------------------------------- bad input


def test_bad_byte_names_file_and_offset_and_writes_nothing(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\xff")
    (tmp_path / "bad.csv").write_text("text\nold\n", encoding="utf-8")
    before = snapshot(tmp_path)

    result = run(tmp_path, "bad.txt")

    [line] = error_lines(result)
    assert "bad.txt" in line and "byte offset 3" in line and "--encoding" in line
    assert snapshot(tmp_path) == before  # old csv untouched, no temp files left

    # bad.csv holds other rows: replacing them takes --overwrite
    assert run(tmp_path, "bad.txt", "--encoding", "latin-1", "--overwrite").returncode == 0
    assert rows(tmp_path / "bad.csv") == ["abc\xff"]


def test_bad_byte_offset_counts_the_bom(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfab\x80")

    [line] = error_lines(run(tmp_path, "bom.txt"))
    assert "byte offset 5" in line


def test_missing_file_is_one_line_and_other_files_are_not_written(tmp_path):
    (tmp_path / "good.txt").write_text("fine", encoding="utf-8")

    [line] = error_lines(run(tmp_path, "good.txt", "missing.txt"))

    assert "missing.txt" in line and "no such file" in line
    assert not (tmp_path / "good.csv").exists()


def test_all_problems_are_reported_together(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    (tmp_path / "folder").mkdir()
    before = snapshot(tmp_path)

    lines = error_lines(run(tmp_path, "nope.txt", "empty.txt", "bad.txt", "folder"))

    assert len(lines) == 4
    assert "nope.txt" in lines[0]
    assert "empty.txt" in lines[1] and "empty" in lines[1]
    assert "bad.txt" in lines[2] and "byte offset 0" in lines[2]
    assert "folder" in lines[3] and "--from_folder folder" in lines[3]
    assert snapshot(tmp_path) == before


def test_defaults_missing_say_what_to_do(tmp_path):
    lines = error_lines(run(tmp_path))

    assert len(lines) == 2
    assert "train.txt" in lines[0] and "validation.txt" in lines[1]


@pytest.mark.parametrize("args, expected", [
    (["a.txt", "--encoding", "no-such-codec"], "--encoding 'no-such-codec'"),
    (["a.txt", "--encoding", "base64"], "--encoding 'base64'"),
    (["--from_folder", "missing"], "--from_folder missing: no such folder"),
    (["--from_folder", "empty_dir"], "--from_folder empty_dir: has no .txt files"),
    (["a.txt", "--output_dir", "nowhere"], "--output_dir nowhere"),
    (["a.txt", "--output", "x.csv"], "--output is only for --from_folder"),
    (["a.txt", "--from_folder", "empty_dir"], "not both"),
])
def test_bad_arguments_are_one_line_each(tmp_path, args, expected):
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")
    (tmp_path / "empty_dir").mkdir()
    before = snapshot(tmp_path)

    [line] = error_lines(run(tmp_path, *args))

    assert expected in line
    assert snapshot(tmp_path) == before


def test_input_is_never_overwritten(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("keep me", encoding="utf-8")
    before = snapshot(tmp_path), snapshot(texts)

    [line] = error_lines(run(tmp_path, "data.csv"))
    assert "data.csv" in line and "input" in line

    [line] = error_lines(run(tmp_path, "--from_folder", "texts", "--output", "texts/a.txt"))
    assert "a.txt" in line and "input" in line

    assert (snapshot(tmp_path), snapshot(texts)) == before


# ---------------------------------------------------------------- existing csv files


def test_an_existing_csv_with_other_content_is_not_overwritten(tmp_path):
    (tmp_path / "train.txt").write_text(POEM, encoding="utf-8")
    (tmp_path / "validation.txt").write_text(POEM, encoding="utf-8")
    (tmp_path / "train.csv").write_text("text\nmy own rows, made by hand\n", encoding="utf-8")
    before = snapshot(tmp_path)

    [line] = error_lines(run(tmp_path))

    assert line.startswith("texttocsv.py: error: train.csv")
    assert "--overwrite" in line and "--output_dir" in line
    assert snapshot(tmp_path) == before  # validation.csv not written either: nothing or everything

    result = run(tmp_path, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "train.csv") == [POEM] and rows(tmp_path / "validation.csv") == [POEM]


def test_rerunning_with_the_same_input_is_fine(tmp_path):
    """The README's first step reruns texttocsv.py over the csv files it made (the repository ships them)."""
    (tmp_path / "train.txt").write_text(POEM * 2, encoding="utf-8")
    (tmp_path / "validation.txt").write_text(POEM, encoding="utf-8")
    assert run(tmp_path).returncode == 0
    made = snapshot(tmp_path)

    again = run(tmp_path)

    assert again.returncode == 0, again.stderr
    assert snapshot(tmp_path) == made


def test_the_shipped_csv_files_are_what_texttocsv_makes(tmp_path):
    repo = SCRIPT.parent
    for name in ("train", "validation"):
        (tmp_path / f"{name}.txt").write_bytes((repo / f"{name}.txt").read_bytes())
        (tmp_path / f"{name}.csv").write_bytes((repo / f"{name}.csv").read_bytes())
    before = snapshot(tmp_path)

    result = run(tmp_path)

    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) == before


def test_an_existing_from_folder_csv_names_output_in_the_fix(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("ay\n", encoding="utf-8")
    (tmp_path / "texts.csv").write_text("text\nsomething else\n", encoding="utf-8")
    before = snapshot(tmp_path)

    [line] = error_lines(run(tmp_path, "--from_folder", "texts"))

    assert "texts.csv" in line and "--overwrite" in line and "--output " in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- --from_folder


def test_from_folder_takes_txt_files_of_any_case(tmp_path):
    text_folder(tmp_path, {"A.TXT": "upper\n", "b.Txt": "mixed\n", "c.txt": "lower\n"})

    result = run(tmp_path, "--from_folder", "texts")

    assert result.returncode == 0, result.stderr
    assert rows(tmp_path / "texts.csv") == ["upper\n", "mixed\n", "lower\n"]


def test_from_folder_sorts_names_as_a_person_reads_them(tmp_path):
    """a.txt before B.TXT, not after it as character codes would put it."""
    text_folder(tmp_path, {"B.TXT": "second\n", "a.txt": "first\n", "c.txt": "third\n"})
    assert run(tmp_path, "--from_folder", "texts").returncode == 0
    assert rows(tmp_path / "texts.csv") == ["first\n", "second\n", "third\n"]


@pytest.mark.parametrize("where", [["--output", "texts/all.csv"], ["--output", "texts/../texts/all.csv"],
                                   ["--output_dir", "texts"]])
def test_from_folder_does_not_write_into_the_folder_it_reads(tmp_path, where):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("ay\n", encoding="utf-8")
    before = snapshot(tmp_path), snapshot(texts)

    [line] = error_lines(run(tmp_path, "--from_folder", "texts", *where))

    assert "--from_folder texts" in line and "--output" in line
    assert (snapshot(tmp_path), snapshot(texts)) == before

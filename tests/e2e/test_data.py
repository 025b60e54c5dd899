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



# ---------------------------------------------------------------- --dataset_name, as upstream run_clm.py reads it


def named_dataset(tmp_path, dataset, *extra, evaluating=True, validation_only=False):
    """load_raw_texts' (raw texts, kinds) for --dataset_name `dataset`, as run_clm.py calls it."""
    from clmkit.args import parse_args
    from clmkit.data import load_raw_texts

    flags = ["--output_dir", tmp_path / "out", "--do_train", "--use_cpu", "--dataset_name", dataset, *extra]
    _, data_args, _, _ = parse_args(list(map(str, flags)))
    return load_raw_texts(data_args, cache_dir=str(tmp_path / "cache"), evaluating=evaluating,
                          validation_only=validation_only)


ROWS = [f"Row {i}: {'to be or not to be ' * (i % 3 + 1)}" for i in range(40)]


def write_jsonl(path, rows, column="text"):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: row}) + "\n" for row in rows), encoding="utf-8")


def test_a_dataset_without_a_validation_split_holds_out_its_first_rows(tmp_path):
    """Upstream's rule: the first --validation_split_percentage % of the train rows are evaluated on. A folder of
    data files, and one written by save_to_disk, read alike; a dataset's first column stands in for 'text'."""
    import datasets

    write_jsonl(tmp_path / "folder" / "train.jsonl", ROWS, column="content")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ROWS})}).save_to_disk(tmp_path / "saved")
    for dataset in (tmp_path / "folder", tmp_path / "saved"):
        raw, kinds = named_dataset(tmp_path, dataset, "--validation_split_percentage", 10)
        assert raw["validation"]["text"] == ROWS[:4] and raw["train"]["text"] == ROWS[4:], dataset
        assert kinds == {"train": "text", "validation": "text"}
        raw, _ = named_dataset(tmp_path, dataset, evaluating=False)  # nothing evaluated: every row trains
        assert raw["train"]["text"] == ROWS and "validation" not in raw


def test_a_dataset_with_a_validation_split_and_prompt_completion_columns(tmp_path):
    import json

    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, rows in (("train", ROWS[:30]), ("validation", ROWS[30:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"prompt": f"Q{i}", "completion": row}) + "\n"
                                                       for i, row in enumerate(rows)), encoding="utf-8")
    raw, kinds = named_dataset(tmp_path, folder)
    assert raw["validation"]["completion"] == ROWS[30:] and raw["train"]["completion"] == ROWS[:30]
    assert kinds == {"train": "prompt/completion", "validation": "prompt/completion"}


def test_a_run_on_a_dataset_folder_and_one_that_is_not_there(tiny_model, tmp_path):
    write_jsonl(tmp_path / "folder" / "train.jsonl", ROWS * 20)
    common = ["--model_name_or_path", tiny_model, "--do_train", "--do_eval", "--block_size", 64, "--max_steps", 2,
              "--use_cpu", "--report_to", "none"]
    result = python("run_clm.py", "--dataset_name", tmp_path / "folder", "--output_dir", tmp_path / "out", *common,
                    env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "evaluation sequences" in result.stdout and (tmp_path / "out" / "eval_results.json").is_file()

    missing = python("run_clm.py", "--dataset_name", "someone/not_cached", "--output_dir", tmp_path / "none", *common,
                     env={"HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    [line] = [line for line in missing.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: --dataset_name someone/not_cached: cannot be read (offline: HF_HUB_OFFLINE=1")
    assert not (tmp_path / "none").exists()


def test_chat_data_trains_on_the_assistants_turns(tiny_model, tmp_path):
    """A jsonl of conversations trains through the plain template (the tiny tokenizer has none), one conversation a
    sequence with only the replies in the loss; the loss falls, and the template is saved with the model."""
    import json

    from transformers import AutoTokenizer

    from conftest import logged_losses

    lines = [json.dumps({"messages": [{"role": "user", "content": f"Count to {n}."},
                                      {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]})
             for n in range(1, 9)]
    (tmp_path / "chat.jsonl").write_text("\n".join(lines * 30) + "\n", encoding="utf-8")
    _, tokens, sequences, eos = sequences_of(tmp_path / "s", tiny_model, tmp_path / "chat.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = sequences["train"][0]
    taught = [token for token, label in zip(first["input_ids"], first["labels"]) if label != -100]
    assert tokenizer.decode(taught) == "1<|endoftext|>\n"  # the reply and the end of its turn, nothing else
    assert len(sequences["train"]) == 240

    out = tmp_path / "out"
    result = python("run_clm.py", "--model_name_or_path", tiny_model, "--train_file", tmp_path / "chat.jsonl",
                    "--do_train", "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 8,
                    "--max_steps", 30, "--learning_rate", 3e-3, "--logging_steps", 5, "--use_cpu",
                    "--report_to", "none")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "a plain one is used and saved with the model" in result.stdout
    assert "240 train conversations, one a sequence" in result.stdout
    losses = logged_losses(out)
    assert losses[-1] < losses[0] - 1.0, losses
    from clmkit.chat import PLAIN_TEMPLATE

    assert AutoTokenizer.from_pretrained(out).chat_template == PLAIN_TEMPLATE


def test_a_streamed_dataset_evaluates_on_its_validation_split_alone(tmp_path):
    """--streaming trains on every train row as the stream gives it, so none can be held out: the evaluation text
    is the dataset's validation split, and a dataset without one is one line, not a leak of training rows."""
    import pytest

    from clmkit.errors import UsageError

    write_jsonl(tmp_path / "both" / "train.jsonl", ROWS[:30])
    write_jsonl(tmp_path / "both" / "validation.jsonl", ROWS[30:])
    raw, _ = named_dataset(tmp_path, tmp_path / "both", "--streaming", "--max_steps", 2, validation_only=True)
    assert list(raw) == ["validation"] and raw["validation"]["text"] == ROWS[30:]

    write_jsonl(tmp_path / "train_only" / "train.jsonl", ROWS)
    with pytest.raises(UsageError, match="no 'validation' split, and a stream .* holds nothing out"):
        named_dataset(tmp_path, tmp_path / "train_only", "--streaming", "--max_steps", 2, validation_only=True)

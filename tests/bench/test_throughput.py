"""bench/throughput.py runs real rows (a tiny GPT-2 on the CPU under the deepspeed launcher) into one table,
keeps going past a row that fails, and says why it failed in one line; bench/parity.py runs rows to their end and
compares their eval curves."""

import json

import psutil
import pytest

from conftest import python

from bench import throughput
from bench.rows import CONFIGS, Config
from clmkit.errors import UsageError


def test_table_of_real_runs_survives_a_failing_row(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(CONFIGS, "broken", Config("ds_config.json", ("--no_such_flag",)))
    prefix = tmp_path / "docs" / "benchmark"
    logs = tmp_path / "logs"
    code = throughput.main([
        "--tiny", str(tiny_model), "--use_cpu", "--block_size", "64", "--steps", "8",
        "--configs", "broken,zero1",  # classic is added, first
        "--train_file", str(corpus / "train.txt"), "--validation_file", str(corpus / "validation.txt"),
        "--work_dir", str(tmp_path / "work"), "--log_dir", str(logs), "--out_prefix", str(prefix)])
    assert code == 0

    assert (tmp_path / "docs" / "benchmark.md").is_file()
    with open(tmp_path / "docs" / "benchmark.json") as f:
        result = json.load(f)
    rows = {row["name"]: row for row in result["rows"]}
    assert [row["name"] for row in result["rows"]] == ["classic", "broken", "zero1"]
    assert result["complete"] is True
    assert result["header"]["steps"] == 8 and result["header"]["gpu"] == "none (CPU)"
    assert set(result["header"]["versions"]) == {"torch", "transformers", "deepspeed"}

    for name, sequences in (("classic", 16), ("zero1", 16)):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["tokens_per_s"] > 0 and row["s_per_step"] > 0
        assert row["peak_host_rss_gib"] > 0 and row["time_to_first_step_s"] > 0
        assert row["sequences_per_step"] == sequences  # micro-batch 8 x accumulation 2, from run_stats
        assert row["run_stats"]["steps_timed"] >= 1
    assert rows["classic"]["ratio_to_classic"] == 1.0
    assert rows["zero1"]["ratio_to_classic"] == pytest.approx(
        rows["zero1"]["tokens_per_s"] / rows["classic"]["tokens_per_s"])

    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["ratio_to_classic"] is None
    assert broken["error"].startswith("unknown flag --no_such_flag"), broken["error"]

    markdown = (tmp_path / "docs" / "benchmark.md").read_text()
    assert "GPU: none (CPU)" in markdown and "deepspeed " in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # the column names, then one line per row
    assert table[1].startswith("| classic | 1 | 16 | ") and table[1].endswith(" | 1.00 | — | — |")
    assert "| broken | 1 | 16 | failed: unknown flag --no_such_flag" in markdown

    assert "prepare: data tokenized" in (logs / "prepare.log").read_text()
    for name in rows:
        assert (logs / f"{name}.log").is_file()
        # The data was tokenized once beforehand, into the cache every row reads.
        assert "Tokenizing" not in (logs / f"{name}.log").read_text(), name
    assert not [child for child in psutil.Process().children(recursive=True) if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE]  # every run stopped, launcher and workers


def test_bad_arguments_are_one_line_each_and_list_shows_the_rows():
    result = python("bench/throughput.py", "--configs", "classic,fastest")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "fastest" in result.stderr and all(name in result.stderr for name in CONFIGS)

    result = python("bench/throughput.py", "--steps", 3, "--n_layer", 0)
    assert result.returncode == 2
    assert [line.split()[1] for line in result.stderr.strip().splitlines()] == ["--steps", "--n_layer"]

    result = python("bench/throughput.py", "--list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert list(lines) == list(CONFIGS)
    assert " none " in lines["no-offload-80g"] and " 16 GiB " in lines["classic"]


def test_parity_compares_eval_curves_from_the_same_init(tiny_model, corpus, tmp_path, monkeypatch):
    """bench/parity.py on the CPU: ds_config_zero1.json and the classic ZeRO-2 config from the same saved init and
    seed give the same eval curve (ZeRO-1 only moves gradients to CPU RAM once a step instead of after every
    micro-batch); the table, JSON and picture are written. The classic row runs once, alone; the zero1 run reads it
    back from its .json (--classic_from), as a later run of other rows would."""
    from bench import parity

    prefix = tmp_path / "docs" / "parity"
    common = ["--tiny", str(tiny_model), "--use_cpu", "--block_size", "64", "--steps", "12", "--eval_steps", "6",
              "--work_dir", str(tmp_path / "work")]
    assert parity.main([*common, "--configs", "classic", "--out_prefix", str(prefix)]) == 0
    with open(str(prefix) + ".json") as f:
        [classic] = json.load(f)["rows"]
    assert classic["name"] == "classic" and [step for step, _ in classic["eval"]] == [6, 12]
    assert classic["eval"][-1][1] < classic["eval"][0][1]  # it learns

    again = tmp_path / "docs" / "again"
    classic_log = tmp_path / "work" / "logs" / "parity-classic.log"
    written = classic_log.stat().st_mtime_ns
    on_disk_at_start = []  # the results are written before each row runs, so a time limit keeps the rows done
    real_run_row = parity.runner.run_row
    monkeypatch.setattr(parity.runner, "run_row", lambda name, *rest: on_disk_at_start.append(
        [row["name"] for row in json.loads((tmp_path / "docs" / "again.json").read_text())["rows"]])
        or real_run_row(name, *rest))
    code = parity.main([*common, "--configs", "zero1", "--out_prefix", str(again),
                        "--classic_from", str(prefix) + ".json"])
    assert code == 0 and on_disk_at_start == [["classic"]]
    with open(str(again) + ".json") as f:
        rows = {row["name"]: row for row in json.load(f)["rows"]}
    assert list(rows) == ["classic", "zero1"]
    assert rows["classic"]["eval"] == classic["eval"] and classic_log.stat().st_mtime_ns == written  # not run again
    assert [loss for _, loss in rows["zero1"]["eval"]] == pytest.approx([loss for _, loss in classic["eval"]],
                                                                        rel=1e-4)
    assert rows["zero1"]["within_tolerance"] is True
    text = (tmp_path / "docs" / "again.md").read_text()
    assert "| zero1 | " in text and "an earlier run's" in text
    assert (tmp_path / "docs" / "again.png").stat().st_size > 1000

    # A stored run of other settings is refused before anything runs.
    with pytest.raises(UsageError, match="--classic_from .*12 steps.*8 steps"):
        parity.main(["--tiny", str(tiny_model), "--use_cpu", "--block_size", "64", "--steps", "8",
                     "--configs", "bf16-adam8bit-sr", "--work_dir", str(tmp_path / "work"),
                     "--out_prefix", str(again), "--classic_from", str(prefix) + ".json"])

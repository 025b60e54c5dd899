"""bench/throughput.py runs real rows (a tiny GPT-2 on the CPU under the deepspeed launcher) into one table,
keeps going past a row that fails, and says why it failed in one line."""

import json
import os

import psutil
import pytest

from conftest import REPO, python

from bench import throughput


def test_table_of_real_runs_survives_a_failing_row(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(throughput.CONFIGS, "broken", throughput.Config("ds_config.json", ("--no_such_flag",)))
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
    assert broken["error"].startswith("unknown flag(s): --no_such_flag"), broken["error"]

    markdown = (tmp_path / "docs" / "benchmark.md").read_text()
    assert "GPU: none (CPU)" in markdown and "deepspeed " in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 3  # the column names, then one line per row
    assert table[1].startswith("| classic | 1 | 16 | ") and table[1].endswith(" | 1.00 | — |")
    assert "| broken | 1 | 16 | failed: unknown flag(s): --no_such_flag" in markdown

    for name in rows:
        assert (logs / f"{name}.log").is_file()
        # The data was tokenized once beforehand, into the cache every row reads.
        assert "Tokenizing" not in (logs / f"{name}.log").read_text(), name
    assert not [child for child in psutil.Process().children(recursive=True) if child.is_running()
                and child.status() != psutil.STATUS_ZOMBIE]  # every run stopped, launcher and workers


OOM_LOG = """\
[2026-01-01 10:00:00,000] [INFO] [launch.py:256:main] process 1234 spawned with command: [...]
Traceback (most recent call last):
  File "run_clm.py", line 150, in <module>
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.53 GiB. GPU 0 has a total capacity of 79.19 GiB \
of which 60.10 GiB is free. Including non-PyTorch memory, this process has 16.00 GiB memory in use.
[2026-01-01 10:00:09,000] [INFO] [launch.py:253:sigkill_handler] Killing subprocess 1234
[2026-01-01 10:00:09,000] [ERROR] [launch.py:259:sigkill_handler] ['python', '-u', 'run_clm.py'] exits with \
return code = 1
"""


def test_failure_reason_finds_the_meaningful_line():
    reason = throughput.failure_reason
    assert reason(OOM_LOG, 1) == "CUDA out of memory. Tried to allocate 1.53 GiB"
    crash = "noise\nTraceback (most recent call last):\nRuntimeError: NCCL timeout\nsubprocess.CalledProcessError: x\n"
    assert reason(crash, 1) == "RuntimeError: NCCL timeout"
    assert reason("error: --train_file x.csv: no such file\nerror: --fp16: no GPU\n", 2) == \
        "--train_file x.csv: no such file; --fp16: no GPU"
    killed = "[2026-01-01 10:00:00,000] [ERROR] [launch.py:259:sigkill_handler] [...] exits with return code = -9\n"
    assert reason(killed, 247) == "killed by SIGKILL (host out of memory?)"
    assert reason("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes", 1) \
        .startswith("host out of memory: ")
    assert reason("something odd\n", 3) == "exit code 3: something odd"


def test_rows_are_what_the_issue_asks_for():
    configs = throughput.CONFIGS
    assert list(configs)[:2] == ["classic", "shipped"]
    # classic is the original recipe, frozen: ZeRO-2, optimizer offloaded, fp16, 8 x 2, weights loaded in fp32
    assert configs["classic"] == throughput.Config("bench/ds_classic.json", (
        "--fp16", "--dtype", "float32", "--no_fused_gelu", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "2"), env={"PYTORCH_CUDA_ALLOC_CONF": ""})
    with open(os.path.join(REPO, "bench", "ds_classic.json")) as f:
        classic = json.load(f)
    assert classic["zero_optimization"]["stage"] == 2
    assert classic["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    # shipped: today's ds_config.json with the classic command's flags
    assert configs["shipped"] == throughput.Config("ds_config.json", configs["classic"].flags[:1]
                                                   + configs["classic"].flags[4:])
    assert configs["no-offload-80g"].gpu_memory_gib is None
    # ds_config_zero1.json is the shipped config but for the stage
    with open(os.path.join(REPO, "ds_config.json")) as f:
        shipped = json.load(f)
    with open(os.path.join(REPO, "ds_config_zero1.json")) as f:
        zero1 = json.load(f)
    assert (zero1["zero_optimization"].pop("stage"), shipped["zero_optimization"].pop("stage")) == (1, 2)
    assert zero1 == shipped
    for name, config in configs.items():
        if config.ds_config:
            with open(os.path.join(REPO, config.ds_config)) as f:
                json.load(f)
        if config.scales:  # a multi-GPU row is compared with the same configuration on one GPU
            assert config.gpus > 1 and configs[config.scales].flags == config.flags
    # The no-offload config is the classic one, "auto" values and all, without the optimizer offload.
    with open(os.path.join(REPO, "bench", "ds_zero2_no_offload.json")) as f:
        no_offload = json.load(f)
    del classic["zero_optimization"]["offload_optimizer"]
    assert no_offload == classic


def test_bad_arguments_are_one_line_each_and_list_shows_the_rows():
    result = python("bench/throughput.py", "--configs", "classic,fastest")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "fastest" in result.stderr and all(name in result.stderr for name in throughput.CONFIGS)

    result = python("bench/throughput.py", "--steps", 3, "--n_layer", 0)
    assert result.returncode == 2
    assert [line.split()[1] for line in result.stderr.strip().splitlines()] == ["--steps", "--n_layer"]

    result = python("bench/throughput.py", "--list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert list(lines) == list(throughput.CONFIGS)
    assert " none " in lines["no-offload-80g"] and " 16 GiB " in lines["classic"]


def test_parity_compares_eval_curves_from_the_same_init(tiny_model, corpus, tmp_path):
    """bench/parity.py on the CPU: ds_config_zero1.json and the classic ZeRO-2 config from the same saved init and
    seed give the same eval curve (ZeRO-1 only moves gradients to CPU RAM once a step instead of after every
    micro-batch); the table, JSON and picture are written."""
    from bench import parity

    prefix = tmp_path / "docs" / "parity"
    code = parity.main(["--tiny", str(tiny_model), "--use_cpu", "--block_size", "64", "--steps", "12",
                        "--eval_steps", "6", "--configs", "zero1", "--work_dir", str(tmp_path / "work"),
                        "--out_prefix", str(prefix)])
    assert code == 0
    with open(str(prefix) + ".json") as f:
        rows = {row["name"]: row for row in json.load(f)["rows"]}
    assert list(rows) == ["classic", "zero1"]
    assert [step for step, _ in rows["classic"]["eval"]] == [6, 12]
    assert rows["classic"]["eval"][-1][1] < rows["classic"]["eval"][0][1]  # it learns
    assert [loss for _, loss in rows["zero1"]["eval"]] == pytest.approx([loss for _, loss in rows["classic"]["eval"]],
                                                                        rel=1e-4)
    assert rows["zero1"]["within_tolerance"] is True
    assert "| zero1 | " in (tmp_path / "docs" / "parity.md").read_text()
    assert (tmp_path / "docs" / "parity.png").stat().st_size > 1000

"""Why a failed row failed (bench/failures.py), and the table's arithmetic and cells (bench/report.py)."""

import pytest

from bench import report
from bench.failures import failure_reason

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
    reason = failure_reason
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


def test_failure_reason_reads_through_colours_and_progress_bars():
    log = "\x1b[31mValueError: bad shape\x1b[0m\nstep 1/8\rstep 2/8\r\n"
    assert failure_reason(log, 1) == "ValueError: bad shape"
    assert failure_reason("", -15) == "killed by SIGTERM"
    assert failure_reason("", 1) == "exit code 1"
    assert len(failure_reason("RuntimeError: " + "x" * 500, 1)) == 200


def ok_row(name, tokens_per_s, gpus=1, scales=None):
    return {"name": name, "status": "ok", "error": None, "gpu_memory_gib": 16, "gpus": gpus, "scales": scales,
            "tokens_per_s": tokens_per_s, "s_per_step": 16384 / tokens_per_s, "sequences_per_step": 16,
            "peak_gpu_allocated_gib": 10.25, "peak_gpu_reserved_gib": 12.5, "peak_host_rss_gib": 40.0,
            "time_to_first_step_s": 71.3}


def test_ratios_against_classic_and_against_one_gpu():
    rows = [ok_row("classic", 8000.0), ok_row("shipped", 10000.0),
            {"name": "broken", "status": "failed", "error": "exit code 1", "gpu_memory_gib": None, "gpus": 1},
            ok_row("shipped-2gpu", 18000.0, gpus=2, scales="shipped"),
            ok_row("zero1-2gpu", 17000.0, gpus=2, scales="zero1")]  # zero1 did not run: nothing to scale against
    report.add_ratios(rows)
    assert [row["ratio_to_classic"] for row in rows] == [1.0, 1.25, None, 2.25, 2.125]
    assert [row["scaling_efficiency"] for row in rows] == [None, None, None, 0.9, None]

    rows[0]["status"] = "failed"  # no classic: no ratios at all
    report.add_ratios(rows)
    assert [row["ratio_to_classic"] for row in rows] == [None] * 5


def test_markdown_cells():
    rows = [ok_row("classic", 8000.0),
            {"name": "broken", "status": "failed", "error": "a | b", "gpu_memory_gib": None, "gpus": 1}]
    report.add_ratios(rows)
    header = {"gpu": "none (CPU)", "gpu_memory_gib": 16, "model": "tiny model m", "n_layer": None, "block_size": 64,
              "steps": 8, "warmup_steps_not_timed": 3, "date": "2026-01-01 10:00 UTC",
              "versions": {"torch": "2", "transformers": "4", "deepspeed": "0.1"}}
    text = report.markdown(header, rows, complete=False)
    assert report.header_line(header) in text and "(incomplete:" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[0].count(" | ") == len(report.COLUMNS) - 1
    assert table[1] == "| classic | 1 | 16 | 8,000 | 8,000 | 2.05 | 16 | 10.2 | 12.5 | 40.0 | 71 | 1.00 | — | — |"
    assert table[2].startswith("| broken | 1 | none | failed: a \\| b | — |")
    assert report.number(None) == "—" and report.number(1234.5, 2) == "1,234" and report.number(3.14159) == "3.1"


def test_parity_table_compares_final_eval_losses_with_classic():
    rows = [{"name": "classic", "status": "ok", "eval": [(6, 3.0), (12, 2.0)]},
            {"name": "fast", "status": "ok", "eval": [(6, 3.1), (12, 2.018)]},
            {"name": "faster", "status": "ok", "eval": [(6, 3.1), (12, 2.1)]},
            {"name": "broken", "status": "failed", "error": "exit code 1"}]
    table = report.parity_table(rows).splitlines()
    assert rows[1]["relative_difference"] == pytest.approx(0.009) and rows[1]["within_tolerance"] is True
    assert rows[2]["within_tolerance"] is False
    assert table[0] == "| configuration | final eval loss | vs classic | within 1% |"
    assert table[2:] == ["| classic | 2.0000 | +0.00% | yes |", "| fast | 2.0180 | +0.90% | yes |",
                         "| faster | 2.1000 | +5.00% | no |", "| broken | failed: exit code 1 | | |"]


def test_the_profiled_busy_share_is_read_from_the_profile():
    """The benchmark's "GPU busy" column is the share profile.md states: two overlapping kernels cover 0.45 s of a
    0.5 s step."""
    import types

    import torch

    from bench.runner import busy_share
    from clmkit import profiling

    def kernel(start, end):
        return types.SimpleNamespace(device_type=torch.autograd.DeviceType.CUDA, name="sm90_gemm", key="sm90_gemm",
                                     time_range=types.SimpleNamespace(start=start, end=end,
                                                                      elapsed_us=lambda: end - start))

    text = profiling.summarize([kernel(0, 300_000), kernel(200_000, 450_000)], 0.5, 1, 1)
    assert busy_share(text) == 0.9
    assert busy_share("- no GPU kernels ran (a CPU run)") is None

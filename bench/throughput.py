#!/usr/bin/env python
"""Speed inside 16 GB: tokens/s of training configurations beside the classic recipe, on one machine, in one table.

Every row is one real run of the project's training path (`deepspeed --num_gpus=N run_clm.py ...`, its own
process tree) on a GPT-2 XL-sized model with random weights, for --steps optimizer steps, with the GPU memory
capped (CLM_GPU_MEMORY_GIB). The classic recipe always runs first; the other rows are compared with it.

    python bench/throughput.py                               # every row: 48 layers, 16 GiB, 20 steps
    python bench/throughput.py --n_layer 8 --steps 10        # quick exploration
    python bench/throughput.py --configs classic-bf16        # classic plus the rows named
    python bench/throughput.py --list                        # the rows and what each one changes

Writes docs/benchmark.md and docs/benchmark.json (--out_prefix), rewritten after every row; each row's output
goes to <work_dir>/<name>.log (--log_dir). Exit code 0 when the first row (classic, unless --without_classic) ran,
1 when it failed, 2 for bad arguments. See bench/README.md for the columns and how to add a row.
"""

import argparse
import datetime
import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import report, runner  # noqa: E402
from bench.report import WARMUP_STEPS  # noqa: E402
from bench.rows import CONFIGS, selected_rows  # noqa: E402
from clmkit.errors import UsageError, raise_if_any, run_cli  # noqa: E402


class Interrupted(Exception):
    """SIGTERM or Ctrl-C while a row runs: stop it, keep what was measured."""


# ---------------------------------------------------------------- command line


def parse(argv):
    parser = argparse.ArgumentParser(
        description="Tokens/s of training configurations beside the classic recipe (ZeRO-2, optimizer offloaded, "
                    "fp16, micro-batch 8 x accumulation 2), GPT-2 XL-sized, with the GPU memory capped.",
        epilog="Every row is one `deepspeed run_clm.py` run; the classic row always runs, first. "
               "Results: OUT_PREFIX.md and OUT_PREFIX.json, rewritten after every row.")
    parser.add_argument("--configs", default=None,
                        help="comma-separated rows to run (classic is always added); default: all. See --list.")
    parser.add_argument("--list", action="store_true", help="print the rows and what each one changes, then exit")
    parser.add_argument("--without_classic", action="store_true",
                        help="leave the classic row out: the rows named are compared with each other only")
    parser.add_argument("--steps", type=int, default=20,
                        help=f"optimizer steps per row (default 20); the first {WARMUP_STEPS} step times are left "
                             "out of the median")
    parser.add_argument("--n_layer", type=int, default=48,
                        help="layers of the GPT-2 XL-sized model (default 48, GPT-2 XL's); fewer for a quick look")
    parser.add_argument("--gpu_memory_gib", type=float, default=16,
                        help="GPU memory cap per process in GiB (CLM_GPU_MEMORY_GIB; default 16); rows with their "
                             "own cap, or none, keep it")
    parser.add_argument("--num_gpus", type=int, default=1, help="GPUs per run (deepspeed --num_gpus; default 1)")
    parser.add_argument("--block_size", type=int, default=1024, help="tokens per sequence (default 1024)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one row may run before it is stopped and shown as failed (default 1800)")
    parser.add_argument("--work_dir", default="/tmp/clm-bench",
                        help="tokenizer, dataset cache and run folders (default /tmp/clm-bench)")
    parser.add_argument("--log_dir", default=None, help="where <name>.log of each row goes (default: --work_dir)")
    parser.add_argument("--out_prefix", default="docs/benchmark",
                        help="write OUT_PREFIX.md and OUT_PREFIX.json (default docs/benchmark)")
    parser.add_argument("--train_file", default=os.path.join(REPO, "train.csv"),
                        help="training text (default: the repo's Shakespeare train.csv, made by texttocsv.py "
                             "if missing)")
    parser.add_argument("--validation_file", default=os.path.join(REPO, "validation.csv"),
                        help="validation text, same format (default: the repo's validation.csv)")
    parser.add_argument("--let_runs_finish", action="store_true",
                        help="let each run save its final model and exit by itself; by default a run is stopped "
                             "once it has written run_stats.json (the save is not part of the measurement)")
    parser.add_argument("--tiny", metavar="MODEL_DIR", default=None,
                        help="for tests: train this small model folder (with its tokenizer) instead of the "
                             "GPT-2 XL-sized one; --n_layer is ignored")
    parser.add_argument("--use_cpu", action="store_true",
                        help="for tests: train on the CPU (run_clm.py --use_cpu); --fp16 rows run in bf16")
    parser.error = _one_line_error
    return parser.parse_args(argv)


def _one_line_error(message):
    raise UsageError(f"{message}; see `python bench/throughput.py --help`")


def argument_problems(args):
    problems = []
    if args.steps < WARMUP_STEPS + 2:
        problems.append(f"--steps {args.steps}: at least {WARMUP_STEPS + 2} are needed (the first {WARMUP_STEPS} "
                        "step times are left out of the median)")
    if args.n_layer < 1:
        problems.append(f"--n_layer {args.n_layer}: must be at least 1")
    if not args.gpu_memory_gib > 0:
        problems.append(f"--gpu_memory_gib {args.gpu_memory_gib:g}: must be more than 0")
    if args.num_gpus < 1:
        problems.append(f"--num_gpus {args.num_gpus}: must be at least 1")
    if not 2 <= args.block_size <= 1024:
        problems.append(f"--block_size {args.block_size}: must be 2 to 1024 (GPT-2's context)")
    if not args.timeout > 0:
        problems.append(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    if args.tiny and not os.path.isfile(os.path.join(args.tiny, "config.json")):
        problems.append(f"--tiny {args.tiny}: no model folder there (no config.json)")
    default_data = os.path.abspath(args.train_file) == os.path.join(REPO, "train.csv")
    for flag, path in (("--train_file", args.train_file), ("--validation_file", args.validation_file)):
        if not os.path.isfile(path) and not default_data:
            problems.append(f"{flag} {path}: no such file")
    if not runner.deepspeed_launcher():
        problems.append("the deepspeed launcher is not installed here; pip install -r requirements.txt")
    for flag, folder in (("--work_dir", args.work_dir), ("--log_dir", args.log_dir),
                         ("--out_prefix", os.path.dirname(os.path.abspath(args.out_prefix)))):
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as err:
                problems.append(f"{flag} {folder}: cannot make that folder ({err.strerror})")
    return problems


def list_rows(args):
    print(f"{'name':<16} {'DeepSpeed config':<32} {'GPU cap':<8} run_clm.py flags [env]")
    for name, config in CONFIGS.items():
        cap = config.cap(args.gpu_memory_gib)
        cap = "none" if cap is None else f"{cap:g} GiB"
        env = " " + " ".join(f"{k}={v}" for k, v in config.env.items()) if config.env else ""
        print(f"{name:<16} {config.ds_config or '(none)':<32} {cap:<8} {' '.join(config.flags)}{env}")


def settings_of(args):
    """The runner's settings from the command line; paths made absolute, as the runs start in the repo."""
    absolute = {name: os.path.abspath(getattr(args, name)) if getattr(args, name) else None
                for name in ("train_file", "validation_file", "work_dir", "log_dir", "tiny")}
    return runner.Settings(
        work_dir=absolute["work_dir"], log_dir=absolute["log_dir"] or absolute["work_dir"],
        train_file=absolute["train_file"], validation_file=absolute["validation_file"], steps=args.steps,
        block_size=args.block_size, gpu_memory_gib=args.gpu_memory_gib, num_gpus=args.num_gpus,
        timeout=args.timeout, n_layer=args.n_layer, tiny=absolute["tiny"], use_cpu=args.use_cpu,
        stop_at_stats=not args.let_runs_finish)


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse(argv)
    if args.list:
        list_rows(args)
        return 0
    names, problems = selected_rows(args.configs, with_classic=not args.without_classic)
    raise_if_any(problems + argument_problems(args))
    settings = settings_of(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    cap = f"GPU memory cap {args.gpu_memory_gib:g} GiB"
    model = f"tiny model {settings.tiny}" if settings.tiny else f"n_layer {args.n_layer}"
    print(f"benchmark: {len(names)} configurations ({', '.join(names)}), {model}, {args.steps} steps, {cap}; "
          f"logs in {settings.log_dir}", flush=True)
    prepared = runner.prepare(settings, names)

    rows, text = [], ""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        for index, name in enumerate(names, 1):
            print(f"[{index}/{len(names)}] {name}: running (log: {os.path.join(settings.log_dir, name + '.log')})",
                  flush=True)
            row = report.table_row(runner.run_row(name, settings, prepared), settings)
            rows.append(row)
            if row["status"] == "ok":
                print(f"[{index}/{len(names)}] {name}: {row['tokens_per_s']:,.1f} tokens/s, "
                      f"{row['s_per_step']:.3g} s/step ({row['wall_s']:.0f} s)", flush=True)
            else:
                print(f"[{index}/{len(names)}] {name}: FAILED: {row['error']} ({row['wall_s']:.0f} s)", flush=True)
            text = report.write_results(args.out_prefix, report.make_header(settings, rows, started), rows,
                                        len(rows) == len(names))
    except (Interrupted, KeyboardInterrupt):
        report.write_results(args.out_prefix, report.make_header(settings, rows, started), rows, complete=False)
        print(f"benchmark: interrupted; the rows measured so far are in {args.out_prefix}.md", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(text, end="")
    print(f"\nwrote {args.out_prefix}.md and {args.out_prefix}.json")
    return 0 if rows[0]["status"] == "ok" else 1


def _raise_interrupted(signum, frame):
    raise Interrupted()


def cli(argv=None):
    sys.exit(main(argv))


if __name__ == "__main__":
    run_cli(cli)

#!/usr/bin/env python
"""Does a faster mode learn as well as the classic recipe? Same saved random init, same seed and data order,
N steps of Shakespeare each, eval loss on validation.csv every K steps; one picture of both curves.

    python bench/parity.py --configs bf16-adam8bit-sr --steps 300 --n_layer 48 --out_prefix docs/parity

Rows are throughput.py's (CONFIGS), run to the end with evaluation on. Writes OUT_PREFIX.md, .json and .png:
the final eval loss of every row and its relative difference to the classic one (the issues ask for 1% or less).
"""

import argparse
import datetime
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import report, runner  # noqa: E402
from bench.rows import selected_rows  # noqa: E402
from clmkit.errors import raise_if_any, run_cli  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="bf16-adam8bit-sr",
                        help="comma-separated rows of bench/throughput.py to compare with classic (always run first)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    parser.add_argument("--eval_steps", type=int, default=50, help="evaluate every this many steps (default 50)")
    parser.add_argument("--n_layer", type=int, default=48, help="layers of the XL-wide model (default 48)")
    parser.add_argument("--gpu_memory_gib", type=float, default=16, help="GPU memory cap per process (default 16)")
    parser.add_argument("--seed", type=int, default=42, help="data order and dropout seed, the same for every run")
    parser.add_argument("--work_dir", default="/tmp/clm-parity", help="model, cache and run folders")
    parser.add_argument("--out_prefix", default="docs/parity", help="write OUT_PREFIX.md, .json and .png")
    parser.add_argument("--tiny", metavar="MODEL_DIR", default=None, help="for tests: this small model instead")
    parser.add_argument("--use_cpu", action="store_true", help="for tests: train on the CPU")
    parser.add_argument("--block_size", type=int, default=1024, help="tokens per sequence (default 1024)")
    parser.add_argument("--classic_from", metavar="JSON", default=None,
                        help="take the classic row from an earlier parity .json of the same model, steps, seed, "
                             "block and cap (its title must match) instead of running it again")
    return parser.parse_args(argv)


def stored_classic(path, first_title_line):
    """The classic row of an earlier parity run with the same settings, or a problem naming what differs."""
    try:
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
        title, row = earlier["title"], next(r for r in earlier["rows"] if r["name"] == "classic")
    except (OSError, ValueError, KeyError, StopIteration) as err:
        return None, [f"--classic_from {path}: not a parity .json with a classic row ({err})"]
    if title.splitlines()[0] != first_title_line:
        return None, [f"--classic_from {path}: its run was '{title.splitlines()[0]}', this one is "
                      f"'{first_title_line}'; run the classic row again (drop --classic_from)"]
    if row.get("status") != "ok":
        return None, [f"--classic_from {path}: its classic row did not finish ({row.get('status')})"]
    return dict(row, name="classic", note=f"from {os.path.basename(path)}, {earlier.get('when', '')}"), []


def settings_of(args):
    """The runner's settings: one GPU, an hour a run, every run to its end with evaluation, the repo's text."""
    work_dir = os.path.abspath(args.work_dir)
    eval_flags = ("--do_eval", "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps),
                  "--per_device_eval_batch_size", "4", "--seed", str(args.seed), "--data_seed", str(args.seed))
    return runner.Settings(
        work_dir=work_dir, log_dir=os.path.join(work_dir, "logs"), train_file=os.path.join(REPO, "train.csv"),
        validation_file=os.path.join(REPO, "validation.csv"), steps=args.steps, block_size=args.block_size,
        gpu_memory_gib=args.gpu_memory_gib, num_gpus=1, timeout=3600, n_layer=args.n_layer,
        tiny=os.path.abspath(args.tiny) if args.tiny else None, use_cpu=args.use_cpu, stop_at_stats=False,
        extra_flags=eval_flags, log_prefix="parity-")


def main(argv=None):
    args = parse(argv)
    names, problems = selected_rows(args.configs)
    settings = settings_of(args)
    model = f"tiny model {settings.tiny}" if settings.tiny else f"XL-wide GPT-2, {args.n_layer} layers, random init"
    first_line = (f"{model}, block {args.block_size}, {args.steps} steps, seed {args.seed}, "
                  f"cap {args.gpu_memory_gib:g} GiB")
    rows = []
    if args.classic_from:
        classic, more = stored_classic(args.classic_from, first_line)
        problems += more
        rows, names = [classic], names[1:]
    raise_if_any(problems)
    prepared = runner.prepare(settings, names)
    text = write_results(args.out_prefix, first_line, rows) if rows else ""
    for name in names:
        print(f"parity: {name}: {args.steps} steps, eval every {args.eval_steps}", flush=True)
        rows.append(report.parity_row(runner.run_row(name, settings, prepared)))
        print(f"parity: {name}: {rows[-1]['status']}", flush=True)
        text = write_results(args.out_prefix, first_line, rows)  # after every row: a time limit keeps those done
    print(text)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


def write_results(out_prefix, first_line, rows):
    """OUT_PREFIX.md, .json and .png of the rows so far; returns the .md's text."""
    title = first_line + "\n" + ", ".join(f"{k} {v}" for k, v in report.versions().items())
    table = report.parity_table(rows)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = f"\nThe classic row is an earlier run's ({rows[0]['note']}).\n" if rows[0].get("note") else ""
    heading = f"# Quality parity against the classic recipe\n\n{title.replace(chr(10), ', ')} · {when}\n"
    text = f"{heading}{source}\n{table}\n"
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    with open(out_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    with open(out_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"title": title, "when": when, "rows": rows}, f, indent=1)
    report.plot_curves(rows, out_prefix + ".png", title)
    return text


if __name__ == "__main__":
    run_cli(lambda argv: sys.exit(main(argv)))

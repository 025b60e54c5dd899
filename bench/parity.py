#!/usr/bin/env python
"""Does a faster mode learn as well as the classic recipe? Same saved random init, same seed and data order,
N steps of Shakespeare each, eval loss on validation.csv every K steps; one picture of both curves.

    python bench/parity.py --configs bf16-adam8bit-sr --steps 300 --n_layer 48 --out_prefix docs/parity

Rows are throughput.py's (CONFIGS), run to the end with evaluation on. Writes OUT_PREFIX.md, .json and .png:
the final eval loss of every row and its relative difference to the classic one (the issue asks for 2% or less).
"""

import argparse
import datetime
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import throughput  # noqa: E402
from clmkit.errors import raise_if_any, run_cli  # noqa: E402

TOLERANCE = 0.02  # the bar: final eval loss within 2% of the classic recipe's


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
    return parser.parse_args(argv)


def run_to_end(name, args, common, log_dir):
    """One row with evaluation, to its end; its log history (train and eval losses by step)."""
    config = throughput.CONFIGS[name]
    out_dir = os.path.join(args.work_dir, "runs", name)
    shutil.rmtree(out_dir, ignore_errors=True)
    command = throughput.row_command(config, args, common, out_dir)
    command += ["--do_eval", "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps),
                "--per_device_eval_batch_size", "4", "--seed", str(args.seed), "--data_seed", str(args.seed)]
    log_path = os.path.join(log_dir, f"parity-{name}.log")
    outcome = throughput.execute(command, throughput.row_env(config, args), log_path, os.path.join(out_dir, "none"),
                                 timeout=args.timeout, stop_at_stats=False)
    state_path = os.path.join(out_dir, "trainer_state.json")
    if not os.path.isfile(state_path):
        reason = throughput.failure_reason(throughput.read_tail(log_path), outcome["exit_code"])
        return {"name": name, "status": "failed", "error": reason, "log": log_path}
    with open(state_path, encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    shutil.rmtree(out_dir, ignore_errors=True)  # the curves are what we keep, not GiBs of weights
    return {"name": name, "status": "ok", "log": log_path, "wall_s": outcome["wall_s"],
            "train": [(h["step"], h["loss"]) for h in history if "loss" in h],
            "eval": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]}


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        if row["status"] != "ok":
            continue
        line, = ax.plot(*zip(*row["train"]), alpha=0.5, label=f"{row['name']} train")
        ax.plot(*zip(*row["eval"]), "o-", color=line.get_color(), label=f"{row['name']} eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(rows, args):
    classic = rows[0]
    base = classic["eval"][-1][1] if classic["status"] == "ok" and classic["eval"] else None
    lines = ["| configuration | final eval loss | vs classic | within 2% |", "|---|---:|---:|---|"]
    for row in rows:
        if row["status"] != "ok" or not row["eval"]:
            lines.append(f"| {row['name']} | failed: {row.get('error')} | | |")
            continue
        final = row["eval"][-1][1]
        row["final_eval_loss"] = final
        if base:
            row["relative_difference"] = (final - base) / base
            row["within_tolerance"] = abs(row["relative_difference"]) <= TOLERANCE
            lines.append(f"| {row['name']} | {final:.4f} | {row['relative_difference']:+.2%} | "
                         f"{'yes' if row['within_tolerance'] else 'no'} |")
        else:
            lines.append(f"| {row['name']} | {final:.4f} | | |")
    return "\n".join(lines)


def main(argv=None):
    args = parse(argv)
    names, problems = throughput.selected_rows(args.configs)
    raise_if_any(problems)
    for name in ("work_dir", "tiny"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    # what throughput.py's helpers read from their own arguments
    args.num_gpus, args.timeout, args.let_runs_finish = 1, 3600, True
    args.train_file = os.path.join(throughput.REPO, "train.csv")
    args.validation_file = os.path.join(throughput.REPO, "validation.csv")
    log_dir = os.path.join(args.work_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    cache_dir = os.path.join(args.work_dir, "hf-cache")
    throughput.prepare_data(args)
    model_dir = throughput.prepare_model(args, log_dir)
    throughput.prepare_runs(args, names, model_dir, cache_dir, log_dir)
    common = throughput.common_flags(args, model_dir, cache_dir)
    rows = []
    for name in names:
        print(f"parity: {name}: {args.steps} steps, eval every {args.eval_steps}", flush=True)
        rows.append(run_to_end(name, args, common, log_dir))
        print(f"parity: {name}: {rows[-1]['status']}", flush=True)
    model = f"tiny model {args.tiny}" if args.tiny else f"XL-wide GPT-2, {args.n_layer} layers, random init"
    title = (f"{model}, block {args.block_size}, {args.steps} steps, seed {args.seed}, "
             f"cap {args.gpu_memory_gib:g} GiB\n"
             + ", ".join(f"{k} {v}" for k, v in throughput.versions().items()))
    table = report(rows, args)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# Quality parity against the classic recipe\n\n{title.replace(chr(10), ', ')} · {when}\n\n{table}\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out_prefix)), exist_ok=True)
    with open(args.out_prefix + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    with open(args.out_prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"title": title, "when": when, "rows": rows}, f, indent=1)
    plot(rows, args.out_prefix + ".png", title)
    print(text)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    run_cli(lambda argv: sys.exit(main(argv)))

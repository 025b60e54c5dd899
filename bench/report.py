"""What the benchmarks write: a table row from a run, the ratios between rows, the header, and the markdown and
json files (throughput.py); the eval-loss table and the curves (parity.py)."""

import json
import shlex
from importlib import metadata

from bench.rows import CLASSIC, CONFIGS
from clmkit.machine import GiB

WARMUP_STEPS = 3  # step times RunStatsCallback leaves out of its median (clmkit/stats.py)
PARITY_TOLERANCE = 0.01  # the issues' bar: final eval loss within 1% of the classic recipe's
COLUMNS = ["configuration", "GPUs", "cap GiB", "tokens/s", "tokens/s per GPU", "s/step", "seqs/step",
           "GPU alloc GiB", "GPU reserved GiB", "host RAM GiB", "launch to step 1 (s)", "vs classic",
           "per GPU vs 1 GPU", "GPU busy (profiled)"]


def versions():
    found = {}
    for package in ("torch", "transformers", "deepspeed"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# ---------------------------------------------------------------- throughput: rows


def table_row(run, settings):
    """The json row of one run, failed or not."""
    config = CONFIGS[run.name]
    row = {"name": run.name, "status": "failed", "error": None, "gpu_memory_gib": config.cap(settings.gpu_memory_gib),
           "gpus": config.gpu_count(settings.num_gpus), "scales": config.scales, "ds_config": config.ds_config,
           "flags": list(config.flags), "env": config.env or {}, "log": run.log_path,
           "command": shlex.join(run.command),
           "wall_s": run.wall_s, "exit_code": run.exit_code, "stopped_after_stats": run.stopped_after_stats,
           "run_stats": run.stats, "tree_peak_rss_gib": run.tree_peak_rss / GiB,
           "gpu_busy": run.gpu_busy}
    stats = run.stats
    if stats and stats.get("tokens_per_s"):
        row.update(status="ok", **measured(stats, run.tree_peak_rss, settings.block_size))
    elif stats:
        row["error"] = f"run_stats.json has no tokens/s ({stats.get('steps_timed')} step times measured)"
    elif run.timed_out:
        row["error"] = f"timed out after {settings.timeout:g} s (--timeout)"
    else:
        row["error"] = run.failure_reason()
    return row


def measured(stats, tree_peak_rss, block_size):
    return {
        "tokens_per_s": stats["tokens_per_s"],
        "s_per_step": stats["s_per_step"],
        "sequences_per_step": round(stats["tokens_per_step"] / block_size),
        "peak_gpu_allocated_gib": stats.get("peak_gpu_allocated_gib"),
        "peak_gpu_reserved_gib": stats.get("peak_gpu_reserved_gib"),
        # Both are samples of the same whole-tree peak: run_stats' from inside, the runner's from outside every 0.5 s.
        "peak_host_rss_gib": max(stats.get("peak_host_rss_gib") or 0, tree_peak_rss / GiB),
        "time_to_first_step_s": stats.get("time_to_first_step_s"),
        "overflow_skipped_steps": stats.get("overflow_skipped_steps"),  # the fp16 mode's loss scale at work
    }


def add_ratios(rows):
    classic = next((row for row in rows if row["name"] == CLASSIC and row["status"] == "ok"), None)
    for row in rows:
        row["ratio_to_classic"] = row["tokens_per_s"] / classic["tokens_per_s"] \
            if classic and row["status"] == "ok" else None
        # tokens/s per GPU against the same configuration on one GPU, measured in the same invocation
        base = next((r for r in rows if r["name"] == row.get("scales") and r["status"] == "ok"), None)
        row["scaling_efficiency"] = (row["tokens_per_s"] / row["gpus"]) / base["tokens_per_s"] \
            if base and row["status"] == "ok" else None


# ---------------------------------------------------------------- throughput: header and files


def make_header(settings, rows, started):
    gpu = next((row["run_stats"]["gpu"] for row in rows if (row.get("run_stats") or {}).get("gpu")), None)
    most = max([row.get("gpus", 1) for row in rows] + [settings.num_gpus])
    if gpu and most > 1:
        gpu = f"up to {most} x {gpu} (column \"GPUs\")"
    return {
        "gpu": gpu or ("none (CPU)" if settings.use_cpu else "unknown (no row finished)"),
        "gpu_memory_gib": settings.gpu_memory_gib,
        "model": f"tiny model {settings.tiny}" if settings.tiny else "GPT-2 XL shapes (random weights)",
        "n_layer": None if settings.tiny else settings.n_layer,
        "block_size": settings.block_size,
        "steps": settings.steps,
        "warmup_steps_not_timed": WARMUP_STEPS,
        "num_gpus": settings.num_gpus,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "use_cpu": settings.use_cpu,
    }


def header_line(header):
    model = header["model"] + (f", n_layer {header['n_layer']}" if header["n_layer"] else "")
    versions_text = ", ".join(f"{package} {version}" for package, version in header["versions"].items())
    return (f"GPU: {header['gpu']} · memory cap {header['gpu_memory_gib']:g} GiB per GPU (column \"cap\") · "
            f"{model}, block {header['block_size']} · {header['steps']} steps per row, the first "
            f"{header['warmup_steps_not_timed']} step times not counted · {header['date']} · {versions_text}")


def number(value, digits=1):
    if value is None:
        return "—"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table_cells(row):
    cap = "none" if row["gpu_memory_gib"] is None else f"{row['gpu_memory_gib']:g}"
    gpus = str(row.get("gpus", 1))
    if row["status"] != "ok":
        return [row["name"], gpus, cap, f"failed: {row['error']}"] + ["—"] * (len(COLUMNS) - 4)
    per_gpu = row["tokens_per_s"] / row.get("gpus", 1)
    return [row["name"], gpus, cap, number(row["tokens_per_s"], 0 if row["tokens_per_s"] >= 100 else 1),
            number(per_gpu, 0 if per_gpu >= 100 else 1), f"{row['s_per_step']:.3g}", str(row["sequences_per_step"]),
            number(row["peak_gpu_allocated_gib"]), number(row["peak_gpu_reserved_gib"]),
            number(row["peak_host_rss_gib"]),
            number(row["time_to_first_step_s"], 0 if (row["time_to_first_step_s"] or 0) >= 10 else 1),
            number(row.get("ratio_to_classic"), 2), number(row.get("scaling_efficiency"), 2),
            "—" if row.get("gpu_busy") is None else f"{row['gpu_busy']:.0%}"]


def markdown(header, rows, complete):
    lines = ["# Throughput beside the classic recipe", "", header_line(header), ""]
    if not complete:
        lines += ["(incomplete: the benchmark was stopped before every row ran)", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in table_cells(row)) + " |" for row in rows]
    skipped = [f"{row['name']} {row['overflow_skipped_steps']}" for row in rows
               if row.get("overflow_skipped_steps") is not None]
    if skipped:
        lines += ["", "Steps skipped for overflowed gradients (the fp16 mode's loss scale), whole run: "
                  + ", ".join(skipped)]
    return "\n".join(lines) + "\n"


def write_results(prefix, header, rows, complete):
    """PREFIX.json and PREFIX.md, with the ratios; the markdown text."""
    add_ratios(rows)
    text = markdown(header, rows, complete)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"header": header, "complete": complete, "rows": rows}, f, indent=2)
        f.write("\n")
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- parity


def parity_row(run):
    """A run to its end: its train and eval losses by step, or why it has none."""
    if run.log_history is None:
        return {"name": run.name, "status": "failed", "error": run.failure_reason(), "log": run.log_path}
    history = run.log_history
    return {"name": run.name, "status": "ok", "log": run.log_path, "wall_s": run.wall_s,
            "train": [(h["step"], h["loss"]) for h in history if "loss" in h],
            "eval": [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]}


def parity_table(rows):
    """The markdown table of final eval losses against the first (classic) row's; adds final_eval_loss,
    relative_difference and within_tolerance to the rows."""
    classic = rows[0]
    base = classic["eval"][-1][1] if classic["status"] == "ok" and classic["eval"] else None
    lines = [f"| configuration | final eval loss | vs classic | within {PARITY_TOLERANCE:.0%} |", "|---|---:|---:|---|"]
    for row in rows:
        if row["status"] != "ok" or not row["eval"]:
            lines.append(f"| {row['name']} | failed: {row.get('error')} | | |")
            continue
        final = row["eval"][-1][1]
        row["final_eval_loss"] = final
        if base:
            row["relative_difference"] = (final - base) / base
            row["within_tolerance"] = abs(row["relative_difference"]) <= PARITY_TOLERANCE
            lines.append(f"| {row['name']} | {final:.4f} | {row['relative_difference']:+.2%} | "
                         f"{'yes' if row['within_tolerance'] else 'no'} |")
        else:
            lines.append(f"| {row['name']} | {final:.4f} | | |")
    return "\n".join(lines)


def plot_curves(rows, path, title):
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

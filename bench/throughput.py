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
goes to <work_dir>/<name>.log (--log_dir). Exit code 0 when the classic row ran, 1 when it failed, 2 for bad
arguments. See bench/README.md for the columns and how to add a row.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from typing import NamedTuple, Optional, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from clmkit.errors import UsageError, raise_if_any, run_cli  # noqa: E402

RUN_CLM = os.path.join(REPO, "run_clm.py")
CAP = "cap"  # a row's gpu_memory_gib: whatever --gpu_memory_gib says
WARMUP_STEPS = 3  # step times RunStatsCallback leaves out of its median (clmkit/stats.py)
XL_SHAPES = "n_embd=1600,n_layer={n_layer},n_head=25,n_positions=1024,vocab_size=50257"
GiB = 2**30


class Config(NamedTuple):
    """One row of the table: what it changes against the flags every row gets (see common_flags)."""

    ds_config: Optional[str]  # DeepSpeed config, relative to the repo root; None: run without --deepspeed
    flags: tuple = ()  # run_clm.py flags, placed after the common ones so that they win
    env: Optional[dict] = None  # extra environment variables; a value of None unsets that variable
    gpu_memory_gib: Union[str, float, None] = CAP  # CAP: --gpu_memory_gib; None: uncapped; a number: that cap
    gpus: Optional[int] = None  # GPUs for this row; None: --num_gpus
    scales: Optional[str] = None  # the one-GPU row this multi-GPU row's tokens/s per GPU is compared with


def batch(micro, accumulation):
    return ("--per_device_train_batch_size", str(micro), "--gradient_accumulation_steps", str(accumulation))


CLASSIC = "classic"
# The classic recipe, frozen: the original guide's ds_config (bench/ds_classic.json: ZeRO-2, optimizer offloaded to
# CPU) with --fp16, micro-batch 8 x accumulation 2, weights loaded in fp32 and cast by DeepSpeed, GPT-2's own GELU,
# PyTorch's default CUDA allocator; gradient checkpointing is run_clm.py's default. "shipped" is today's ds_config.json with the same flags. Add a row with
# one line here.
BF16_8BIT = ("--bf16", "--dtype", "bfloat16", "--optim", "adamw_torch_8bit", "--chunked_loss")
BF16_8BIT_SR = (*BF16_8BIT, "--optim_args", "bf16_stochastic_round=True")
CONFIGS = {
    # name:           Config(DeepSpeed config, run_clm.py flags, env vars, GPU cap)
    CLASSIC:          Config("bench/ds_classic.json", ("--fp16", "--dtype", "float32", "--no_fused_gelu", *batch(8, 2)),
                             env={"PYTORCH_CUDA_ALLOC_CONF": ""}),  # PyTorch's default allocator
    "shipped":        Config("ds_config.json", ("--fp16", *batch(8, 2))),
    "classic-bf16":   Config("ds_config.json", ("--bf16", *batch(8, 2))),
    "classic-acc8":   Config("ds_config.json", ("--fp16", *batch(8, 8))),
    "no-offload-80g": Config("bench/ds_zero2_no_offload.json", ("--fp16", *batch(8, 2)), gpu_memory_gib=None),
    # ZeRO stage 1 on one GPU: gradients stay on the GPU until the step, moved to CPU once per step instead of
    # being moved and summed in host memory after every micro-batch; 2 bytes a parameter more on the GPU.
    "zero1":          Config("ds_config_zero1.json", ("--fp16", *batch(8, 2))),
    # ZenFlow: important gradient columns updated on the GPU every step, the rest by CPU Adam every few
    # steps, overlapped with the next steps' compute. Changes the update rule: needs the parity run.
    "zenflow":        Config("bench/ds_zenflow.json", ("--fp16", *batch(8, 2))),
    # Same 16 sequences a step in one micro-batch: one gradient offload a step instead of two, and no
    # fp32 gradient accumulation buffer in host RAM. The chunked loss makes micro-batch 16 fit.
    "mb16-chunked":   Config("ds_config.json", ("--fp16", "--chunked_loss", *batch(16, 1))),
    "mb16-chunked-bigbuckets": Config("bench/ds_offload_big_buckets.json", ("--fp16", "--chunked_loss",
                                                                            *batch(16, 1))),
    # No DeepSpeed, nothing in host RAM: bf16 weights and an 8-bit AdamW (torchao) on the GPU; stochastic
    # rounding so that updates smaller than a bf16 step are not lost on average.
    "bf16-adam8bit":  Config(None, (*BF16_8BIT, *batch(8, 2))),
    "bf16-adam8bit-sr": Config(None, (*BF16_8BIT_SR, *batch(8, 2))),
    "bf16-adam8bit-sr-mb16": Config(None, (*BF16_8BIT_SR, *batch(16, 1))),
    "bf16-adam8bit-sr-compile": Config(None, (*BF16_8BIT_SR, "--torch_compile", *batch(8, 2))),
    # The same per-GPU micro-batch and accumulation on more GPUs: the global batch grows with them.
    "shipped-2gpu":   Config("ds_config.json", ("--fp16", *batch(8, 2)), gpus=2, scales="shipped"),
    "zero1-2gpu":     Config("ds_config_zero1.json", ("--fp16", *batch(8, 2)), gpus=2, scales="zero1"),
    "shipped-4gpu":   Config("ds_config.json", ("--fp16", *batch(8, 2)), gpus=4, scales="shipped"),
    "bf16-adam8bit-sr-2gpu": Config(None, (*BF16_8BIT_SR, *batch(8, 2)), gpus=2, scales="bf16-adam8bit-sr"),
}


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


def selected_rows(configs_flag):
    """(row names to run, classic first; problems): an unknown name is one line naming it and the valid ones."""
    if configs_flag is None:
        return list(CONFIGS), []
    asked = [name.strip() for name in configs_flag.split(",") if name.strip()]
    unknown = [name for name in asked if name not in CONFIGS]
    if unknown:
        return [], [f"--configs: unknown configuration{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                    f"valid names: {', '.join(CONFIGS)}"]
    return list(dict.fromkeys([CLASSIC, *asked])), []


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
    default_data = args.train_file == os.path.join(REPO, "train.csv")
    for flag, path in (("--train_file", args.train_file), ("--validation_file", args.validation_file)):
        if not os.path.isfile(path) and not default_data:
            problems.append(f"{flag} {path}: no such file")
    if not deepspeed_launcher():
        problems.append("the deepspeed launcher is not installed here; pip install -r requirements.txt")
    for flag, folder in (("--work_dir", args.work_dir), ("--log_dir", args.log_dir),
                         ("--out_prefix", os.path.dirname(os.path.abspath(args.out_prefix)))):
        if folder:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as err:
                problems.append(f"{flag} {folder}: cannot make that folder ({err.strerror})")
    return problems


def deepspeed_launcher():
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return beside if os.path.isfile(beside) else shutil.which("deepspeed")


def list_rows(args):
    print(f"{'name':<16} {'DeepSpeed config':<32} {'GPU cap':<8} run_clm.py flags [env]")
    for name, config in CONFIGS.items():
        cap = "none" if row_cap(config, args) is None else f"{row_cap(config, args):g} GiB"
        env = " " + " ".join(f"{k}={v}" for k, v in config.env.items()) if config.env else ""
        print(f"{name:<16} {config.ds_config or '(none)':<32} {cap:<8} {' '.join(config.flags)}{env}")


# ---------------------------------------------------------------- preparing: data, tokenizer, DeepSpeed ops


def prepare_data(args):
    """The repo's Shakespeare csv files, made from train.txt/validation.txt when missing."""
    if os.path.isfile(args.train_file) and os.path.isfile(args.validation_file):
        return
    print("benchmark: making train.csv and validation.csv with texttocsv.py", flush=True)
    result = subprocess.run([sys.executable, os.path.join(REPO, "texttocsv.py")], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"texttocsv.py could not make the data: {last_lines(result.stderr)}")


def prepare_model(args, log_dir):
    """The model folder every row loads: the tiny model, or a GPT-2 XL-shaped one with random weights (and a
    GPT-2-style BPE tokenizer) saved once with save_pretrained and reused. Rows load it with --model_name_or_path
    as a user loads gpt2-xl, so that their time to the first step is a user's, not a random initialisation's."""
    if args.tiny:
        return args.tiny
    folder = os.path.join(args.work_dir, f"gpt2-xl-shapes-{args.n_layer}-layers")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    print(f"benchmark: saving a random GPT-2 XL-shaped model in {folder} (once; later runs reuse it)", flush=True)
    command = [sys.executable, os.path.join(REPO, "tools", "make_offline_model.py"), "--text",
               os.path.join(REPO, "train.txt"), "--out", folder, "--vocab_size", "8000",
               "--model", XL_SHAPES.format(n_layer=args.n_layer), "--device", "cpu" if args.use_cpu else "cuda"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    with open(os.path.join(log_dir, "model.log"), "w", encoding="utf-8") as log:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)  # half a model would be reused next time
        raise UsageError(f"tools/make_offline_model.py could not make the model: {last_lines(result.stderr)}")
    return folder


def prepare_runs(args, names, tokenizer_source, cache_dir, log_dir):
    """Work every row would otherwise repeat, done once beforehand so that no row's time to its first step
    includes it: tokenizing the text, and building DeepSpeed's Adam op (a compile of a minute or more the first
    time on a machine). Done in a child process with the rows' own environment: the dataset cache is keyed by a
    hash of the tokenizer, and that hash changes with e.g. HF_HUB_OFFLINE."""
    builders = ops_needed(names)
    print("benchmark: tokenizing the data once" + (f" and building DeepSpeed's {', '.join(builders)}"
                                                   if builders else "") + " (every row reuses them)", flush=True)
    plan = {"train_file": args.train_file, "validation_file": args.validation_file, "block_size": args.block_size,
            "tokenizer_source": tokenizer_source, "cache_dir": cache_dir, "builders": builders}
    log_path = os.path.join(log_dir, "prepare.log")
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run([sys.executable, "-c", PREPARE, REPO, json.dumps(plan)], cwd=REPO, env=base_env(),
                                stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(f"benchmark: notice: preparing failed (see {log_path}); each row will do it itself", flush=True)


PREPARE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.throughput import prepare_in_child
sys.exit(prepare_in_child(**json.loads(sys.argv[2])))
"""


def prepare_in_child(train_file, validation_file, block_size, tokenizer_source, cache_dir, builders):
    """Tokenize and cut the text with run_clm.py's own functions into its cache folder; build the ops."""
    import contextlib
    import traceback
    import types

    failed = 0
    try:
        from clmkit.args import DataArguments, ModelArguments
        from clmkit.data import load_raw_texts, make_sequences, tokenize_texts
        from clmkit.loading import hub_options, load_tokenizer

        model_args = ModelArguments(cache_dir=cache_dir)
        data_args = DataArguments(train_file=train_file, validation_file=validation_file, block_size=block_size)
        one_process = types.SimpleNamespace(main_process_first=lambda desc="": contextlib.nullcontext())
        tokenizer = load_tokenizer(tokenizer_source, **hub_options(model_args))
        raw, column = load_raw_texts(data_args, cache_dir=cache_dir)
        tokens = tokenize_texts(raw, column, tokenizer, data_args, one_process)
        make_sequences(tokens, tokenizer, block_size, data_args, one_process)
        print("prepare: data tokenized", flush=True)
    except Exception:
        traceback.print_exc()
        failed = 1
    for name in builders:
        try:
            from deepspeed.accelerator import get_accelerator

            builder = get_accelerator().create_op_builder(name)
            if builder is not None:
                builder.load()
                print(f"prepare: {name} ready", flush=True)
        except Exception:
            traceback.print_exc()
            failed = 1
    return failed


def ops_needed(names):
    """DeepSpeed's compiled Adam ops the rows will load: CPUAdam with the optimizer offloaded, else FusedAdam."""
    needed = []
    for name in names:
        path = CONFIGS[name].ds_config
        try:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                ds_config = json.load(f)
        except (TypeError, OSError, ValueError):  # no config, or one the row will fail on by itself
            continue
        optimizer = ds_config.get("optimizer", {})
        if not optimizer or optimizer.get("params", {}).get("torch_adam"):
            continue
        offload = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        needed.append("CPUAdamBuilder" if offload in ("cpu", "nvme") else "FusedAdamBuilder")
    return list(dict.fromkeys(needed))


# ---------------------------------------------------------------- running one row


def free_port():
    """A free port for the launcher's rendezvous (the default 29500 may be taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def common_flags(args, model_dir, cache_dir):
    """run_clm.py flags every row gets, before its own."""
    flags = ["--model_name_or_path", model_dir, "--train_file", args.train_file, "--validation_file", args.validation_file, "--do_train",
             "--max_steps", str(args.steps), "--save_strategy", "no", "--logging_steps", "5", "--report_to", "none",
             "--block_size", str(args.block_size), "--cache_dir", cache_dir]
    return flags + (["--use_cpu"] if args.use_cpu else [])


def row_gpus(config, args):
    return config.gpus or args.num_gpus


def row_cap(config, args):
    return args.gpu_memory_gib if config.gpu_memory_gib == CAP else config.gpu_memory_gib


def base_env():
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; don't wait for it on a closed box
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def row_env(config, args):
    env = base_env()
    cap = row_cap(config, args)
    if cap is None:
        env.pop("CLM_GPU_MEMORY_GIB", None)
    else:
        env["CLM_GPU_MEMORY_GIB"] = f"{cap:g}"
    for key, value in (config.env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def row_command(config, args, common, out_dir):
    flags = list(config.flags)
    if args.use_cpu:
        flags = ["--bf16" if flag == "--fp16" else flag for flag in flags]  # no fp16 on a CPU
    command = [deepspeed_launcher(), f"--num_gpus={row_gpus(config, args)}", f"--master_port={free_port()}", RUN_CLM,
               *common, "--output_dir", out_dir]
    if config.ds_config:
        command += ["--deepspeed", os.path.join(REPO, config.ds_config)]
    return command + flags


def run_row(name, config, args, common, log_dir):
    """Run one configuration to its run_stats.json; a dict for the table, failed or not."""
    out_dir = os.path.join(args.work_dir, "runs", name)
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale run_stats.json, and no checkpoint to resume from
    command = row_command(config, args, common, out_dir)
    log_path = os.path.join(log_dir, f"{name}.log")
    cap = row_cap(config, args)
    row = {"name": name, "status": "failed", "error": None, "gpu_memory_gib": cap, "gpus": row_gpus(config, args),
           "scales": config.scales, "ds_config": config.ds_config,
           "flags": list(config.flags), "env": config.env or {}, "log": log_path, "command": shlex.join(command)}
    outcome = execute(command, row_env(config, args), log_path, os.path.join(out_dir, "run_stats.json"),
                      args.timeout, stop_at_stats=not args.let_runs_finish)
    stats = outcome["stats"]
    row.update(wall_s=outcome["wall_s"], exit_code=outcome["exit_code"],  # -9 when stopped after run_stats.json
               stopped_after_stats=outcome["stopped_after_stats"], run_stats=stats,
               tree_peak_rss_gib=outcome["tree_peak_rss"] / GiB)
    if stats and stats.get("tokens_per_s"):
        row.update(status="ok", **table_values(stats, outcome["tree_peak_rss"], args.block_size))
    elif stats:
        row["error"] = f"run_stats.json has no tokens/s ({stats.get('steps_timed')} step times measured)"
    elif outcome["timed_out"]:
        row["error"] = f"timed out after {args.timeout:g} s (--timeout)"
    else:
        row["error"] = failure_reason(read_tail(log_path), outcome["exit_code"])
    shutil.rmtree(out_dir, ignore_errors=True)  # its numbers are in the table; a kept final model would be GiBs
    return row


def table_values(stats, tree_peak_rss, block_size):
    return {
        "tokens_per_s": stats["tokens_per_s"],
        "s_per_step": stats["s_per_step"],
        "sequences_per_step": round(stats["tokens_per_step"] / block_size),
        "peak_gpu_allocated_gib": stats.get("peak_gpu_allocated_gib"),
        "peak_gpu_reserved_gib": stats.get("peak_gpu_reserved_gib"),
        # Both are samples of the same whole-tree peak: run_stats' from inside, ours from outside every 0.5 s.
        "peak_host_rss_gib": max(stats.get("peak_host_rss_gib") or 0, tree_peak_rss / GiB),
        "time_to_first_step_s": stats.get("time_to_first_step_s"),
    }


def execute(command, env, log_path, stats_path, timeout, stop_at_stats):
    """Run `command` with its output in log_path, sampling its process tree's memory; stop the whole tree once
    run_stats.json is written (stop_at_stats), after `timeout` seconds, or on SIGTERM/Ctrl-C.

    The run stays in this process group, so that whatever kills the benchmark's group (`timeout`, a terminal's
    Ctrl-C) reaches it too rather than leaving it on the GPU."""
    started = time.time()
    stats, peak, timed_out, stopped = None, 0, False, False
    seen = {}  # every process of the tree so far: one whose parent dies moves to init, out of the tree
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                peak = max(peak, tree_rss(process.pid, seen))
                stats = stats or read_stats(stats_path)
                if stats is not None and stop_at_stats:
                    stopped = True
                    break
                if time.time() - started > timeout:
                    timed_out = True
                    break
                time.sleep(0.5)
        finally:
            stop_tree(process, seen)
    stats = stats or read_stats(stats_path)
    return {"stats": stats, "tree_peak_rss": peak, "timed_out": timed_out and stats is None,
            "exit_code": process.returncode, "stopped_after_stats": stopped, "wall_s": time.time() - started}


def tree_rss(pid, seen):
    """Resident bytes of process `pid` and all its descendants; adds them to `seen` (pid -> psutil.Process)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        seen.setdefault(process.pid, process)
        try:
            total += process.memory_info().rss
        except psutil.Error:
            pass
    return total


def stop_tree(process, seen):
    """SIGKILL the run and every process it started that is still running, and wait until they are gone (so is
    their GPU memory). Not SIGTERM: run_clm.py answers that by writing a checkpoint first."""
    import psutil

    tree_rss(process.pid, seen)
    for member in seen.values():
        try:
            member.kill()  # psutil refuses if the pid now belongs to another process
        except psutil.Error:
            pass
    process.wait()
    psutil.wait_procs(list(seen.values()), timeout=60)


def read_stats(path):
    """run_stats.json once it is completely written, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_tail(path, size=256 * 1024):
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode("utf-8", errors="replace")


# ---------------------------------------------------------------- why a row failed

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LAUNCHER = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[[A-Z]+\]")  # the deepspeed launcher's own log lines
EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b(?::|$)")
RETURN_CODE = re.compile(r"exits with return code = (-?\d+)")


def failure_reason(log_text, exit_code):
    """The last meaningful error line of a failed run: out of memory first, then run_clm.py's own `error:`
    lines, then the last exception, then a signal that killed the worker."""
    lines = [ANSI.sub("", piece).strip() for line in log_text.splitlines() for piece in line.split("\r")]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        lower = line.lower()
        if "out of memory" in lower or "can't allocate memory" in lower or "cannot allocate memory" in lower:
            return describe_oom(line)
    usage = [line for line in lines if line.startswith("error: ")]
    if usage:
        return shorten("; ".join(line[len("error: "):] for line in usage))
    for line in reversed(lines):
        if EXCEPTION.match(line) and not LAUNCHER.match(line) and "CalledProcessError" not in line:
            return shorten(line)
    codes = [int(match.group(1)) for line in lines for match in [RETURN_CODE.search(line)] if match]
    code = codes[-1] if codes else exit_code
    killer = signal_of(code)
    if killer:
        return f"killed by {killer}" + (" (host out of memory?)" if killer == "SIGKILL" else "")
    return f"exit code {exit_code}" + (f": {shorten(lines[-1])}" if lines else "")


def signal_of(code):
    """The signal behind an exit status: -9 (Popen), 137 (a shell's 128+9) or 247 (the launcher's sys.exit(-9))."""
    if code is None or 0 <= code <= 128:
        return None
    number = -code if code < 0 else code - 128 if code < 192 else 256 - code
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_oom(line):
    start = line.find("CUDA out of memory")
    if start >= 0:  # "CUDA out of memory. Tried to allocate 1.53 GiB. GPU 0 has ...": the first two sentences
        return shorten(". ".join(line[start:].split(". ")[:2]))
    if "can't allocate memory" in line.lower() or "cannot allocate memory" in line.lower():
        return shorten(f"host out of memory: {line}")
    return shorten(line)


def shorten(text, limit=200):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def last_lines(text, n=3):
    return shorten(" | ".join(line for line in text.strip().splitlines()[-n:]))


# ---------------------------------------------------------------- the table


def versions():
    found = {}
    for package in ("torch", "transformers", "deepspeed"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def make_header(args, rows, started):
    gpu = next((row["run_stats"]["gpu"] for row in rows if (row.get("run_stats") or {}).get("gpu")), None)
    most = max([row.get("gpus", 1) for row in rows] + [args.num_gpus])
    if gpu and most > 1:
        gpu = f"up to {most} x {gpu} (column \"GPUs\")"
    return {
        "gpu": gpu or ("none (CPU)" if args.use_cpu else "unknown (no row finished)"),
        "gpu_memory_gib": args.gpu_memory_gib,
        "model": f"tiny model {args.tiny}" if args.tiny else "GPT-2 XL shapes (random weights)",
        "n_layer": None if args.tiny else args.n_layer,
        "block_size": args.block_size,
        "steps": args.steps,
        "warmup_steps_not_timed": WARMUP_STEPS,
        "num_gpus": args.num_gpus,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "use_cpu": args.use_cpu,
    }


def header_line(header):
    model = header["model"] + (f", n_layer {header['n_layer']}" if header["n_layer"] else "")
    versions_text = ", ".join(f"{package} {version}" for package, version in header["versions"].items())
    return (f"GPU: {header['gpu']} · memory cap {header['gpu_memory_gib']:g} GiB per GPU (column \"cap\") · "
            f"{model}, block {header['block_size']} · {header['steps']} steps per row, the first "
            f"{header['warmup_steps_not_timed']} step times not counted · {header['date']} · {versions_text}")


COLUMNS = ["configuration", "GPUs", "cap GiB", "tokens/s", "tokens/s per GPU", "s/step", "seqs/step",
           "GPU alloc GiB", "GPU reserved GiB", "host RAM GiB", "launch to step 1 (s)", "vs classic",
           "per GPU vs 1 GPU"]


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
            number(per_gpu, 0 if per_gpu >= 100 else 1), f"{row['s_per_step']:.3g}", str(row["sequences_per_step"]), number(row["peak_gpu_allocated_gib"]),
            number(row["peak_gpu_reserved_gib"]), number(row["peak_host_rss_gib"]),
            number(row["time_to_first_step_s"], 0 if (row["time_to_first_step_s"] or 0) >= 10 else 1),
            number(row.get("ratio_to_classic"), 2), number(row.get("scaling_efficiency"), 2)]


def markdown(header, rows, complete):
    lines = ["# Throughput beside the classic recipe", "", header_line(header), ""]
    if not complete:
        lines += ["(incomplete: the benchmark was stopped before every row ran)", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def add_ratios(rows):
    classic = next((row for row in rows if row["name"] == CLASSIC and row["status"] == "ok"), None)
    for row in rows:
        row["ratio_to_classic"] = row["tokens_per_s"] / classic["tokens_per_s"] \
            if classic and row["status"] == "ok" else None
        # tokens/s per GPU against the same configuration on one GPU, measured in the same invocation
        base = next((r for r in rows if r["name"] == row.get("scales") and r["status"] == "ok"), None)
        row["scaling_efficiency"] = (row["tokens_per_s"] / row["gpus"]) / base["tokens_per_s"] \
            if base and row["status"] == "ok" else None


def write_results(prefix, header, rows, complete):
    add_ratios(rows)
    text = markdown(header, rows, complete)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"header": header, "complete": complete, "rows": rows}, f, indent=2)
        f.write("\n")
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- main


def main(argv=None):
    args = parse(argv)
    if args.list:
        list_rows(args)
        return 0
    for name in ("train_file", "validation_file", "work_dir", "log_dir", "tiny"):  # the runs start in the repo
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    names, problems = selected_rows(args.configs)
    raise_if_any(problems + argument_problems(args))
    log_dir = args.log_dir or args.work_dir
    cache_dir = os.path.join(args.work_dir, "hf-cache")
    started = datetime.datetime.now(datetime.timezone.utc)
    cap = f"GPU memory cap {args.gpu_memory_gib:g} GiB"
    model = f"tiny model {args.tiny}" if args.tiny else f"n_layer {args.n_layer}"
    print(f"benchmark: {len(names)} configurations ({', '.join(names)}), {model}, {args.steps} steps, {cap}; "
          f"logs in {log_dir}", flush=True)

    prepare_data(args)
    model_dir = prepare_model(args, log_dir)
    prepare_runs(args, names, model_dir, cache_dir, log_dir)
    common = common_flags(args, model_dir, cache_dir)

    rows, text = [], ""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        for index, name in enumerate(names, 1):
            print(f"[{index}/{len(names)}] {name}: running (log: {os.path.join(log_dir, name + '.log')})",
                  flush=True)
            row = run_row(name, CONFIGS[name], args, common, log_dir)
            rows.append(row)
            if row["status"] == "ok":
                print(f"[{index}/{len(names)}] {name}: {row['tokens_per_s']:,.1f} tokens/s, "
                      f"{row['s_per_step']:.3g} s/step ({row['wall_s']:.0f} s)", flush=True)
            else:
                print(f"[{index}/{len(names)}] {name}: FAILED: {row['error']} ({row['wall_s']:.0f} s)", flush=True)
            text = write_results(args.out_prefix, make_header(args, rows, started), rows, len(rows) == len(names))
    except (Interrupted, KeyboardInterrupt):
        write_results(args.out_prefix, make_header(args, rows, started), rows, complete=False)
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

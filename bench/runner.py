"""Running rows: prepare what every row shares once (data, model, tokenized cache, DeepSpeed's ops), then run one
row as `deepspeed --num_gpus=N run_clm.py ...` in its own process tree and return what it left behind.

Everything a run depends on is in Settings, made by the entry point (throughput.py, parity.py)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import psutil

from bench.failures import failure_reason, last_lines
from bench.rows import CONFIGS, REPO, ops_needed
from clmkit.errors import UsageError
from clmkit.machine import GPU_CAP, free_port, tree_rss

RUN_CLM = os.path.join(REPO, "run_clm.py")
XL_SHAPES = "n_embd=1600,n_layer={n_layer},n_head=25,n_positions=1024,vocab_size=50257"


@dataclass(frozen=True)
class Settings:
    """What every row of one invocation shares. Paths are absolute: the runs start in the repository."""

    work_dir: str  # model, tokenized cache (hf-cache) and run folders (runs/<name>)
    log_dir: str  # <log_prefix><name>.log of each row, prepare.log, model.log
    train_file: str
    validation_file: str
    steps: int  # --max_steps of every row
    block_size: int
    gpu_memory_gib: float  # the cap of the rows that take the invocation's cap
    num_gpus: int = 1  # the GPUs of the rows that name none
    timeout: float = 1800  # seconds a row may run before it is stopped
    n_layer: int = 48  # layers of the GPT-2 XL-shaped model
    tiny: Optional[str] = None  # a small model folder to train instead (tests)
    use_cpu: bool = False  # run_clm.py --use_cpu; --fp16 becomes --bf16, or --dtype float16 in the fp16 mode (tests)
    stop_at_stats: bool = True  # stop a run once it has written run_stats.json (the final save is not measured)
    extra_flags: tuple = ()  # run_clm.py flags after every row's own
    log_prefix: str = ""


@dataclass(frozen=True)
class Prepared:
    model_dir: str
    cache_dir: str
    common_flags: tuple  # run_clm.py flags every row gets, before its own


@dataclass(frozen=True)
class Run:
    """What one row's run left: its command, log, exit status and, where it got that far, run_stats.json and the
    Trainer's log history."""

    name: str
    command: tuple
    log_path: str
    exit_code: Optional[int]  # -9 when it was stopped after writing run_stats.json
    wall_s: float
    tree_peak_rss: int  # bytes, sampled from outside every 0.5 s
    timed_out: bool  # stopped at the timeout without having written run_stats.json
    stopped_after_stats: bool
    stats: Optional[dict]  # run_stats.json
    log_history: Optional[list]  # trainer_state.json's, when the run got to the end
    gpu_busy: Optional[float] = None  # the share of the profiled steps' wall time the GPU was busy (CLM_PROFILE)

    def failure_reason(self):
        return failure_reason(read_tail(self.log_path), self.exit_code)


def deepspeed_launcher():
    beside = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return beside if os.path.isfile(beside) else shutil.which("deepspeed")


def base_env():
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; don't wait for it on a closed box
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


# ---------------------------------------------------------------- preparing: data, model, cache, DeepSpeed ops


def prepare(settings, names):
    """Make or reuse the text, the model and the tokenized cache, and build the ops the rows `names` load."""
    os.makedirs(settings.log_dir, exist_ok=True)
    prepare_data(settings)
    model_dir = prepare_model(settings)
    cache_dir = os.path.join(settings.work_dir, "hf-cache")
    prepared = Prepared(model_dir, cache_dir, common_flags(settings, model_dir, cache_dir))
    prepare_cache_and_ops(settings, prepared, ops_needed(names))
    return prepared


def prepare_data(settings):
    """The repo's Shakespeare csv files, made from train.txt/validation.txt when missing."""
    if os.path.isfile(settings.train_file) and os.path.isfile(settings.validation_file):
        return
    print("benchmark: making train.csv and validation.csv with texttocsv.py", flush=True)
    result = subprocess.run([sys.executable, os.path.join(REPO, "texttocsv.py")], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"texttocsv.py could not make the data: {last_lines(result.stderr)}")


def prepare_model(settings):
    """The model folder every row loads: the tiny model, or a GPT-2 XL-shaped one with random weights (and a
    GPT-2-style BPE tokenizer) saved once with save_pretrained and reused. Rows load it with --model_name_or_path
    as a user loads gpt2-xl, so that their time to the first step is a user's, not a random initialisation's."""
    if settings.tiny:
        return settings.tiny
    folder = os.path.join(settings.work_dir, f"gpt2-xl-shapes-{settings.n_layer}-layers")
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    print(f"benchmark: saving a random GPT-2 XL-shaped model in {folder} (once; later runs reuse it)", flush=True)
    command = [sys.executable, os.path.join(REPO, "tools", "make_offline_model.py"), "--text",
               os.path.join(REPO, "train.txt"), "--out", folder, "--vocab_size", "8000",
               "--model", XL_SHAPES.format(n_layer=settings.n_layer),
               "--device", "cpu" if settings.use_cpu else "cuda"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    with open(os.path.join(settings.log_dir, "model.log"), "w", encoding="utf-8") as log:
        log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)  # half a model would be reused next time
        raise UsageError(f"tools/make_offline_model.py could not make the model: {last_lines(result.stderr)}")
    return folder


def common_flags(settings, model_dir, cache_dir):
    """run_clm.py flags every row gets, before its own."""
    flags = ["--model_name_or_path", model_dir, "--train_file", settings.train_file,
             "--validation_file", settings.validation_file, "--do_train", "--max_steps", str(settings.steps),
             "--save_strategy", "no", "--logging_steps", "5", "--report_to", "none",
             "--block_size", str(settings.block_size), "--cache_dir", cache_dir]
    return tuple(flags + (["--use_cpu"] if settings.use_cpu else []))


# The child's command line: the ops to build (comma-separated), then run_clm.py flags.
PREPARE = "import sys; from bench.runner import prepare_in_child; sys.exit(prepare_in_child(sys.argv[1], sys.argv[2:]))"


def prepare_cache_and_ops(settings, prepared, builders):
    """Work every row would otherwise repeat, done once beforehand so that no row's time to its first step
    includes it: tokenizing the text, and building DeepSpeed's Adam op (a compile of a minute or more the first
    time on a machine). Done in a child process with the rows' own environment: the dataset cache is keyed by a
    hash of the tokenizer, and that hash changes with e.g. HF_HUB_OFFLINE."""
    print("benchmark: tokenizing the data once" + (f" and building DeepSpeed's {', '.join(builders)}"
                                                   if builders else "") + " (every row reuses them)", flush=True)
    flags = [*prepared.common_flags, "--output_dir", os.path.join(settings.work_dir, "runs", "prepare")]
    log_path = os.path.join(settings.log_dir, "prepare.log")
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run([sys.executable, "-c", PREPARE, ",".join(builders), *flags], cwd=REPO,
                                env=base_env(), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(f"benchmark: notice: preparing failed (see {log_path}); each row will do it itself", flush=True)


def prepare_in_child(builders, flags):
    """Parse `flags` as run_clm.py does and read, tokenize and cut the text with its own load_data, into the
    cache the rows read; then build the ops named in `builders`. 1 if anything failed."""
    import traceback

    failed = 0
    try:
        import run_clm
        from clmkit import checks
        from clmkit.args import parse_args
        from clmkit.data import choose_block_size
        from clmkit.errors import raise_if_any

        model_args, data_args, training_args, problems = parse_args(flags)
        config, tokenizer = checks.load_config_and_tokenizer(model_args, problems)
        block_size = checks.attempt(problems, choose_block_size, data_args, config) if config else None
        raise_if_any(problems)
        run_clm.load_data(data_args, model_args, training_args, tokenizer, block_size)
        print("prepare: data tokenized", flush=True)
    except Exception:
        traceback.print_exc()
        failed = 1
    for name in filter(None, builders.split(",")):
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


# ---------------------------------------------------------------- one row


def row_env(name, settings):
    config = CONFIGS[name]
    env = base_env()
    cap = config.cap(settings.gpu_memory_gib)
    if cap is None:
        env.pop(GPU_CAP, None)
    else:
        env[GPU_CAP] = f"{cap:g}"
    for key, value in (config.env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def row_command(name, settings, prepared, out_dir):
    config = CONFIGS[name]
    flags = list(config.flags)
    if settings.use_cpu:  # no --fp16 on a CPU: the fp16 mode's weights by --dtype, else bf16 autocast
        on_cpu = ["--dtype", "float16"] if not config.ds_config and "adamw_torch_8bit" in flags else ["--bf16"]
        flags = [part for flag in flags for part in (on_cpu if flag == "--fp16" else [flag])]
    command = [deepspeed_launcher(), f"--num_gpus={config.gpu_count(settings.num_gpus)}",
               f"--master_port={free_port()}", RUN_CLM, *prepared.common_flags, "--output_dir", out_dir]
    if config.ds_config:
        command += ["--deepspeed", os.path.join(REPO, config.ds_config)]
    return command + flags + list(settings.extra_flags)


def run_row(name, settings, prepared):
    """Run row `name` in runs/<name> (emptied first, removed after: a kept final model would be GiBs); its output
    goes to <log_dir>/<log_prefix><name>.log."""
    out_dir = os.path.join(settings.work_dir, "runs", name)
    shutil.rmtree(out_dir, ignore_errors=True)  # no stale run_stats.json, and no checkpoint to resume from
    command = row_command(name, settings, prepared, out_dir)
    log_path = os.path.join(settings.log_dir, f"{settings.log_prefix}{name}.log")
    outcome = execute(command, row_env(name, settings), log_path, os.path.join(out_dir, "run_stats.json"),
                      settings.timeout, settings.stop_at_stats)
    history = None
    try:
        with open(os.path.join(out_dir, "trainer_state.json"), encoding="utf-8") as f:
            history = json.load(f)["log_history"]
    except (OSError, ValueError, KeyError):
        pass
    profile = os.path.join(out_dir, "profile.md")  # CLM_PROFILE's, when the benchmark was given it
    busy = None
    if os.path.isfile(profile):
        shutil.copyfile(profile, os.path.join(settings.log_dir, f"{settings.log_prefix}{name}-profile.md"))
        with open(profile, encoding="utf-8") as f:
            busy = busy_share(f.read())
    shutil.rmtree(out_dir, ignore_errors=True)
    return Run(name=name, command=tuple(command), log_path=log_path, log_history=history, gpu_busy=busy, **outcome)


def busy_share(profile_text):
    """The GPU-busy share of the wall time that clmkit/profiling.py's profile.md states, as a fraction, or None."""
    found = re.search(r"GPU busy: .*?, (\d+)% of the wall time", profile_text)
    return int(found.group(1)) / 100 if found else None


def execute(command, env, log_path, stats_path, timeout, stop_at_stats):
    """Run `command` with its output in log_path, sampling its process tree's memory; stop the whole tree once
    run_stats.json is written (stop_at_stats), after `timeout` seconds, or when this process is interrupted.

    The run stays in this process group, so that whatever kills the benchmark's group (`timeout`, a terminal's
    Ctrl-C) reaches it too rather than leaving it on the GPU. The tree is sampled here rather than by
    clmkit.machine's TreeMemorySampler: once its root has gone, that one samples the process it runs in, which
    would put the benchmark itself among the processes to kill."""
    started = time.time()
    stats, peak, timed_out, stopped = None, 0, False, False
    seen = {}  # every process of the tree so far: one whose parent dies moves to init, out of the tree
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        try:
            while process.poll() is None:
                peak = max(peak, tree_rss(root, seen))
                stats = stats or read_stats(stats_path)
                if stats is not None and stop_at_stats:
                    stopped = True
                    break
                if time.time() - started > timeout:
                    timed_out = True
                    break
                time.sleep(0.5)
        finally:
            stop_tree(process, root, seen)
    stats = stats or read_stats(stats_path)
    return {"stats": stats, "tree_peak_rss": peak, "timed_out": timed_out and stats is None,
            "exit_code": process.returncode, "stopped_after_stats": stopped, "wall_s": time.time() - started}


def stop_tree(process, root, seen):
    """SIGKILL the run and every process it started that is still running, and wait until they are gone (so is
    their GPU memory). Not SIGTERM: run_clm.py answers that by writing a checkpoint first."""
    tree_rss(root, seen)
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

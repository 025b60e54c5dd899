"""Facts about this machine and this process: units, the CLM_* environment overrides, free disk, GPU and host RAM,
the launcher's ranks, the process tree's memory, a free port, and the DeepSpeed config file.

The bottom of clmkit: it imports nothing of the project but errors.py (the exception every module raises), so the
checks, the plan, the trainer and the benchmark can all use it.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass

import psutil
import torch

from .errors import UsageError

GiB = 2**30

# Environment variables that stand in for this machine's own figures (tests, and --plan for another machine).
GPU_OVERRIDE = "CLM_ASSUME_GPU_GIB"  # each GPU has this much free, or there is one where none is
HOST_RAM_OVERRIDE = "CLM_ASSUME_HOST_RAM_GIB"  # this much host RAM is available
FREE_DISK_OVERRIDE = "CLM_ASSUME_FREE_DISK_GIB"  # the output disk has this much free
NO_BF16_OVERRIDE = "CLM_ASSUME_NO_BF16"  # set (1): the GPU has no bf16, as a T4, V100 or P100
# The run uses no more than this of each GPU: a large card behaves like a 16 GB one (for measuring).
GPU_CAP = "CLM_GPU_MEMORY_GIB"


# Machines people train on, for --plan --machine NAME: (GPU GiB usable, host RAM GiB, bf16).
CARDS = {
    "t4": (15, 12.7, False),  # a free notebook's T4
    "2xt4": (15, 29, False),  # a notebook with two T4s: per GPU, and the host RAM they share
    "v100": (16, 32, False),
    "p100": (16, 16, False),
    "16gb-bf16": (16, 32, True),  # an A4000, RTX 4080 or 5060 Ti 16 GB in a 32 GB desktop
    "24gb-bf16": (24, 32, True),  # an RTX 3090 or 4090
    "a100-40gb": (40, 85, True),
}


def assume_machine(spec):
    """Plan for another machine: a card of CARDS by name, or its figures (gpu=GiB,ram=GiB,bf16=yes|no). Sets the
    figures this process reads instead of its own (the CLM_ASSUME_* variables); --plan only, so nothing is trained."""
    name = spec.strip().lower()
    if name in CARDS:
        gpu, ram, bf16 = CARDS[name]
    else:
        figures = dict(part.partition("=")[::2] for part in name.split(",") if part.strip())
        try:
            gpu, ram = float(figures.pop("gpu")), float(figures.pop("ram"))
            bf16 = {"yes": True, "no": False, "true": True, "false": False}[figures.pop("bf16", "yes")]
            if figures or gpu <= 0 or ram <= 0:
                raise ValueError
        except (KeyError, ValueError):
            raise UsageError(f"--machine {spec}: give a card ({', '.join(CARDS)}) or its figures, e.g. "
                             "gpu=15,ram=12.7,bf16=no") from None
    os.environ[GPU_OVERRIDE] = f"{gpu:g}"
    os.environ[HOST_RAM_OVERRIDE] = f"{ram:g}"
    os.environ[NO_BF16_OVERRIDE] = "0" if bf16 else "1"


def gib(n_bytes) -> str:
    """Bytes as a person reads them: 12.3 GiB, 1.23 GiB, 512 MiB."""
    if n_bytes >= 10 * GiB:
        return f"{n_bytes / GiB:.1f} GiB"
    return f"{n_bytes / GiB:.2f} GiB" if n_bytes >= 0.1 * GiB else f"{n_bytes / 2**20:.0f} MiB"


def env_gib(name):
    """An environment override in GiB, as bytes; None when unset."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(float(value) * GiB)
    except ValueError:
        raise UsageError(f"{name}={value}: not a number of GiB; unset it") from None


# ---------------------------------------------------------------- processes


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set: nothing is fetched from the model hub."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def first_process() -> bool:
    """Rank 0 of a launched run, or the only process: the one that prints notices for all of them."""
    return int(os.environ.get("RANK") or 0) == 0


# Set where this process stands in for the launcher DeepSpeed expects (stand_in_for_launcher).
NO_LAUNCHER = "CLM_NO_LAUNCHER"


def local_ranks():
    """(processes on this node, nodes, started by a launcher?) from the launcher's environment."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    local = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or world)
    launched = "LOCAL_RANK" in os.environ and not os.environ.get(NO_LAUNCHER)
    return max(1, local), max(1, world // max(1, local)), launched


def stand_in_for_launcher():
    """A DeepSpeed run started with plain `python run_clm.py` (no launcher): give this one process the environment
    the launcher would (rank 0 of 1, a free port on this machine), so that DeepSpeed starts its process group from
    it instead of looking for MPI, which is not installed. Nothing changes where a launcher (deepspeed, torchrun)
    set the environment already."""
    if "LOCAL_RANK" in os.environ or "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()), **{NO_LAUNCHER: "1"})
    # One process has every core; said here, since accelerate warns on every run of a "launched" process without it.
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


# Run apart from the worker: waits for the deepspeed launcher's launch.py (pid argv[1]) to end, then prints argv[2].
_REPEAT_AFTER = """
import sys, time, psutil
try:
    launcher = psutil.Process(int(sys.argv[1]))
    deadline = time.monotonic() + 30
    while launcher.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.005)
except psutil.Error:
    pass
sys.stderr.write(sys.argv[2])
"""


def repeat_after_launcher(lines):
    """The deepspeed launcher answers a worker's exit with lines of its own ('Killing subprocess ...', then the
    whole command and its exit code): the tool's error lines are printed again once it has ended, so that they are
    what the user reads last. From the first process only, which is the one that prints."""
    if not first_process():
        return
    try:
        parent = psutil.Process().parent()
        launched = parent is not None and "deepspeed.launcher.launch" in " ".join(parent.cmdline())
    except psutil.Error:
        return
    if launched:
        subprocess.Popen([sys.executable, "-c", _REPEAT_AFTER, str(parent.pid), "\n".join(lines) + "\n"],
                         stdin=subprocess.DEVNULL, start_new_session=True)


def settle_cpu_threads():
    """Each of several processes on the CPU gets its share of the physical cores for its math libraries. accelerate
    does the same when OMP_NUM_THREADS is unset, with a warning on every run; a value the user set wins."""
    ranks, _, launched = local_ranks()
    if not launched or os.environ.get("OMP_NUM_THREADS") or torch.cuda.is_available():
        return
    threads = max(1, (psutil.cpu_count(logical=False) or 1) // ranks)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def free_port() -> int:
    """A free TCP port on this machine, for a launcher's rendezvous (the default 29500 may be taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_root():
    """The process the user started: the topmost `deepspeed` launcher above us (the runner starts
    `python -m deepspeed.launcher.launch`, which starts this worker), else this process."""
    root = psutil.Process()
    parent = root.parent()
    while parent is not None:
        try:
            if not any("deepspeed" in part for part in parent.cmdline()):
                break
        except psutil.Error:
            break
        root, parent = parent, parent.parent()
    return root


def tree_rss(root, seen=None) -> int:
    """Resident bytes of `root` (a psutil.Process) and all its descendants; each one is added to `seen`
    (pid -> Process) when given. 0 once `root` has gone."""
    try:
        tree = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for process in tree:
        if seen is not None:
            seen.setdefault(process.pid, process)
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class TreeMemorySampler:
    """Peak resident memory of a process tree, sampled every `interval` seconds on a thread of its own.
    Without a root: the tree of the user's command (launcher and workers); if that root goes (killed with its
    shell), this process alone."""

    def __init__(self, root=None, interval=0.5):
        self.root = root or run_root()
        self.seen = {}
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        rss = tree_rss(self.root, self.seen)
        if rss == 0 and self.root.pid != os.getpid() and not self.root.is_running():
            self.root = psutil.Process()
            rss = tree_rss(self.root, self.seen)
        self.peak = max(self.peak, rss)
        return rss

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self.sample()
        return self.peak


# ---------------------------------------------------------------- GPU


def gpu_here() -> bool:
    """A CUDA GPU is here, or one is assumed (CLM_ASSUME_GPU_GIB)."""
    return torch.cuda.is_available() or env_gib(GPU_OVERRIDE) is not None


def assuming_no_bf16() -> bool:
    """CLM_ASSUME_NO_BF16 is set: act like a GPU without bf16."""
    return os.environ.get(NO_BF16_OVERRIDE, "0") not in ("", "0")


def bf16_on_gpu(assumed_gpu=False) -> bool:
    """The GPU does bf16 (Ampere or newer), unless CLM_ASSUME_NO_BF16 says to act like one that does not.
    assumed_gpu: a GPU planned for by CLM_ASSUME_GPU_GIB, taken to do bf16."""
    if assuming_no_bf16():
        return False
    return assumed_gpu or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def apply_gpu_memory_cap():
    """CLM_GPU_MEMORY_GIB=16 makes a large card behave like a 16 GB one (for measuring; users don't need it)."""
    cap = os.environ.get(GPU_CAP)
    if not cap or not torch.cuda.is_available():
        return
    device = int(os.environ.get("LOCAL_RANK", "0"))
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * GiB / total), device)
    print(f"notice: GPU memory capped at {float(cap):g} GiB ({GPU_CAP})", flush=True)


def gpus_free(ranks=1, every_gpu=False):
    """([(label, free bytes)] of each GPU this run uses (every_gpu: each GPU there is), why the figures are what
    they are): torch.cuda.mem_get_info, capped by CLM_GPU_MEMORY_GIB, or CLM_ASSUME_GPU_GIB instead."""
    assumed, cap = env_gib(GPU_OVERRIDE), env_gib(GPU_CAP)
    if not torch.cuda.is_available():
        if assumed is None:
            return [], ""
        return [(f"GPU {index} (assumed)", assumed) for index in range(ranks)], f" ({GPU_OVERRIDE})"
    local = int(os.environ.get("LOCAL_RANK", 0))
    gpus = []
    for index in (range(torch.cuda.device_count()) if every_gpu else [local]):
        free, total = torch.cuda.mem_get_info(index)
        if cap is not None:
            free = min(free, cap)
        if assumed is not None:
            free = assumed
        gpus.append((f"GPU {index} ({torch.cuda.get_device_name(index)}, {gib(total)})", free))
    note = f" ({GPU_OVERRIDE})" if assumed is not None else f" (capped by {GPU_CAP})" if cap else ""
    return gpus, note


# ---------------------------------------------------------------- host RAM and disk


def nearest_existing(path):
    """`path`, or its nearest parent that exists."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def free_disk_bytes(path):
    """Free bytes on the disk of `path` (its nearest existing parent), or CLM_ASSUME_FREE_DISK_GIB if set."""
    assumed = env_gib(FREE_DISK_OVERRIDE)
    return assumed if assumed is not None else shutil.disk_usage(nearest_existing(path)).free


@dataclass
class Machine:
    """What this machine has free for a run."""

    gpus: list  # (label, free bytes) of each GPU this run uses (--plan: each GPU there is)
    gpu_note: str  # "" or why the figure is what it is
    ram: int
    ram_note: str
    disk: int
    disk_path: str
    disk_note: str
    bf16: bool = True  # the GPU does bf16 (bf16_on_gpu)

    @property
    def gpu_free(self):
        return min(free for _, free in self.gpus) if self.gpus else None


def probe_machine(output_dir, ranks=1, every_gpu=False) -> Machine:
    """Each GPU (torch), RAM (psutil) and the disk at output_dir, with the CLM_ASSUME_* overrides applied."""
    gpus, gpu_note = gpus_free(ranks, every_gpu)
    ram = env_gib(HOST_RAM_OVERRIDE)
    ram_note = f" ({HOST_RAM_OVERRIDE})" if ram is not None else ""
    if ram is None:
        ram = psutil.virtual_memory().available
    disk_note = f" ({FREE_DISK_OVERRIDE})" if os.environ.get(FREE_DISK_OVERRIDE) else ""
    return Machine(gpus=gpus, gpu_note=gpu_note, ram=ram, ram_note=ram_note, disk=free_disk_bytes(output_dir),
                   disk_path=nearest_existing(output_dir), disk_note=disk_note,
                   bf16=bf16_on_gpu(assumed_gpu=env_gib(GPU_OVERRIDE) is not None))


# ---------------------------------------------------------------- files the user hands over


def read_json_object(path, label, advice):
    """A JSON file that must hold an object; every way it can fail is one line: '<label><path>: ...; <advice>'."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{label}{path}: no such file; {advice}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{label}{path}: not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}; "
                         f"fix it or {advice}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{label}{path}: cannot read it ({err}); {advice}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{label}{path}: expected a JSON object; {advice}")
    return value


def read_deepspeed_config(path):
    """The DeepSpeed config as a dict (None without one); invalid JSON is a user error."""
    if not path:
        return None
    if isinstance(path, dict):
        return path
    return read_json_object(path, "--deepspeed ", "start from the shipped ds_config.json")


def same_on_every_process(value):
    """rank 0's `value` on every process of a launched run (each process probes its own GPU and the RAM free at its
    own moment: a choice made from them must still be the same everywhere); `value` itself otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]

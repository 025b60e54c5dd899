"""The build lock a killed run leaves behind when DeepSpeed compiles its CPU ops.

torch builds DeepSpeed's CPU ops (CPU Adam) the first time they are used, in its extensions folder, holding a `lock`
file there; every later run takes the lock too, even to find the build done. A run killed while building (SIGKILL,
power loss, a pre-empted machine) leaves the lock behind, and every later run would wait on it forever, printing
nothing.
"""

import contextlib
import glob
import os
import sys
import time

import psutil
from torch.utils.cpp_extension import get_default_build_root

from .machine import first_process

# A lock younger than this may belong to a build that is only starting (ninja not yet running).
STALE_LOCK_SECONDS = 30


def build_folders(op_name="*"):
    """A glob of the folder torch builds each extension (`op_name`) in: straight under TORCH_EXTENSIONS_DIR when it
    is set, else under a folder per Python and CUDA version."""
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    return os.path.join(chosen, op_name) if chosen else os.path.join(get_default_build_root(), "*", op_name)


def built(op_name):
    """Whether torch's extensions folder holds a finished build of DeepSpeed's `op_name` (e.g. cpu_adam)."""
    return bool(glob.glob(os.path.join(build_folders(op_name), f"{op_name}.so")))


def announce_cpu_adam_build(ds_config):
    """A line before the minute or more DeepSpeed spends compiling its CPU Adam the first time on a machine, during
    which nothing else is printed."""
    zero = (ds_config or {}).get("zero_optimization") or {}
    offloaded = (zero.get("offload_optimizer") or {}).get("device", "none") in ("cpu", "nvme")
    if offloaded and not built("cpu_adam") and first_process():
        print("notice: building DeepSpeed's CPU Adam once on this machine (about a minute, with a C++ compiler); later "
              "runs reuse it", flush=True)


def clear_stale_build_locks():
    """Remove each lock older than STALE_LOCK_SECONDS that no process works beside (ninja and the compiler run in
    the lock's folder)."""
    locks = glob.glob(os.path.join(build_folders(), "lock"))
    if not locks:
        return
    working_in = {p.info["cwd"] for p in psutil.process_iter(["cwd"]) if p.info.get("cwd")}
    for lock in locks:
        folder = os.path.dirname(lock)
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.path.getmtime(lock) < STALE_LOCK_SECONDS:
                continue
            if any(cwd == folder or cwd.startswith(folder + os.sep) for cwd in working_in):
                continue
            os.remove(lock)
            if first_process():
                print(f"notice: removed {lock}, left by a build of {os.path.basename(folder)} that was killed; "
                      "it is built again now", file=sys.stderr, flush=True)

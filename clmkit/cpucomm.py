"""DeepSpeed on the CPU (--use_cpu): its communication layer, started early for ZeRO-3 and tidied after."""

import contextlib
import importlib
import io
import os

import torch.distributed as dist
from transformers import TrainerCallback

# DeepSpeed's CPU accelerator (ops/csrc/cpu/comm/shm.cpp) gives every process a 66 MB POSIX shared-memory segment
# for its all-reduce, named after the user, MASTER_ADDR, MASTER_PORT and the rank, and never unlinks it: each CPU run
# under DeepSpeed would leave one file in /dev/shm per process, RAM held until someone deletes it or the machine
# reboots (a day of test runs leaves hundreds of them, tens of GB).
SHARED_MEMORY_NAME = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


def deepspeed_on_cpu(training_args):
    """A --deepspeed run with --use_cpu: DeepSpeed's CPU accelerator, what this module is about."""
    return bool(training_args.deepspeed and training_args.use_cpu)


def quiet_shared_memory_build():
    """DeepSpeed prints a line each time a CPU run loads its shared-memory all-reduce op ("... built successfully");
    the op is the same every run, so the line only adds noise. Any error it raises still shows."""
    torch_comm = importlib.import_module("deepspeed.comm.torch")  # the module, not its `torch` attribute

    build = torch_comm.build_shm_op
    if getattr(build, "quiet", False):
        return

    def quiet_build():
        with contextlib.redirect_stdout(io.StringIO()):
            return build()

    quiet_build.quiet = True
    torch_comm.build_shm_op = quiet_build


def prepare_deepspeed_on_cpu(training_args):
    """Before the model is built, for a DeepSpeed run with --use_cpu: its op build made quiet, and DeepSpeed handed the
    process group. accelerate starts torch.distributed (gloo) itself and DeepSpeed's own communication layer waits
    for deepspeed.initialize; but ZeRO-3 builds the model inside deepspeed.zero.Init before that, which then counts 1
    process and refuses the batch arithmetic of several. On GPUs accelerate starts DeepSpeed's layer first."""
    if not deepspeed_on_cpu(training_args):
        return
    quiet_shared_memory_build()
    if training_args.world_size == 1:
        return
    import deepspeed

    if dist.is_initialized() and not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend())


def release_shared_memory(training_args):
    """Unlink this process's all-reduce segment, if a DeepSpeed run on the CPU made one. Its peers must have mapped
    it already (they do inside DeepSpeed's communication start, before any collective completes); the mappings stay
    valid until each process ends."""
    if not deepspeed_on_cpu(training_args):
        return
    name = SHARED_MEMORY_NAME.format(uid=os.getuid(), addr=os.environ.get("MASTER_ADDR", ""),
                                     port=os.environ.get("MASTER_PORT", ""), rank=training_args.process_index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


class ReleaseSharedMemory(TrainerCallback):
    """At the start of training, once every rank is past deepspeed.initialize (a barrier proves it), so that a run
    killed later leaves nothing in /dev/shm either. run_clm.py calls release_shared_memory again at the end, for
    runs that only evaluate."""

    def on_train_begin(self, args, state, control, **kwargs):
        if not deepspeed_on_cpu(args):
            return  # no segment, and no barrier to wait at
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        release_shared_memory(args)

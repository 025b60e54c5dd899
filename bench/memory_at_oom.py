#!/usr/bin/env python
"""Where a run's GPU memory is when it runs out: run_clm.py, and on a CUDA out-of-memory error the CUDA tensors that
have a Python object (the traceback keeps the frames alive), summed by kind (weight, gradient, other), type, shape and
dtype, largest first; tensors that never had one (most of autograd's saved activations, the allocator's workspaces)
are the rest of the allocated total. Into the log and $OUT/memory_at_oom.txt.
    OUT=/tmp/out python bench/memory_at_oom.py run_clm.py FLAGS...
"""

import collections
import gc
import os
import runpy
import sys

# run_clm.py's allocator setting, made before torch is imported here
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from clmkit.in_backward import tensor_leaves  # noqa: E402


def census():
    objects = []
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor):
                objects.append(o)
        except ReferenceError:  # a weak proxy whose object is gone
            pass
    weights = {id(o) for o in objects if isinstance(o, torch.nn.Parameter)}
    grads = {id(o.grad) for o in objects if isinstance(o, torch.nn.Parameter) and o.grad is not None}
    seen, groups = set(), collections.defaultdict(lambda: [0, 0])
    for o in objects:
        for leaf in tensor_leaves(o):
            if leaf.device.type != "cuda":
                continue
            try:
                storage = leaf.untyped_storage()
                ptr = storage.data_ptr()
            except (RuntimeError, NotImplementedError):  # the compiler's fake tensors, which hold no memory
                continue
            if ptr in seen:
                continue
            seen.add(ptr)
            kind = "weight" if id(o) in weights else "grad" if id(o) in grads else "other"
            key = (kind, type(o).__name__, tuple(o.shape), str(leaf.dtype))
            groups[key][0] += storage.nbytes()
            groups[key][1] += 1
    total = sum(size for size, _ in groups.values())
    allocated, peak = torch.cuda.memory_allocated() / 2**30, torch.cuda.max_memory_allocated() / 2**30
    lines = [f"allocated {allocated:.2f} GiB (peak {peak:.2f}), of which Python reaches {total / 2**30:.2f} GiB:"]
    by_kind = collections.Counter()
    for (kind, *_), (size, _) in groups.items():
        by_kind[kind] += size
    lines.append("  " + ", ".join(f"{kind} {size / 2**30:.2f} GiB" for kind, size in by_kind.most_common()))
    for (kind, name, shape, dtype), (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:30]:
        lines.append(f"{size / 2**20:10.1f} MiB {count:5d}x {kind:6s} {name} {shape} {dtype}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except torch.OutOfMemoryError as err:
        text = f"{str(err).splitlines()[0][:120]}\n{census()}"
        print(text, file=sys.stderr, flush=True)
        if os.environ.get("OUT"):
            with open(os.path.join(os.environ["OUT"], "memory_at_oom.txt"), "a") as f:
                f.write(text + "\n\n")
        raise

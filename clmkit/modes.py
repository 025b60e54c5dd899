"""The ways this tool trains ("modes"), each one declared object: its name, precision, engine and optimizer, the
flags it sets, its memory terms for the plan, what it needs from the machine and what it changes in training.
Parsing, the checks, the plan, loading, the trainer and the benchmark ask this module which mode a run is in; none of
them works the mode out again from the flags.

A run names its mode with --mode, spells it with the flags of earlier releases (`--deepspeed ds_config.json`,
`--bf16 --dtype bfloat16 --optim adamw_torch_8bit ...`: they run exactly as written), or leaves it to `auto`, which
the plan resolves to the fastest mode that fits this machine (clmkit/plan.py: Plan.choice).
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from .errors import UsageError

AUTO = "auto"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_DS_CONFIG = os.path.join(REPO, "ds_config.json")
LOW_BIT_OPTIM = "adamw_torch_8bit"
# The final eval loss a mode may end at against the classic recipe's (300 steps from the same random init,
# bench/parity.py) for `auto` to pick it without being asked: the bar docs/parity.md holds every row to.
PARITY_BAR = 0.01
# Flags that split the user's batch (sequences per optimizer step): a mode may split it otherwise, keeping the product.
BATCH_FLAGS = ("per_device_train_batch_size", "gradient_accumulation_steps")


@dataclass(frozen=True)
class Mode:
    name: str
    title: str  # in a sentence: "the bf16 mode"
    precision: str  # the weights' dtype as trained: fp16, bf16, fp32; "half" for the classic recipe's --fp16/--bf16
    engine: str
    optimizer: str
    # Flags it sets (dataclass field -> value). A given flag with another value contradicts the mode; a tuple lists
    # the values it accepts, the first being the one it sets.
    flags: dict = field(default_factory=dict)
    gpu_flags: dict = field(default_factory=dict)  # set on a GPU only (--fp16 needs one)
    # Speed switches it turns on where the user said nothing; the user's own value wins without complaint.
    switches: dict = field(default_factory=dict)
    gpu_switches: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)  # its memory terms: the plan's Setup fields (clmkit/plan.py)
    needs_bf16: bool = False  # a GPU with bf16 (Ampere or newer), or the CPU
    one_process: bool = False  # a single GPU: its steps cannot wait for gradients shared between processes
    whole_batch: bool = False  # no accumulation: each optimizer step is one micro-batch
    changes: tuple = ()  # what it does differently from fp32 AdamW with clipping and accumulation, in words
    parity: Optional[float] = None  # measured final eval loss against the classic recipe's (relative)
    tokens_per_s: Optional[int] = None  # measured on GPT-2 XL's shapes, an H200 capped at 16 GiB: auto's order

    def declared(self, gpu: bool) -> dict:
        """The flags it declares on this machine: field -> the value it sets, or a tuple of those it accepts."""
        return dict(self.flags, **(self.gpu_flags if gpu else {}))

    def sets(self, gpu: bool) -> dict:
        """The flags this mode sets (what it accepts collapsed to what it sets)."""
        return {key: value[0] if isinstance(value, tuple) else value for key, value in self.declared(gpu).items()}

    def accepts(self, key, value, gpu: bool) -> bool:
        wanted = self.declared(gpu).get(key, value)
        return value in wanted if isinstance(wanted, tuple) else value == wanted

    def defaults(self, gpu: bool) -> dict:
        return dict(self.switches, **(self.gpu_switches if gpu else {}))


BF16_FLAGS = {"deepspeed": (None, ""), "bf16": True, "fp16": False, "dtype": "bfloat16", "optim": LOW_BIT_OPTIM,
              "optim_args": "bf16_stochastic_round=True", "optimizer_in_backward": False,
              "optimizer_state_on_host": False}
LOW_BIT_SETUP = {"deepspeed": "", "stage": 0, "offload_optimizer": False, "offload_param": False, "pin_memory": False,
                 "overlap_comm": False, "optim": LOW_BIT_OPTIM, "chunked": True, "in_backward": False,
                 "state_on_host": False}
BF16_CHANGES = ("bf16 weights rounded stochastically (no fp32 copy)", "AdamW's m and v in 8 bits (torchao)")
IN_BACKWARD_CHANGES = ("each weight steps in the backward pass: no accumulation, and gradients clipped by the last "
                       "step's norm (the first step's measured by one extra pass)",)

MODES = (
    Mode("classic", "the classic recipe", "half", "DeepSpeed ZeRO-2, the Adam state in CPU RAM",
         "DeepSpeed's CPU Adam on fp32 master weights",
         flags={"deepspeed": SHIPPED_DS_CONFIG, "optimizer_in_backward": False, "optimizer_state_on_host": False},
         setup={"deepspeed": "ds_config.json", "stage": 2, "offload_optimizer": True, "offload_param": False,
                "pin_memory": True, "reduce_bucket": 0, "overlap_comm": True, "optim": "adamw_torch",
                "in_backward": False, "state_on_host": False},
         parity=0.0, tokens_per_s=7_500),
    Mode("bf16-in-backward", "the bf16 mode stepped in the backward", "bf16", "plain PyTorch",
         "8-bit AdamW (torchao), one per weight, stepped as its gradient completes (a block's weights in one call)",
         flags=dict(BF16_FLAGS, optimizer_in_backward=True),
         switches={"chunked_loss": True}, gpu_switches={"torch_compile": True},
         setup=dict(LOW_BIT_SETUP, precision="bf16", weights="bf16", in_backward=True),
         needs_bf16=True, one_process=True, whole_batch=True, changes=BF16_CHANGES + IN_BACKWARD_CHANGES,
         parity=0.0016, tokens_per_s=30_002),
    Mode("bf16", "the bf16 mode", "bf16", "plain PyTorch", "8-bit AdamW (torchao) after the backward pass",
         flags=BF16_FLAGS, switches={"chunked_loss": True}, gpu_switches={"torch_compile": True},
         setup=dict(LOW_BIT_SETUP, precision="bf16", weights="bf16"),
         needs_bf16=True, changes=BF16_CHANGES, parity=-0.0020, tokens_per_s=17_371),
    Mode("fp16", "the fp16 mode", "fp16", "plain PyTorch", "8-bit AdamW rounding stochastically under a loss scale",
         flags={"deepspeed": (None, ""), "bf16": False, "dtype": "float16", "optim": LOW_BIT_OPTIM,
                "optimizer_in_backward": False, "optimizer_state_on_host": False},
         gpu_flags={"fp16": True}, switches={"chunked_loss": True},
         setup=dict(LOW_BIT_SETUP, precision="fp16", weights="fp16"),
         changes=("fp16 weights rounded stochastically under a loss scale (no fp32 copy)",
                  "AdamW's m and v in 8 bits"),
         parity=-0.0010, tokens_per_s=15_900),
    Mode("bf16-state-on-host", "the bf16 mode stepped in the backward, its state in host RAM", "bf16",
         "plain PyTorch", "8-bit AdamW stepped in the backward, each weight's state copied in from pinned host RAM",
         flags=dict(BF16_FLAGS, optimizer_in_backward=True, optimizer_state_on_host=True),
         switches={"chunked_loss": True}, gpu_switches={"torch_compile": True},
         setup=dict(LOW_BIT_SETUP, precision="bf16", weights="bf16", in_backward=True, state_on_host=True),
         needs_bf16=True, one_process=True, whole_batch=True,
         changes=BF16_CHANGES + IN_BACKWARD_CHANGES + ("the optimizer state in host RAM",),
         parity=0.0018, tokens_per_s=9_604),  # bf16-in-backward's steps, one weight at a time (its parity then)
    Mode("fp32", "full precision", "fp32", "plain PyTorch", "the Trainer's --optim (AdamW) on fp32 weights",
         flags={"deepspeed": (None, ""), "dtype": (None, "auto", "float32"), "optimizer_in_backward": False,
                "optimizer_state_on_host": False},
         setup={"deepspeed": "", "stage": 0, "offload_optimizer": False, "offload_param": False,
                "pin_memory": False, "overlap_comm": False, "in_backward": False, "state_on_host": False,
                "weights": "fp32", "optim": "adamw_torch"},
         parity=0.0),
)
BY_NAME = {mode.name: mode for mode in MODES}
NAMES = tuple(BY_NAME)


def get(name) -> Mode:
    return BY_NAME[name]


def spelled(given: dict) -> Optional[str]:
    """The mode the flags of earlier releases spell (given: the flags on the command line, by field, with their
    values), or None when they leave it open. Such a run keeps exactly the flags it was given."""
    if given.get("deepspeed"):
        return "classic"
    dtype = given.get("dtype")
    if dtype == "bfloat16":
        return "bf16-state-on-host" if given.get("optimizer_state_on_host") else \
            "bf16-in-backward" if given.get("optimizer_in_backward") else "bf16"
    if dtype == "float16" or (given.get("fp16") and given.get("optim") == LOW_BIT_OPTIM):
        return "fp16"
    if dtype == "float32" or given.get("optim") not in (None, LOW_BIT_OPTIM) or given.get("optimizer_in_backward"):
        return "fp32"  # the user's own optimizer, or fp32 weights (stepped in the backward or not)
    return None


def of(training_args) -> Mode:
    """The mode a run trains in: its settled --mode; for arguments no run settled, the mode their flags spell."""
    name = getattr(training_args, "mode", AUTO)
    if name in BY_NAME:
        return BY_NAME[name]
    optim = getattr(training_args, "optim", None)
    values = {"deepspeed": getattr(training_args, "deepspeed", None), "fp16": getattr(training_args, "fp16", False),
              "optim": getattr(optim, "value", optim),
              "optimizer_in_backward": getattr(training_args, "optimizer_in_backward", False),
              "optimizer_state_on_host": getattr(training_args, "optimizer_state_on_host", False)}
    return BY_NAME[spelled(values) or "fp32"]


def contradictions(mode: Mode, given: dict, gpu: bool) -> list:
    """[(flag, its given value, the mode's)] of each given flag that contradicts the mode."""
    sets = mode.sets(gpu)
    return [(key, given[key], sets[key]) for key in sets if key in given and not mode.accepts(key, given[key], gpu)]


def as_flag(key, value):
    if isinstance(value, bool):
        return f"--{key}" if value else f"--no_{key}" if key in ("chunked_loss",) else f"--{key} False"
    return f"--{key} {'(none)' if value is None else value}"


def contradiction_problems(mode: Mode, given: dict, gpu: bool, how: str) -> list:
    """One line for each given flag --mode NAME contradicts. how: how the mode was chosen, in words."""
    return [f"--mode {mode.name} ({how}) sets {as_flag(key, wanted)} but {as_flag(key, value)} was given; drop "
            f"{as_flag(key, value).split()[0]}, or choose another mode (--mode auto picks one that fits)"
            for key, value, wanted in contradictions(mode, given, gpu)]


def flag_values(mode: Mode, given: dict, gpu: bool) -> dict:
    """The flags to run the mode with: what it sets and its switches, where the user gave nothing."""
    values = {key: value for key, value in dict(mode.defaults(gpu), **mode.sets(gpu)).items()
              if key not in given and value is not None}
    if mode.precision == "half" and not (given.get("fp16") or given.get("bf16")):
        values["fp16"] = gpu  # the classic guide's --fp16; on the CPU DeepSpeed trains fp32
    return values


def half_precision(mode: Mode, fp16: bool, bf16: bool):
    """The dtype a weight is loaded in for the mode: its own 16-bit type, the classic recipe's --fp16/--bf16 (DeepSpeed
    casts the model to it and keeps its own fp32 copy), or None for fp32 (the checkpoint's own dtype)."""
    if mode.precision == "half":
        return "float16" if fp16 else "bfloat16" if bf16 else None
    return {"bf16": "bfloat16", "fp16": "float16"}.get(mode.precision)


def check_name(name):
    if name != AUTO and name not in BY_NAME:
        raise UsageError(f"--mode {name}: unknown; use auto or one of {', '.join(NAMES)}")

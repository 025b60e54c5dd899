"""Command-line arguments of run_clm.py: model, data and training flags, or one JSON file of them."""

import argparse
import dataclasses
import difflib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Optional

from transformers import HfArgumentParser, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from . import modes
from .checks import deepspeed_file_problems, machine_precision_problems, number_problems, out_of_range
from .errors import UsageError
from .loading import CHECKPOINTING
from .machine import (CARDS, GPU_OVERRIDE, assume_machine, env_gib, first_process, read_json_object,
                      stand_in_for_launcher)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Model to fine-tune: a hub name (e.g. gpt2-xl) or a local folder. "
                          "Leave unset to train from scratch with --model_type or --config_name."},
    )
    model_type: Optional[str] = field(
        default=None,
        metadata={"help": "Architecture to build from scratch when --model_name_or_path is unset (e.g. gpt2)."},
    )
    config_name: Optional[str] = field(
        default=None,
        metadata={"help": "Config (name or folder) to use instead of the one that comes with the model."},
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated key=value pairs that override the config, e.g. "
                          "'n_embd=1600,n_layer=48,n_head=25'. Only when building from scratch."},
    )
    tokenizer_name: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer (name or folder) if it differs from the model's."},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where downloaded models and processed datasets are cached."},
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "Model version to use: a branch, tag or commit id."},
    )
    token: Optional[str] = field(
        default=None,
        metadata={"help": "Hub token for private models (or log in with `hf auth login`)."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model code from the hub to run on this machine. Only for repositories you trust."},
    )
    fused_gelu: bool = field(
        default=True,
        metadata={"help": "Build a model whose config says gelu_new (GPT-2, GPT-Neo, GPT-J) with PyTorch's one-kernel "
                          "tanh GELU: the same function, faster; the saved config still says gelu_new. "
                          "--no_fused_gelu keeps the original seven-operation version."},
    )
    dtype: Optional[str] = field(
        default=None,
        metadata={"help": "dtype the weights are loaded in. Default: under DeepSpeed with --fp16/--bf16, that half "
                          "precision (DeepSpeed keeps its own fp32 master copy); otherwise the checkpoint's own "
                          "(float32 for GPT-2), which the Trainer's mixed precision needs. bfloat16 without "
                          "DeepSpeed trains pure bf16 weights (pair it with --optim adamw_torch_8bit "
                          "--optim_args bf16_stochastic_round=True).",
                  "choices": ["auto", "bfloat16", "float16", "float32"]},
    )


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Train on a dataset instead of files: its name on the Hub (read from the datasets cache "
                          "when offline), or a local folder of data files or written by save_to_disk. Its "
                          "'validation' split is evaluated on; without one, the first --validation_split_percentage "
                          "percent of its train rows are held out. Text comes from --text_column (else its first column), "
                          "or its prompt/completion columns."},
    )
    dataset_config_name: Optional[str] = field(
        default=None, metadata={"help": "The configuration of --dataset_name, where it has several (e.g. "
                                        "wikitext-2-raw-v1 of wikitext)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the training text as a stream, tokenized and cut as training takes it, instead of all "
                          "of it first: for data larger than the disk or RAM would hold processed. Needs --max_steps; "
                          "a rerun goes on from its checkpoint where the stream left off. Evaluation reads "
                          "--validation_file (or the dataset's validation split) whole."},
    )
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Training text: a .txt file (one document), or a .csv or .json/.jsonl file with a 'text' "
                          "column, or with 'prompt' and 'completion' columns."}
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Evaluation text, in any of the formats of --train_file."}
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Without --validation_file (or a validation split of --dataset_name), the percentage of "
                          "the training examples held out for evaluation."},
    )
    text_column: str = field(
        default="text", metadata={"help": "Column of the csv/json files that holds the text."}
    )
    prompt_column: str = field(
        default="prompt",
        metadata={"help": "In a csv/json file of prompt/completion examples (one without the text column): the "
                          "column of the prompts. Each example is trained as one sequence, the prompt followed by "
                          "its completion, with the loss on the completion's tokens only."},
    )
    completion_column: str = field(
        default="completion", metadata={"help": "The column of the completions (see --prompt_column)."}
    )
    block_size: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per training sequence. Default: the model's context length, at most 1024."},
    )
    separate_examples: bool = field(
        default=False,
        metadata={"help": "Train on each example on its own (truncated or padded to --block_size, padding "
                          "masked out of the loss) instead of concatenating all texts and cutting blocks."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first N training sequences (for quick runs)."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep only the first N evaluation sequences."}
    )
    keep_linebreaks: bool = field(
        default=True,
        metadata={"help": "No effect, kept so older command lines still run: a .txt file is always read whole, as "
                          "one example with its line breaks (the row texttocsv.py makes of it). "
                          "--no_keep_linebreaks with a .txt file is refused; for one example per line, convert "
                          "with texttocsv.py --split line."},
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Tokenize again instead of reusing the cached datasets."}
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes used to tokenize."}
    )


CHECKPOINTING_HELP = "Recompute activations in the backward pass: the memory that lets GPT-2 XL fit 16 GB."


@dataclass
class ClmTrainingArguments(TrainingArguments):
    """TrainingArguments with the defaults this tool wants."""

    def __post_init__(self):
        if CHECKPOINTING == "activation_checkpointing" and self.gradient_checkpointing is not None:
            # The old name, given: it sets the new one, without the library's deprecation warning.
            self.activation_checkpointing, self.gradient_checkpointing = self.gradient_checkpointing, None
        super().__post_init__()

    mode: str = field(
        default=modes.AUTO,
        metadata={"help": "The way to train. auto (the default): the fastest that fits this machine, as --plan shows: "
                          "on a 16 GB card with bf16 the bf16 mode (stepped in the backward where the batch fits one "
                          "micro-batch), on a card without bf16 the fp16 mode, for a 3-7B model the 8-bit state in "
                          "host RAM, without a GPU fp32. Or one of: classic (DeepSpeed ZeRO-2, Adam state in CPU RAM), "
                          "bf16, bf16-in-backward, bf16-state-on-host, fp16, fp32 "
                          "(docs/modes.md). A rerun goes on in the mode its checkpoint was written in.",
                  "choices": [modes.AUTO, *modes.NAMES]},
    )
    machine: Optional[str] = field(
        default=None,
        metadata={"help": "With --plan: plan for a machine you do not have, a card by name (" + ", ".join(CARDS)
                          + ") or its figures, e.g. gpu=15,ram=12.7,bf16=no (a free notebook's T4: --machine t4)."},
    )
    if CHECKPOINTING == "activation_checkpointing":
        activation_checkpointing: bool = field(
            default=True,
            metadata={"help": CHECKPOINTING_HELP + " --no_activation_checkpointing (or --no_gradient_checkpointing) "
                                                   "turns it off."},
        )
    else:
        gradient_checkpointing: bool = field(
            default=True, metadata={"help": CHECKPOINTING_HELP + " --no_gradient_checkpointing turns it off."},
        )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from step 0 even if output_dir holds checkpoints of an earlier run "
                          "(by default a rerun resumes from the newest complete one)."},
    )
    chunked_loss: bool = field(
        default=False,
        metadata={"help": "Compute the loss over the vocabulary in chunks so the full fp32 logits never exist: "
                          "saves several GB at micro-batch 8 on GPT-2 XL, room for a larger micro-batch. On in every "
                          "mode but classic and fp32; --chunked_loss False turns it off."},
    )
    padded_lm_head: bool = field(
        default=True,
        metadata={"help": "With --chunked_loss, multiply by the LM head padded with zero rows to a multiple of 128 "
                          "(GPT-2: 50,257 -> 50,304), whose logits a GPU's fast matrix kernels can write; the padded "
                          "logits are dropped before the loss, so the loss is the same, and the saved model keeps "
                          "its vocabulary. --no_padded_lm_head multiplies by the head as it is."},
    )
    optimizer_in_backward: bool = field(
        default=False,
        metadata={"help": "Step each weight in the backward pass as soon as its gradient is complete, and free the "
                          "gradient there: the full set of gradients (2 bytes a parameter in bf16) never exists, room "
                          "for a larger model. One GPU, no --deepspeed, no --fp16; needs "
                          "--gradient_accumulation_steps 1. --max_grad_norm clips each gradient by the last step's "
                          "norm (the first step's is measured by one extra pass)."},
    )
    optimizer_state_on_host: bool = field(
        default=False,
        metadata={"help": "With --optimizer_in_backward, keep the optimizer state in pinned host RAM and copy each "
                          "weight's state to the GPU only while that weight steps: the GPU holds the weights and one "
                          "weight's state (the bf16 mode's 8-bit state is 2 bytes a parameter, 12 GB for a 6B "
                          "model), at the cost of copying the state both ways over PCIe every step."},
    )
    plan: bool = field(
        default=False,
        metadata={"help": "Check the flags, print the memory plan (GPU, host RAM and disk needed against what this "
                          "machine has, a verdict and the one change most likely to make it fit) and exit, without "
                          "loading data or weights. --machine plans for a machine you do not have."},
    )
    # Filled by parse_args, not flags: the flags the command line gave (field -> value), and its flags as read.
    given_flags: dict = field(default_factory=dict, init=False, repr=False)
    command_flags: list = field(default_factory=list, init=False, repr=False)

    prediction_loss_only: bool = field(
        default=True,
        metadata={"help": "Evaluate the loss only; keeping GPT-2 XL's logits for every eval token would fill memory."},
    )
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log the training loss every N optimizer steps (these points make loss.png)."},
    )


# Flags from the classic guide (Transformers 4) that were renamed or removed since.
RENAMED_FLAGS = {
    "--evaluation_strategy": "--eval_strategy",
    "--no_cuda": "--use_cpu",
    "--per_gpu_train_batch_size": "--per_device_train_batch_size",
    "--per_gpu_eval_batch_size": "--per_device_eval_batch_size",
    "--torch_dtype": "--dtype",
    "--use_auth_token": "--token",
    "--warmup_ratio": "--warmup_steps",  # a warmup_steps below 1 is read as a ratio
}
# Flags that no longer do anything: dropped with their value, if they take one.
DROPPED_FLAGS = {
    "--save_safetensors": "weights are always saved as safetensors",
    "--logging_dir": "logs go to output_dir",
    "--fp16_backend": "mixed precision is handled by DeepSpeed or torch.amp",
    "--half_precision_backend": "mixed precision is handled by DeepSpeed or torch.amp",
    # upstream run_clm.py's flags that today's Transformers has made moot
    "--use_fast_tokenizer": "every tokenizer is read with its fast (Rust) implementation",
    "--no_use_fast_tokenizer": "every tokenizer is read with its fast (Rust) implementation, which Transformers 5 "
                               "uses for all of them",
    "--low_cpu_mem_usage": "weights are always loaded without a first random copy in Transformers 5",
}


def translate_legacy_flags(argv: list[str]) -> list[str]:
    """Rewrite renamed flags to today's names, with a one-line notice for each."""
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name == "--no_gradient_checkpointing" and CHECKPOINTING == "activation_checkpointing":
            out.append("--no_activation_checkpointing")  # this tool's own flag, by the name Transformers reads now
        elif name in RENAMED_FLAGS:
            new = RENAMED_FLAGS[name]
            if first_process():  # every rank parses the same flags
                print(f"notice: {name} is now {new}; using {new}", file=sys.stderr)
            out.append(new + eq + value)
        elif name in DROPPED_FLAGS:
            if first_process():
                print(f"notice: {name} is ignored ({DROPPED_FLAGS[name]})", file=sys.stderr)
            takes_value = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            i += 1 if takes_value else 0
        else:
            out.append(arg)
        i += 1
    return out


DESCRIPTION = """Fine-tune every parameter of a causal language model on your text, on one or more GPUs.

  python run_clm.py --model_name_or_path gpt2-xl --train_file train.csv --validation_file validation.csv \\
      --do_train --do_eval --output_dir finetuned

--mode auto (the default) trains in the fastest way that fits this machine; --plan shows which and why.
Flags can also come from one JSON file of {"flag": value} pairs (python run_clm.py args.json); flags after the
file override its values. Rerunning the same command resumes from the newest checkpoint in --output_dir.
This tool's own flags come first below, then those of Transformers' Trainer."""


# The Trainer's flags in groups a reader looks for, by the first rule that names the field; the rest come last.
TRAINER_GROUPS = (
    ("what to run and where results go", ("do_train", "do_eval", "do_predict", "output_dir",
                                          "resume_from_checkpoint", "seed", "data_seed", "full_determinism")),
    ("batch, schedule and optimizer", ("per_device_", "gradient_accumulation", "num_train_epochs", "max_steps",
                                       "learning_rate", "lr_scheduler", "warmup", "optim", "weight_decay", "adam_",
                                       "max_grad_norm", "label_smoothing", "auto_find_batch_size", "neftune",
                                       "average_tokens")),
    ("precision, memory and speed", ("bf16", "fp16", "tf32", "gradient_checkpointing", "activation_checkpointing", "torch_compile", "liger",
                                     "use_cache", "torch_empty_cache", "use_cpu", "deepspeed")),
    ("evaluation, saving and logging", ("eval", "prediction_loss_only", "include_", "batch_eval", "save_",
                                        "enable_jit_checkpoint", "logging_", "log_", "disable_tqdm",
                                        "load_best_model", "metric_for_best", "greater_is_better")),
    ("reporting and the model hub", ("report_to", "run_name", "project", "trackio", "push_to_hub", "hub_")),
)


def plain_training_args(args):
    """`args` as Transformers' own TrainingArguments, without this tool's fields: the training_args.bin a checkpoint
    holds, which plain Transformers (and torch.load) then read without clmkit on the path."""
    plain = TrainingArguments.__new__(TrainingArguments)  # no __post_init__: nothing is set up again
    ours = {f.name for f in dataclasses.fields(args)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    plain.__dict__.update({name: value for name, value in vars(args).items() if name not in ours})
    return plain


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A page up to 120 columns wide (argparse's own wraps each paragraph at about 55 characters, doubling the page),
    each flag named once."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=36, width=min(120, shutil.get_terminal_size((120, 24)).columns))

    def _get_default_metavar_for_optional(self, action):
        return {int: "N", float: "NUMBER"}.get(action.type, "VALUE")

    def _format_action_invocation(self, action):
        # One name a flag (--overwrite_output_dir, not also --overwrite-output-dir), its value once.
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        value = "[true|false]" if action.nargs == "?" and action.const is True else \
            self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{action.option_strings[0]} {value}"


def make_parser():
    parser = HfArgumentParser((ModelArguments, DataArguments, ClmTrainingArguments), description=DESCRIPTION,
                              usage="run_clm.py [FLAGS] | run_clm.py FLAGS.json [FLAGS]",
                              formatter_class=HelpFormatter, allow_abbrev=False)
    parser.error = _one_line_error  # argparse would print the whole usage (hundreds of flags) first
    # Ours first, the run's own switches (--mode, --plan, --chunked_loss) ahead of the model and data flags.
    switches = [name for name in ClmTrainingArguments.__dataclass_fields__
                if name not in TrainingArguments.__dataclass_fields__]
    own = switches + [f.name for kind in (ModelArguments, DataArguments) for f in dataclasses.fields(kind)]
    actions = [a for a in parser._optionals._group_actions if a.dest != "help"]
    _each_pair_once(actions)
    groups = [("this tool's flags", sorted((a for a in actions if a.dest in own), key=lambda a: own.index(a.dest)))]
    rest = [a for a in actions if a.dest not in own]
    for title, rules in TRAINER_GROUPS:
        taken = [a for a in rest if any(a.dest == rule or a.dest.startswith(rule) for rule in rules)]
        groups.append((f"Trainer flags: {title}", taken))
        rest = [a for a in rest if a not in taken]
    groups.append(("other Trainer flags (TrainingArguments: distributed set-ups, data loading, ...)", rest))
    for title, members in groups:
        parser.add_argument_group(title)._group_actions = members
    parser._optionals._group_actions = [a for a in parser._optionals._group_actions if a.dest == "help"]
    return parser


def _each_pair_once(actions):
    """A --X/--no_X pair shows one paragraph: --no_X's (the same text again) is hidden, and --X's names it."""
    by_dest = {}
    for action in actions:
        by_dest.setdefault(action.dest, []).append(action)
    for pair in by_dest.values():
        negative = [a for a in pair if any(option.startswith("--no_") for option in a.option_strings)]
        positive = [a for a in pair if a not in negative]
        for action in negative:
            action.help = argparse.SUPPRESS
        for action in positive:
            if negative and action.help and "--no_" not in action.help:
                action.help += f" --no_{action.dest} turns it off."


def parse_args(argv=None, notices=True, command=False):
    """(model_args, data_args, training_args, refused) from flags, or one .json file of them and flags after it that
    override its values. `refused` holds one line for each flag TrainingArguments itself refused; those flags are
    set aside (to their defaults) so that the checks can still report every other problem in the same run.
    training_args.given_flags holds the flags the command line gave, by field, with their values as read.
    command: parsing for the run_clm.py process itself, which may stand in for DeepSpeed's launcher (it sets the
    process's environment, which other callers' child processes would inherit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    argv = _with_json_file_flags(argv)
    argv = translate_legacy_flags(argv) if notices else _translated_quietly(argv)
    argv = _negative_values_joined(argv, parser)
    _plan_for_another_machine(parser, argv)
    if command and any(word == "--deepspeed" or word.startswith("--deepspeed=") for word in argv):
        stand_in_for_launcher()  # before TrainingArguments, which starts DeepSpeed's process group
    refused = []
    try:
        model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True
        )
    except ValueError as err:  # raised by TrainingArguments.__post_init__ on contradictory flags
        (model_args, data_args, training_args), refused = _set_aside_refused(err, parser, argv)
        unknown = []
    if unknown:
        raise UsageError(*unknown_flag_problems(unknown, parser))
    if _evaluation_only_under_zero_1_or_2(training_args):
        if first_process():
            print("notice: --do_eval without --do_train: evaluating without DeepSpeed (ZeRO has an evaluation-only "
                  "mode for stage 3 alone; the 16-bit or fp32 weights fit the GPU without it)", file=sys.stderr)
        return parse_args(_without_flag(argv, "--deepspeed"), notices, command)
    settle_warmup(training_args)
    training_args.command_flags = argv
    training_args.given_flags = given_flags(argv, parser, (model_args, data_args, training_args))
    return model_args, data_args, training_args, refused


def with_flags(training_args, flags: dict, command=False):
    """(model_args, data_args, training_args) parsed again from the command's flags with `flags` (field -> value)
    after them, so that those win: the flags of the mode a run settled in. What the command line gave stays
    recorded as given."""
    extra = []
    for key, value in flags.items():
        if value is not None:
            extra += [f"--{key}", str(value)]
    model_args, data_args, new_args, _ = parse_args(training_args.command_flags + extra, notices=False,
                                                    command=command)
    new_args.given_flags = training_args.given_flags
    return model_args, data_args, new_args


NEGATIVE_NUMBER = re.compile(r"-(\d|\.\d|inf\b|nan\b)")


def _negative_values_joined(argv, parser):
    """`--learning_rate -1e-4` as `--learning_rate=-1e-4`: argparse takes a word starting with '-' for a flag and
    says "expected one argument", so the checks' own line about the value never comes."""
    out = []
    for word in argv:
        action = parser._option_string_actions.get(out[-1]) if out and out[-1].startswith("--") else None
        if action is not None and action.nargs != 0 and NEGATIVE_NUMBER.match(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def given_flags(argv, parser, parsed):
    """{field: its value as read} of each flag on the command line (--name, --name=value, --no_name)."""
    dests = set()
    for word in argv:
        action = parser._option_string_actions.get(word.split("=", 1)[0]) if word.startswith("--") else None
        if action is not None:
            dests.add(action.dest)
    values = {}
    for arguments in parsed:
        for name in dests & {f.name for f in dataclasses.fields(arguments)}:
            value = getattr(arguments, name)
            values[name] = getattr(value, "value", value)  # enums (--optim) as the text given
    return values


def _plan_for_another_machine(parser, argv):
    """--machine NAME|FIGURES with --plan: this process plans for that machine (machine.py's assumed figures)."""
    values = vars(parser.parse_known_args(argv)[0])
    if not values.get("machine"):
        return
    if not values.get("plan"):
        raise UsageError(f"--machine {values['machine']}: only with --plan (a run trains on this machine's own GPU); "
                         "add --plan, or drop --machine")
    assume_machine(values["machine"])


def _translated_quietly(argv):
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return translate_legacy_flags(argv)


def _set_aside_refused(err, parser, argv):
    """TrainingArguments raised ValueError: say why in our words, and build the arguments again with the flags we
    blamed set to their defaults. ((model_args, data_args, training_args), problems)."""
    values = vars(parser.parse_known_args(argv)[0])
    if values.get("deepspeed"):
        unset_hf_deepspeed_config()  # a DeepSpeed config that failed half-way made itself the process-wide one
    problems = number_problems(values)
    set_aside = {name: default for name, _, _, default in out_of_range(values)}
    # --plan with CLM_ASSUME_GPU_GIB plans for a GPU this machine lacks: its --bf16 is planned, not refused.
    planning_bf16 = bool(values.get("plan") and values.get("bf16") and env_gib(GPU_OVERRIDE) is not None)
    precision = machine_precision_problems(values.get("fp16"), values.get("bf16"), values.get("use_cpu"),
                                           assume_gpu=planning_bf16)
    if precision or planning_bf16:
        problems, set_aside = problems + precision, dict(set_aside, fp16=False, bf16=False)
    deepspeed = deepspeed_file_problems(values["deepspeed"]) if values.get("deepspeed") else []
    if deepspeed:
        problems, set_aside = problems + deepspeed, dict(set_aside, deepspeed=None)
    try:
        built = _build(parser, dict(values, **set_aside))
    except ValueError as still:  # not (only) what we blamed
        raise UsageError(*problems, f"invalid training flags: {' '.join(str(still).split())}") from None
    if planning_bf16 and not precision:
        built[2].bf16 = True  # only the plan reads it: nothing is trained
        return built, problems
    return built, problems or [f"invalid training flags: {' '.join(str(err).split())}"]


def _build(parser, values):
    built = []
    for kind in parser.dataclass_types:
        names = {f.name for f in dataclasses.fields(kind) if f.init}
        built.append(kind(**{name: value for name, value in values.items() if name in names}))
    return built


def deepspeed_config(training_args):
    """The --deepspeed config as TrainingArguments read it (a dict; "auto" values not yet filled), or None."""
    if not training_args.deepspeed:
        return None
    return training_args.hf_deepspeed_config.config


def settle_warmup(training_args):
    """DeepSpeed's warmup schedulers refuse 0 warmup steps, which is what "auto" gives without --warmup_steps: 1 asks
    for the least they take. Said nowhere: it is what no warmup means under DeepSpeed."""
    scheduler_params = (deepspeed_config(training_args) or {}).get("scheduler", {}).get("params", {})
    if scheduler_params.get("warmup_num_steps") == "auto" and training_args.warmup_steps == 0:
        training_args.warmup_steps = 1


def _evaluation_only_under_zero_1_or_2(training_args):
    """The Trainer refuses to evaluate under ZeRO stage 1 or 2 unless it trained first in the same run."""
    return (training_args.deepspeed and training_args.do_eval and not training_args.do_train
            and not training_args.hf_deepspeed_config.is_zero3())


def _without_flag(argv, name):
    """argv less one flag and its value (`--flag value` or `--flag=value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def _one_line_error(message):
    raise UsageError(f"{message}; see `python run_clm.py --help`")


def unknown_flag_problems(unknown, parser):
    """One line for each flag the parser does not know, with the nearest one it does; a word that is no flag's
    value is named too."""
    known = [option for option in parser._option_string_actions if option.startswith("--")]
    problems = []
    for word in unknown:
        name = word.split("=", 1)[0]
        if not name.startswith("-"):
            if not problems:
                problems.append(f"unexpected argument {word!r}: flags are written --name value; "
                                "see `python run_clm.py --help`")
            continue
        nearest = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
        if "train" not in name and "eval" not in name:  # --per_device_batch_size: the training one is meant
            nearest.sort(key=lambda option: "eval" in option)
        hint = f"did you mean {nearest[0]}?" if nearest else "see `python run_clm.py --help`"
        problems.append(f"unknown flag {name}: {hint}")
    return problems


def _launcher_flags_only(argv):
    """Nothing, or what the deepspeed launcher puts before the script's own arguments: --local_rank=N."""
    return argv == [] or (len(argv) == 1 and re.fullmatch(r"--local_rank=\d+", argv[0]) is not None) or \
        (len(argv) == 2 and argv[0] == "--local_rank" and argv[1].isdigit())


def _with_json_file_flags(argv):
    """argv with a .json file of flags (after the launcher's own, if any) replaced by the flags it holds; the flags
    after the file come later, so their values win."""
    for at, word in enumerate(argv):
        if word.endswith(".json") and _launcher_flags_only(argv[:at]):
            return argv[:at] + _json_file_flags(word) + argv[at + 1:]
    return argv


def _json_file_flags(path):
    values = read_json_object(path, "", "give one JSON object of flag names and values, or the flags themselves")
    argv = []
    for key, value in values.items():
        if value is None:  # null: the flag's default
            continue
        argv.append(f"--{key}")
        if isinstance(value, list):
            argv += [str(v) for v in value]
        else:
            argv.append(json.dumps(value) if isinstance(value, dict) else str(value))
    return argv

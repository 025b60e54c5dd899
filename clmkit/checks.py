"""Inputs checked before the expensive work; every problem reported at once, one line each.

find_problems() runs every check that does not need the model's weights: data files, output folder, flags,
DeepSpeed config, precision against this machine, model config and tokenizer, block size and disk space.
Each check returns a list of one-line problems instead of raising, so one run reports them all.
"""

import codecs
import copy
import csv
import importlib.util
import json
import os
import re
import sys
import tempfile

import huggingface_hub
import torch
from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations
from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, set_hf_deepspeed_config

from . import profiling
from .checkpoints import is_complete

from .chat import MESSAGES, chat_problems
from .data import BUILDERS, CHAT, PAIRS, builder_for, choose_block_size, file_kind, json_records
from .errors import UsageError
from .in_backward import in_backward_problems
from .loading import (FP16_MODE_OPTIM, hub_options, load_config, load_tokenizer, model_weights_problems,
                      optim_name)
from .machine import GPU_OVERRIDE, bf16_on_gpu, hub_offline, nearest_existing, read_deepspeed_config


def find_problems(model_args, data_args, training_args, ds_config):
    """(problems, config, tokenizer, block_size); the last three are None where their own checks failed.
    ds_config: the --deepspeed config as a dict (None without one)."""
    problems = flag_problems(model_args, data_args, training_args)
    for flag, path in (("--train_file", data_args.train_file), ("--validation_file", data_args.validation_file)):
        if path:
            problems += data_file_problems(flag, path, data_args)
    problems += output_dir_problems(training_args.output_dir)
    problems += machine_and_config_problems(training_args, ds_config)
    config, tokenizer = load_config_and_tokenizer(model_args, problems)
    block_size = attempt(problems, choose_block_size, data_args, config) if config is not None else None
    return problems, config, tokenizer, block_size


def mode_problems(model_args, training_args, ds_config):
    """The checks of the flags a mode sets, run again once the run has taken on its mode's flags."""
    return machine_and_config_problems(training_args, ds_config) + mode_flag_problems(model_args, training_args)


def machine_and_config_problems(training_args, ds_config):
    """--fp16/--bf16 against this machine (or the one --plan --machine assumes), and the DeepSpeed config."""
    problems = machine_precision_problems(training_args.fp16, training_args.bf16, training_args.use_cpu,
                                          assume_gpu=getattr(training_args, "plan", False)
                                          and bool(os.environ.get(GPU_OVERRIDE)))
    return problems + deepspeed_problems(training_args.deepspeed, ds_config, training_args)


def mode_flag_problems(model_args, training_args):
    """The optimizer's package, the weights' dtype against the precision, and what stepping in the backward cannot
    do."""
    return (optimizer_package_problems(optim_name(training_args)) + dtype_problems(model_args, training_args)
            + in_backward_problems(training_args))


def batch_problems(n_train_sequences, training_args):
    """A step that asks for more sequences than the training data holds would train the same short epoch again and
    again under the name of one step: one line, with the batch that fits."""
    micro, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    world = training_args.world_size
    asked = micro * accumulation * world
    if n_train_sequences >= asked:
        return []
    fits = max(1, n_train_sequences // (accumulation * world))
    return [f"--per_device_train_batch_size {micro} x --gradient_accumulation_steps {accumulation} x {world} "
            f"process(es) = {asked:,} sequences a step, but the training data holds {n_train_sequences:,}; use "
            f"--per_device_train_batch_size {fits} or less, or give more text"]


def attempt(problems, function, *args, **kwargs):
    """function(*args, **kwargs), or None with its UsageError's lines added to `problems`."""
    try:
        return function(*args, **kwargs)
    except UsageError as err:
        problems += err.problems
        return None


# ---------------------------------------------------------------- flags


def flag_problems(model_args, data_args, training_args):
    problems = []
    named = data_args.dataset_name
    if named and (data_args.train_file or data_args.validation_file):
        problems.append(f"--dataset_name {named} and --{'train' if data_args.train_file else 'validation'}_file: "
                        "give one source of text, the dataset or the files")
    elif training_args.do_train and not (data_args.train_file or named):
        problems.append("--do_train needs --train_file (or --dataset_name)")
    elif training_args.do_eval and not (data_args.train_file or data_args.validation_file or named):
        problems.append("--do_eval needs --validation_file (or --train_file to hold some of it out, or "
                        "--dataset_name)")
    if data_args.streaming and training_args.do_train and training_args.max_steps < 1:
        problems.append("--streaming: give --max_steps (a stream has no length to count epochs by)")
    if data_args.streaming and training_args.do_eval and not data_args.validation_file and not named:
        problems.append("--streaming --do_eval: give --validation_file (a stream holds nothing out to evaluate on)")
    if data_args.dataset_config_name and not named:
        problems.append(f"--dataset_config_name {data_args.dataset_config_name}: a configuration of --dataset_name, "
                        "which is not given; add --dataset_name or drop it")
    if not model_args.model_name_or_path and not model_args.model_type and not model_args.config_name:
        problems.append("no model: give --model_name_or_path, or --model_type/--config_name to build one")
    if model_args.config_overrides and model_args.model_name_or_path:
        problems.append("--config_overrides only applies when building a model from scratch; "
                        "drop it or drop --model_name_or_path")
    pct = data_args.validation_split_percentage
    if (data_args.train_file or named) and not data_args.validation_file and not 0 <= pct < 100:
        problems.append(f"--validation_split_percentage {pct}: must be 0 to 99 (the share of --train_file held out "
                        "for evaluation); or give --validation_file")
    problems += reporting_problems(training_args.report_to)
    problems += hub_problems(training_args)
    path = training_args.resume_from_checkpoint
    if path and not is_complete(path):
        problems.append(f"--resume_from_checkpoint {path}: not a complete checkpoint (no trainer_state.json); pick "
                        "another checkpoint-<step> folder, or drop the flag to resume from the newest one")
    problems += number_problems({**vars(data_args), **vars(training_args)})
    problems += mode_flag_problems(model_args, training_args)
    try:
        profiling.asked_steps()
    except ValueError as err:
        problems.append(str(err))
    train, validation = data_args.train_file, data_args.validation_file
    texts = [path for path in (train, validation) if path and builder_for(path) == "text"]
    if texts and not data_args.keep_linebreaks:
        # A .txt file is one document; one example per line is what texttocsv.py --split line makes.
        problems.append(f"--no_keep_linebreaks: a .txt file is read whole, one example with its line breaks; "
                        f"for one example per line, without its line break, convert it first: "
                        f"python texttocsv.py {texts[0]} --split line, and train on the .csv")
    return problems


# Optimizers that live in optional packages: without this check a missing one fails after the model loads.
OPTIMIZER_PACKAGES = {"adamw_torch_4bit": "torchao", "adamw_torch_8bit": "torchao", "adamw_bnb_8bit": "bitsandbytes",
                      "adamw_8bit": "bitsandbytes", "paged_adamw_8bit": "bitsandbytes",
                      "paged_adamw_32bit": "bitsandbytes", "lion_8bit": "bitsandbytes"}


# Numbers the Trainer would take and then fail on, some only after training (an eval batch of 0), some silently
# (--max_steps -5 trains the epochs instead): (flag, what it must be, test, the value to go on checking with).
NUMBER_RULES = [
    ("per_device_train_batch_size", "at least 1", lambda v: v >= 1, 8),
    ("per_device_eval_batch_size", "at least 1", lambda v: v >= 1, 8),
    ("gradient_accumulation_steps", "at least 1", lambda v: v >= 1, 1),
    ("max_train_samples", "at least 1, or left out for all", lambda v: v is None or v >= 1, None),
    ("max_eval_samples", "at least 1, or left out for all", lambda v: v is None or v >= 1, None),
    ("learning_rate", "0 or more", lambda v: v >= 0, 5e-5),
    ("warmup_steps", "0 or more", lambda v: v >= 0, 0),
    ("seed", "0 to 4294967295", lambda v: 0 <= v < 2**32, 42),
    ("max_steps", "at least 1, or -1 to train --num_train_epochs", lambda v: v == -1 or v >= 1, -1),
    ("num_train_epochs", "more than 0", lambda v: v > 0, 3.0),
    ("save_steps", "more than 0 (--save_strategy no saves no checkpoints)", lambda v: v > 0, 500),
    ("eval_steps", "more than 0, or left out for --logging_steps", lambda v: v is None or v > 0, None),
    ("logging_steps", "more than 0", lambda v: v > 0, 500),
]


def out_of_range(values):
    """The NUMBER_RULES that `values` (the parsed flags by name) break: [(name, value, what it must be, default)]."""
    broken = []
    for name, wanted, fits, default in NUMBER_RULES:
        if name not in values:
            continue
        if name == "num_train_epochs" and values.get("max_steps", -1) > 0:
            continue  # --max_steps decides
        if not fits(values[name]):
            broken.append((name, values[name], wanted, default))
    return broken


def number_problems(values):
    """One line for each number flag out of range."""
    return [f"--{name} {value:g}: must be {wanted}" if isinstance(value, float) else
            f"--{name} {value}: must be {wanted}" for name, value, wanted, _ in out_of_range(values)]


def dtype_problems(model_args, training_args):
    """--dtype and the mixed precision flag must agree: fp16 weights under bf16 autocast (or the reverse) fail on
    the first forward pass (a mixed-dtype matrix product). fp16 weights train in the fp16 mode (its 8-bit AdamW
    rounds stochastically under a loss scale) or under DeepSpeed (an fp32 copy)."""
    dtype = getattr(model_args, "dtype", None)
    clash = {("float16", True, False): "--bf16", ("bfloat16", False, True): "--fp16"}.get(
        (dtype, bool(training_args.bf16), bool(training_args.fp16)))
    if clash is None:
        optim = optim_name(training_args)
        if dtype == "float16" and training_args.do_train and not training_args.deepspeed and optim != FP16_MODE_OPTIM:
            return [f"--dtype float16 with --optim {optim}: fp16 weights trained with no fp32 copy lose every "
                    f"update smaller than fp16's step; use the fp16 mode (--fp16 --optim {FP16_MODE_OPTIM}, which "
                    "rounds stochastically), or --deepspeed ds_config.json --fp16 (fp32 master weights)"]
        return []
    match = "--bf16" if dtype == "bfloat16" else "--fp16"
    return [f"--dtype {dtype} with {clash}: the weights and the mixed precision disagree; use {match}, "
            f"or drop --dtype"]


# The package each reporting integration needs, where its name differs from the integration's.
REPORTING_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "kubeflow": "kubeflow"}


def reporting_problems(report_to):
    """--report_to names that the Trainer would fail on after the model loads: unknown, or not installed here."""
    problems = []
    available = set(get_available_reporting_integrations())
    for name in report_to or []:
        if name in ("none", "all") or name in available:
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            problems.append(f"--report_to {name}: no such integration; use one of "
                            f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}, or none")
        else:
            package = REPORTING_PACKAGES.get(name, name)
            problems.append(f"--report_to {name}: the {package} package is not installed; pip install {package}, "
                            "or use --report_to none")
    return problems


def hub_problems(training_args):
    """--push_to_hub needs the hub: online, and a token to write with."""
    if not training_args.push_to_hub:
        return []
    if hub_offline():
        return ["--push_to_hub: the hub is offline here (HF_HUB_OFFLINE is set); drop --push_to_hub (the model is "
                "saved in --output_dir either way), or unset HF_HUB_OFFLINE on a machine with network"]
    if not (training_args.hub_token or huggingface_hub.get_token()):
        return ["--push_to_hub: no hub token; log in once with `hf auth login`, or pass --hub_token"]
    return []


def optimizer_package_problems(optim):
    package = OPTIMIZER_PACKAGES.get(optim)
    if package and importlib.util.find_spec(package) is None:
        return [f"--optim {optim}: needs the {package} package, which is not installed; pip install {package}, "
                "or use --optim adamw_torch"]
    return []


# ---------------------------------------------------------------- data files


def data_file_problems(flag, path, data_args):
    """Why `path` cannot be read as training text: missing, empty, unreadable, not UTF-8, no text column."""
    if not os.path.exists(path):
        return [f"{flag} {path}: no such file"]
    if not os.path.isfile(path):
        return [f"{flag} {path}: not a file"]
    builder = builder_for(path)
    if not builder:
        return [f"{flag} {path}: unsupported extension; use one of {', '.join(sorted(BUILDERS))} "
                "(texttocsv.py turns .txt into .csv)"]
    if os.path.getsize(path) == 0:
        return [f"{flag} {path}: the file is empty; put text in it or give another file"]
    try:
        bad = first_non_utf8_byte(path)
    except OSError as err:
        return [f"{flag} {path}: cannot read it ({err.strerror}); check its permissions (chmod a+r {path})"]
    if bad is not None:
        offset, value, line = bad
        fix = (f"e.g. python texttocsv.py {path} --encoding latin-1 (it writes a UTF-8 .csv)" if builder == "text"
               else f"e.g. iconv -f latin1 -t utf-8 {path} > utf8{os.path.splitext(path)[1]}")
        return [f"{flag} {path}: not UTF-8 text (byte 0x{value:02x} at offset {offset}, line {line}); "
                f"convert it to UTF-8, {fix}"]
    if builder == "text":
        return text_content_problems(flag, path)
    if builder == "csv":
        return csv_column_problems(flag, path, data_args)
    if builder == "json":
        return json_column_problems(flag, path, data_args)
    return []


def text_content_problems(flag, path, chunk_size=1 << 20):
    """A .txt file (valid UTF-8) with no text in it: only whitespace, or NUL bytes (a file zeroed by a crash), which
    the datasets reader fails on with a traceback."""
    nul = False
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            if chunk.translate(None, b" \t\r\n\x0b\x0c\x00"):
                return []
            nul = nul or b"\x00" in chunk
    what = "only NUL bytes (no text; a file zeroed when a copy or a machine failed?)" if nul else "only whitespace"
    return [f"{flag} {path}: the file holds {what}; put text in it or give another file"]


def first_non_utf8_byte(path, chunk_size=1 << 20):
    """(byte offset, byte value, line number) of the first byte that is not UTF-8, or None; reads in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            pending = decoder.getstate()[0]  # an unfinished character carried over from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                data = pending + chunk
                position = offset - len(pending) + err.start
                return position, data[err.start], lines + data[:err.start].count(b"\n") - pending.count(b"\n") + 1
            if not chunk:
                return None
            offset += len(chunk)
            lines += chunk.count(b"\n")


def _no_column(flag, path, column, columns):
    has = ", ".join(repr(c) for c in columns) if columns else "none"
    hint = f"--text_column {columns[0]}" if len(columns) == 1 else "--text_column NAME"
    return [f"{flag} {path}: no '{column}' column (it has: {has}); name the text column with {hint}, give "
            "'prompt' and 'completion' columns (--prompt_column, --completion_column), or make the file with "
            "texttocsv.py"]


def _empty_column(flag, path, column):
    flag_for = "--completion_column" if column != "text" and "completion" in column else "--text_column"
    return [f"{flag} {path}: the '{column}' column is empty in every row; put the text there "
            f"or name another column with {flag_for}"]


def _column_to_check(columns, data_args):
    """The column that must hold text: the text column, or the completions of a prompt/completion file."""
    return data_args.completion_column if file_kind(columns, data_args) == PAIRS else data_args.text_column


def csv_column_problems(flag, path, data_args):
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one cell may hold a whole book
    with open(path, encoding="utf-8-sig", newline="") as f:  # pandas, which reads it later, drops a BOM too
        rows = csv.reader(f)
        try:
            header = next(rows, [])
            column = _column_to_check(header, data_args)
            if column not in header:
                return _no_column(flag, path, column, [name for name in header if name])
            index = header.index(column)
            if not any(len(row) > index and row[index].strip() for row in rows):
                return _empty_column(flag, path, column)
        except csv.Error as err:
            return [f"{flag} {path}: not a readable csv file (line {rows.line_num}: {err}); "
                    "make it with texttocsv.py"]
    return []


def json_column_problems(flag, path, data_args):
    """The `datasets` json reader takes JSON Lines (one object a line) or one list of objects. A file of chat
    data has every row's messages checked."""
    columns, has_text, conversations = {}, {}, []
    try:
        for place, record in json_records(path):
            if not isinstance(record, dict):
                return [f"{flag} {path}: expected JSON objects, one per line (or one list of them), "
                        "e.g. {\"text\": \"...\"}"]
            columns.update(dict.fromkeys(record))
            for name, value in record.items():
                has_text[name] = has_text.get(name) or (isinstance(value, str) and bool(value.strip()))
            conversations.append((place, record.get(MESSAGES)))
    except ValueError as err:
        return [f"{flag} {path}: not valid JSON Lines or a JSON list ({err}); "
                "write one JSON object per line, e.g. {\"text\": \"...\"}"]
    if file_kind(columns, data_args) == CHAT:
        return chat_problems(conversations, flag, path)
    column = _column_to_check(columns, data_args)
    if column not in columns:
        return _no_column(flag, path, column, list(columns))
    if not has_text.get(column):
        return _empty_column(flag, path, column)
    return []


# ---------------------------------------------------------------- output folder and disk


def output_dir_problems(output_dir):
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        return [f"--output_dir {output_dir}: is a file, not a folder; give a folder path (it is created if missing)"]
    parent = nearest_existing(output_dir)
    if not os.path.isdir(parent):
        return [f"--output_dir {output_dir}: {parent} is a file, so no folder can be made there; "
                "give another --output_dir"]
    try:
        with tempfile.TemporaryFile(dir=parent):  # an unnamed file where the OS allows: nothing shows up
            pass
    except OSError as err:
        return [f"--output_dir {output_dir}: cannot write in {parent} ({err.strerror}); "
                "give an --output_dir you can write to"]
    return []


# ---------------------------------------------------------------- precision


def precision_problems(fp16, bf16, use_cpu, cuda_available, bf16_supported):
    """--fp16/--bf16 against the machine: fp16 needs a CUDA GPU; bf16 needs Ampere or newer, or --use_cpu."""
    if fp16 and bf16:
        return ["--fp16 and --bf16: give one of them, not both"]
    if fp16 and not cuda_available:
        return ["--fp16: fp16 needs a CUDA GPU and this machine has none; "
                f"on CPU use --bf16{'' if use_cpu else ' --use_cpu'} or no precision flag"]
    if fp16 and use_cpu:
        return ["--fp16 with --use_cpu: fp16 needs a CUDA GPU; drop --use_cpu, or on CPU use --bf16 "
                "or no precision flag"]
    if bf16 and not use_cpu and not cuda_available:
        return ["--bf16: this machine has no CUDA GPU; add --use_cpu to train in bf16 on the CPU, or drop --bf16"]
    if bf16 and not use_cpu and not bf16_supported:
        return [f"--bf16: this GPU has no bf16 (that needs an Ampere or newer card); use the fp16 mode, --fp16 "
                f"--optim {FP16_MODE_OPTIM} (README), or --fp16 with --deepspeed ds_config.json"]
    return []


def machine_precision_problems(fp16, bf16, use_cpu, assume_gpu=False):
    """assume_gpu: --plan with CLM_ASSUME_GPU_GIB plans for a (bf16-capable) GPU this machine may not have."""
    if not (fp16 or bf16):
        return []
    cuda = assume_gpu or torch.cuda.is_available()
    return precision_problems(fp16, bf16, use_cpu, cuda, bf16_on_gpu(assumed_gpu=assume_gpu))


# ---------------------------------------------------------------- DeepSpeed config


# Names Transformers gives TrainingArguments in its mismatch list -> the flags a user types.
MISMATCH_FLAGS = {
    "per_device_train_batch_size": "--per_device_train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "train_batch_size (calculated)": "--per_device_train_batch_size x --gradient_accumulation_steps x GPUs",
    "max_grad_norm": "--max_grad_norm",
    "learning_rate": "--learning_rate",
    "adam_beta1+adam_beta2": "--adam_beta1/--adam_beta2",
    "adam_epsilon": "--adam_epsilon",
    "weight_decay": "--weight_decay",
    "fp16|fp16_full_eval": "--fp16",
    "bf16|bf16_full_eval": "--bf16",
}
MISMATCH = re.compile(r"- ds (?P<key>\S+)=(?P<ds>.*) vs hf (?P<hf>[^=]+)=(?P<flag>.*)")


def deepspeed_problems(path, ds_config, training_args):
    """Every value the config sets that DeepSpeed refuses or that contradicts a flag, found by DeepSpeed's own model of
    the ZeRO section and Transformers' HfTrainerDeepSpeedConfig (which would otherwise complain only once the model
    is loaded)."""
    if ds_config is None:
        return []
    problems = zero_section_problems(path, ds_config.get("zero_optimization") or {})
    return problems + [mismatch_line(path, line) for line in deepspeed_mismatches(ds_config, training_args)]


def deepspeed_mismatches(ds_config, training_args):
    probe = HfTrainerDeepSpeedConfig(copy.deepcopy(ds_config))
    probe.trainer_config_process(training_args)
    in_use = getattr(training_args, "hf_deepspeed_config", None)
    if in_use is not None:
        set_hf_deepspeed_config(in_use)  # the probe made itself the process-wide config; give the place back
    return probe.mismatches


def mismatch_line(path, mismatch):
    match = MISMATCH.fullmatch(mismatch.strip())
    if not match:
        return f"--deepspeed {path}: contradicts the flags: {mismatch.strip(' -')}; set that key to \"auto\""
    key, hf_name, flag_value = match["key"], match["hf"].strip(), match["flag"]
    flag = MISMATCH_FLAGS.get(hf_name, f"--{hf_name}")
    ds_value = _as_json(match["ds"])
    if flag_value in ("True", "False"):
        said = f"{flag} is {'given' if flag_value == 'True' else 'not given'}"
    else:
        said = f"{flag} {'make' if ' x ' in flag else 'is'} {flag_value}"
    return (f"--deepspeed {path}: \"{key}\" is {ds_value} but {said}; set \"{key}\" to \"auto\" in the config "
            "or change the flag")


def _as_json(python_repr):
    return {"True": "true", "False": "false", "None": "null"}.get(python_repr, python_repr)


# ---------------------------------------------------------------- model config and tokenizer


def load_config_and_tokenizer(model_args, problems):
    """(config, tokenizer), None for whichever cannot be had; why goes into `problems`."""
    has_source = model_args.model_name_or_path or model_args.model_type or model_args.config_name
    config = attempt(problems, load_config, model_args) if has_source else None
    if model_args.model_name_or_path and (model_args.config_name or config is not None):
        problems += model_weights_problems(model_args.model_name_or_path, **hub_options(model_args))
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    if not tokenizer_name:
        if has_source:
            problems.append("no tokenizer: give --tokenizer_name when training from scratch with --model_type")
        return config, None
    if tokenizer_name == model_args.model_name_or_path and not model_args.config_name and config is None:
        return None, None  # the same path just failed for the config; once is enough
    flag = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    return config, attempt(problems, load_tokenizer, tokenizer_name, flag=flag, **hub_options(model_args))


# ---------------------------------------------------------------- what TrainingArguments refuses itself


def deepspeed_file_problems(path):
    """What DeepSpeed itself refuses in the file before any flag is compared (e.g. no zero_optimization)."""
    try:
        ds_config = read_deepspeed_config(path)
    except UsageError as err:
        return err.problems
    if not isinstance(ds_config.get("zero_optimization"), dict):
        return [f"--deepspeed {path}: no \"zero_optimization\" section; add one, e.g. as in the shipped "
                "ds_config.json (ZeRO stage 2 with the optimizer offloaded)"]
    return zero_section_problems(path, ds_config["zero_optimization"])


def zero_section_problems(path, zero):
    """What DeepSpeed's own model of the "zero_optimization" section (DeepSpeedZeroConfig, pydantic) refuses, which it
    would otherwise raise as a traceback once the model is loaded: one line a field. "auto" values are Transformers'
    to fill in and are left out of the check."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    def without_auto(value):
        if isinstance(value, dict):
            return {key: without_auto(item) for key, item in value.items() if item != "auto"}
        return value

    try:
        DeepSpeedZeroConfig(**without_auto(zero))
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = ".".join(["zero_optimization", *map(str, error["loc"])])
            problems.append(f"--deepspeed {path}: \"{where}\" is {json.dumps(error.get('input'))}: "
                            f"{error['msg'].replace(' or 3', '') if 'stage' in where else error['msg']}; fix it, "
                            "or start from the shipped ds_config.json")
        return problems
    except TypeError as err:  # a section that is not a mapping of fields
        return [f"--deepspeed {path}: \"zero_optimization\" cannot be read ({err}); start from the shipped "
                "ds_config.json"]
    return []

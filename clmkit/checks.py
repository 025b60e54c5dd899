"""Inputs checked before the expensive work; every problem reported at once."""

import json
import os

from .data import BUILDERS, builder_for
from .errors import UsageError, raise_if_any


def read_deepspeed_config(path):
    """The DeepSpeed config as a dict (None without one); invalid JSON is a user error."""
    if not path:
        return None
    if isinstance(path, dict):
        return path
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--deepspeed {path}: no such file; use the shipped ds_config.json") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"--deepspeed {path}: not valid JSON (line {err.lineno}, column {err.colno}): "
                         f"{err.msg}") from None


def data_file_problems(flag, path):
    if not os.path.exists(path):
        return [f"{flag} {path}: no such file"]
    if not os.path.isfile(path):
        return [f"{flag} {path}: not a file"]
    if not builder_for(path):
        return [f"{flag} {path}: unsupported extension; use one of {', '.join(sorted(BUILDERS))} "
                "(texttocsv.py turns .txt into .csv)"]
    if os.path.getsize(path) == 0:
        return [f"{flag} {path}: the file is empty"]
    return []


def check_before_loading(model_args, data_args, training_args):
    problems = []
    if training_args.do_train and not data_args.train_file:
        problems.append("--do_train needs --train_file")
    for flag, path in (("--train_file", data_args.train_file), ("--validation_file", data_args.validation_file)):
        if path:
            problems += data_file_problems(flag, path)
    if not model_args.model_name_or_path and not model_args.model_type and not model_args.config_name:
        problems.append("no model: give --model_name_or_path, or --model_type/--config_name to build one")
    if model_args.config_overrides and model_args.model_name_or_path:
        problems.append("--config_overrides only applies when building a model from scratch; "
                        "drop it or drop --model_name_or_path")
    try:
        read_deepspeed_config(training_args.deepspeed)
    except UsageError as err:
        problems += err.problems
    raise_if_any(problems)

"""Model and tokenizer loading, shared by training (run_clm.py) and generation (run_generation.py)."""

import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING

from .errors import UsageError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _not_found(flag: str, name: str, err: Exception) -> UsageError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    where = "not a local folder and the hub is offline (HF_HUB_OFFLINE is set)" if offline else \
        "not a local folder nor a model on the hub"
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UsageError(f"{flag} {name}: {where}; give a folder saved with save_pretrained ({detail})")


def load_tokenizer(name_or_path: str, flag: str = "--tokenizer_name", padding_side: str = "right", **hub_kwargs):
    """Load a tokenizer and give it a pad token (GPT-2 has none; the end-of-text token serves)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise _not_found(flag, name_or_path, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_config(model_args):
    """The model's config: from --config_name, the model itself, or --model_type plus --config_overrides."""
    hub_kwargs = hub_options(model_args)
    if model_args.config_name or model_args.model_name_or_path:
        flag = "--config_name" if model_args.config_name else "--model_name_or_path"
        name = model_args.config_name or model_args.model_name_or_path
        try:
            config = AutoConfig.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError) as err:
            raise _not_found(flag, name, err) from None
    elif model_args.model_type in CONFIG_MAPPING:
        config = CONFIG_MAPPING[model_args.model_type]()
    else:
        raise UsageError(f"--model_type {model_args.model_type}: unknown; use e.g. gpt2, gpt_neo or gptj")
    if model_args.config_overrides:
        try:
            config.update_from_string(model_args.config_overrides)
        except ValueError as err:
            raise UsageError(f"--config_overrides {model_args.config_overrides}: {err}") from None
    return config


def hub_options(model_args) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def load_model_for_training(model_args, config, tokenizer):
    """Pretrained weights when a model is named, else a randomly initialised model of `config`."""
    dtype = DTYPES.get(model_args.dtype, model_args.dtype)
    if model_args.model_name_or_path:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_args.model_name_or_path, config=config, dtype=dtype, **hub_options(model_args)
            )
        except OSError as err:
            raise _not_found("--model_name_or_path", model_args.model_name_or_path, err) from None
    else:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype or torch.float32, trust_remote_code=model_args.trust_remote_code
        )
    # A tokenizer with added tokens needs rows for them; never shrink a pretrained embedding.
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_model_for_generation(path: str, dtype=None, device="cpu"):
    """A saved model and its tokenizer (left-padded, for batched prompts), ready to generate."""
    tokenizer = load_tokenizer(path, flag="--model_name_or_path", padding_side="left")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, dtype))
    except OSError as err:
        raise _not_found("--model_name_or_path", path, err) from None
    return model.to(device).eval(), tokenizer

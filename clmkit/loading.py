"""Model and tokenizer loading, shared by training (run_clm.py) and generation (run_generation.py)."""

import dataclasses
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CONFIG_MAPPING, TrainingArguments

from . import modes
from .errors import UsageError
from .loss import VOCAB_MULTIPLE, padding_rows
from .machine import hub_offline

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# Transformers 5.23 renamed gradient_checkpointing to activation_checkpointing, the old name a deprecated alias until
# it goes: the field this version reads, on by default (clmkit/args.py) by that name.
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in
                 {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")


def checkpointing_on(training_args) -> bool:
    return bool(getattr(training_args, CHECKPOINTING))


SIZE_KEYS = ("n_embd", "n_layer", "n_head", "n_positions", "hidden_size", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings", "vocab_size")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _not_found(flag: str, name: str, err: Exception, what: str = "model") -> UsageError:
    """One line for a model, config or tokenizer that cannot be had: no such folder, a folder without the files,
    or a hub name that is not downloaded while offline (or does not exist)."""
    detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    saved = "give a folder written by save_pretrained"
    if os.path.isdir(name):
        files = {"config": "config.json", "tokenizer": "tokenizer files (tokenizer.json, or vocab.json and merges.txt)"}
        missing = files.get(what, "model files")
        return UsageError(f"{flag} {name}: the folder has no usable {missing} ({detail}); {saved}")
    if _looks_like_path(name) or os.path.exists(name):
        return UsageError(f"{flag} {name}: no such folder; {saved}, or a hub model name such as gpt2-xl")
    if hub_offline():
        return UsageError(f"{flag} {name}: not a local folder, and not downloaded while the hub is offline "
                          f"(HF_HUB_OFFLINE is set); download it once online (hf download {name}) or {saved}")
    return UsageError(f"{flag} {name}: not a local folder nor a model on the hub ({detail}); check the name, "
                      f"or {saved}")


def model_weights_problems(name_or_path: str, **hub_kwargs) -> list[str]:
    """Whether --model_name_or_path can give weights, checked without loading them: a local folder must hold a
    weights file; a hub name must at least resolve (its config is fetched)."""
    flag = "--model_name_or_path"
    if os.path.isdir(name_or_path):
        if any(os.path.isfile(os.path.join(name_or_path, f)) for f in WEIGHT_FILES):
            return []
        return [f"{flag} {name_or_path}: the folder has no model weights ({' or '.join(WEIGHT_FILES[::2])}); "
                "give a folder written by save_pretrained, or build a new model with --config_name/--model_type"]
    try:
        AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError) as err:
        return _not_found(flag, name_or_path, err).problems
    return []


def load_tokenizer(name_or_path: str, flag: str = "--tokenizer_name", padding_side: str = "right", **hub_kwargs):
    """Load a tokenizer and give it a pad token (GPT-2 has none; the end-of-text token serves)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
    except (OSError, ValueError) as err:
        raise _not_found(flag, name_or_path, err, what="tokenizer") from None
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
            raise _not_found(flag, name, err, what="config") from None
    elif model_args.model_type in CONFIG_MAPPING:
        config = CONFIG_MAPPING[model_args.model_type]()
    else:
        raise UsageError(f"--model_type {model_args.model_type}: unknown; use e.g. gpt2, gpt_neo or gptj")
    if model_args.config_overrides:
        config = _apply_overrides(config, model_args.config_overrides)
    return config


def _apply_overrides(config, overrides: str):
    """The config with key=value pairs applied, each checked on its own so that every bad one is named."""
    problems, before = [], config.to_dict()
    for pair in overrides.split(","):
        key, _, value = pair.partition("=")
        if not key.strip() or not value.strip():
            problems.append(f"--config_overrides {overrides}: '{pair}' is not key=value; "
                            "write e.g. n_embd=1600,n_layer=48,n_head=25")
            continue
        try:
            config.update_from_string(pair.strip())
        except ValueError as err:
            sizes = [k for k in config.to_dict() if k in SIZE_KEYS]
            known = "" if hasattr(config, key.strip()) else f"; {config.model_type} has e.g. {', '.join(sizes)}"
            problems.append(f"--config_overrides {overrides}: {pair.strip()}: {err}{known}")
    if problems:
        raise UsageError(*problems)
    return _derived_again(config, before, named={pair.partition("=")[0].strip() for pair in overrides.split(",")})


def _derived_again(config, before, named):
    """The config rebuilt with the fields it derives from others when it is made worked out again from the new
    values, unless an override named them: Qwen2's layer_types (one per layer), and Llama's head_dim (hidden size
    over heads) where the config had derived it. A head_dim the model sets on its own (Gemma's) is kept."""
    values = config.to_dict()
    stale = set()
    if "layer_types" in values:
        stale.add("layer_types")
    hidden, heads = before.get("hidden_size"), before.get("num_attention_heads")
    if hidden and heads and before.get("head_dim") == hidden // heads:
        stale.add("head_dim")
    stale -= named
    if not stale:
        return config
    for key in stale:
        values.pop(key, None)
    return type(config).from_dict(values)


def hub_options(model_args) -> dict:
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


# The optimizer of the fp16 mode (clmkit/fp16_adamw.py): fp16 weights, 8-bit AdamW state, a loss scale.
FP16_MODE_OPTIM = "adamw_torch_8bit"


def optim_name(training_args) -> str:
    """--optim as written (TrainingArguments turns it into an enum)."""
    return str(getattr(training_args.optim, "value", training_args.optim))


def training_dtype(model_args, training_args):
    """The dtype to load weights in: --dtype when given; else the mode's (clmkit/modes.py): the bf16 and fp16 modes'
    own, the classic recipe's --fp16/--bf16 (DeepSpeed casts the model to it anyway and builds its fp32 master weights
    from the cast copy, so loading straight into it is the same numbers with half the reading and host memory), and
    for fp32 the checkpoint's own dtype (None), which the Trainer's autocast needs in fp32."""
    if model_args.dtype:
        return DTYPES.get(model_args.dtype, model_args.dtype)
    if training_args is None:
        return None
    mode = modes.of(training_args)
    return DTYPES.get(modes.half_precision(mode, training_args.fp16, training_args.bf16))


def load_model_for_training(model_args, config, tokenizer, training_args=None):
    """Pretrained weights when a model is named, else a randomly initialised model of `config`."""
    dtype = training_dtype(model_args, training_args)
    # PyTorch's one-kernel tanh GELU instead of "gelu_new", the same formula written as seven elementwise
    # operations: 18% of a GPT-2 XL-wide forward and backward in bf16 on an H100 (bench/profile_step.py). The
    # saved config keeps saying "gelu_new", so the saved model is unchanged for other tools.
    fused_gelu = getattr(model_args, "fused_gelu", True) and _has_gelu_new(config)
    if fused_gelu:
        config.activation_function = "gelu_pytorch_tanh"
    model = _build_for_training(model_args, config, dtype, _load_straight_to(training_args, dtype))
    if fused_gelu:
        config.activation_function = model.config.activation_function = "gelu_new"
    # A tokenizer with added tokens needs rows for them; never shrink a pretrained embedding. Under ZeRO-3 each
    # process holds a slice of the weight (its .shape is empty); ds_shape is the whole.
    weight = model.get_input_embeddings().weight
    if len(tokenizer) > getattr(weight, "ds_shape", weight.shape)[0]:
        model.resize_token_embeddings(len(tokenizer))
    agree_on_special_tokens(model, tokenizer)
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"  # the loss of every causal LM; unset, Transformers warns and picks it itself
    return model


def _has_gelu_new(config):
    """The config names GPT-2's seven-operation GELU (GPT-2, GPT-Neo, GPT-J), which the fused one replaces."""
    return getattr(config, "activation_function", None) == "gelu_new"


def speed_switches(config, model_args, training_args) -> str:
    """One line: which of the tool's speed-ups this run gets, and why a skipped one is skipped."""
    if not _has_gelu_new(config):
        activation = getattr(config, "activation_function", None) or getattr(config, "hidden_act", None)
        gelu = f"one-kernel GELU not applicable (the model's activation is {activation})"
    else:
        gelu = "one-kernel GELU " + ("on" if getattr(model_args, "fused_gelu", True) else "off (--no_fused_gelu)")
    vocab = getattr(config, "vocab_size", 0) or 0
    if not getattr(training_args, "chunked_loss", False):
        head = "LM head padding not used (it comes with --chunked_loss)"
    elif not getattr(training_args, "padded_lm_head", True):
        head = "LM head padding off (--no_padded_lm_head)"
    elif padding_rows(vocab) == 0:
        head = f"LM head padding not needed ({vocab:,} rows, a multiple of {VOCAB_MULTIPLE})"
    else:
        head = f"LM head padded {vocab:,} -> {vocab + padding_rows(vocab):,} rows"
    if not training_args.torch_compile:
        compiled = "blocks not compiled (--torch_compile compiles them)"
    elif training_args.deepspeed:
        compiled = "--torch_compile: the Trainer's whole-model compile (under DeepSpeed)"
    else:
        compiled = "--torch_compile: each repeated block"
    return f"{gelu}; {head}; {compiled}"


def repeated_blocks(model) -> list:
    """The model's repeated blocks (GPT2Block, LlamaDecoderLayer: the classes Transformers keeps whole when it splits
    a model over devices), in order."""
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in kinds]


def compile_blocks(model, backend=None, mode=None) -> tuple:
    """torch.compile each of the model's repeated blocks in place (GPT2Block, LlamaDecoderLayer: the classes
    Transformers keeps whole when it splits a model over devices), not the whole model: the blocks share one
    compiled graph, so the compile takes one block's time, and the fused layer norms, residual adds, dropout and
    GELU are where the gain is. In place, so the saved weights keep their names. Returns (how many, class name)."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(**({"backend": backend} if backend else {}), **({"mode": mode} if mode else {}))
    return len(blocks), type(blocks[0]).__name__ if blocks else None


def loads_straight_to_gpu(training_args, dtype) -> bool:
    """16-bit weights trained without DeepSpeed (the fp16 and bf16 modes) are read straight onto the GPU: host RAM
    never holds the whole model, which a small machine needs (a free notebook's 12.7 GB; a 7B model's 13.5 GB beside
    its optimizer state in host RAM). DeepSpeed places the model itself; fp32 weights stay on the CPU for the
    Trainer's autocast to move."""
    return (training_args is not None and not training_args.deepspeed and not training_args.use_cpu
            and dtype in (torch.float16, torch.bfloat16) and torch.cuda.is_available())


def _load_straight_to(training_args, dtype):
    if not loads_straight_to_gpu(training_args, dtype):
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def agree_on_special_tokens(model, tokenizer):
    """The model's config and generation config take the tokenizer's padding, start and end tokens (GPT-2 pads with
    its end-of-text token, load_tokenizer), as the Trainer would align them itself, with a warning on every run. A
    generation config's other end tokens are kept: any of them ends generation."""
    generation = getattr(model, "generation_config", None)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        setattr(model.config, name, value)
        if generation is None:
            continue
        ends = getattr(generation, name)
        if name == "eos_token_id" and ends is not None and value is not None:
            ends = [ends] if isinstance(ends, int) else list(ends)
            value = ends if value in ends else [value, *ends]
        setattr(generation, name, value)


def _build_for_training(model_args, config, dtype, device=None):
    """device: where the weights go as they are read (no whole copy in host RAM first); None leaves them on the
    CPU. A model built from a config is initialised on the CPU either way: the same --seed, the same weights, in
    every mode."""
    if model_args.model_name_or_path:
        placement = {"device_map": {"": device}} if device is not None else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                model_args.model_name_or_path, config=config, dtype=dtype, **placement, **hub_options(model_args)
            )
        except OSError as err:
            raise _not_found("--model_name_or_path", model_args.model_name_or_path, err) from None
    else:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype or torch.float32, trust_remote_code=model_args.trust_remote_code
        )
    return model


def load_model_for_generation(path: str, dtype=None, device="cpu"):
    """A saved model and its tokenizer (left-padded, for batched prompts), ready to generate."""
    tokenizer = load_tokenizer(path, flag="--model_name_or_path", padding_side="left")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES.get(dtype, dtype))
    except OSError as err:
        raise _not_found("--model_name_or_path", path, err) from None
    return model.to(device).eval(), tokenizer

"""Shared by every test folder: the environment (offline), a tiny GPT-2 and its tokenizer built here, text cut from
the Shakespeare example, and the ways a test runs the tool as a user does."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from clmkit.machine import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_CONFIG = "n_layer=2,n_embd=64,n_head=2,n_positions=256"
DEEPSPEED = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")


def run(args, cwd=None, env=None, timeout=600):
    """Run a command the way a user would; returns the CompletedProcess (never raises on failure)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def python(script, *args, **kwargs):
    return run([sys.executable, os.path.join(REPO, script), *map(str, args)], **kwargs)


def deepspeed_run(*args, cwd=None):
    """The user's way in: the deepspeed launcher, one process, on a free port (runs side by side don't collide)."""
    return run([DEEPSPEED, "--num_gpus=1", f"--master_port={free_port()}", os.path.join(REPO, "run_clm.py"),
                *map(str, args)], cwd=cwd)


def common_flags(tiny_model, corpus, out):
    """A short real run: 24 steps, a checkpoint and an evaluation every 12."""
    return ["--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt",
            "--validation_file", corpus / "validation.txt", "--do_train", "--do_eval",
            "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 8,
            "--max_steps", 24, "--learning_rate", 2e-3, "--logging_steps", 4, "--save_steps", 12,
            "--eval_strategy", "steps", "--eval_steps", 12, "--seed", 1, "--use_cpu"]


# Tiny configs of the families people fine-tune besides GPT-2: untied output layers (Llama, Qwen2, GPT-NeoX, GPT-J,
# whose head also has a bias) and a tied one (GPT-Neo).
FAMILIES = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8),
    "gpt_neo": dict(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]]),
}


def logged_losses(out):
    with open(out / "trainer_state.json") as f:
        return [entry["loss"] for entry in json.load(f)["log_history"] if "loss" in entry]


def check_trained_run(out):
    """Loss falls, perplexity is finite and saved, checkpoints and loss.png exist, the model reloads and generates."""
    losses = logged_losses(out)
    assert len(losses) >= 5
    assert losses[-1] < losses[0] - 0.5, losses  # nats: well past noise
    with open(out / "eval_results.json") as f:
        metrics = json.load(f)
    assert math.isfinite(metrics["perplexity"])
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    with open(out / "train_results.json") as f:
        assert json.load(f)["train_loss"] > 0
    with open(out / "trainer_state.json") as f:
        evaluated_at = [entry["step"] for entry in json.load(f)["log_history"] if "eval_loss" in entry]
    assert len(evaluated_at) == len(set(evaluated_at)), evaluated_at  # the last step is evaluated once
    assert (out / "checkpoint-12" / "trainer_state.json").is_file()
    assert (out / "checkpoint-24" / "trainer_state.json").is_file()
    assert (out / "model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 1000

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("ROMEO:", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert len(tokenizer.decode(generated[0][prompt["input_ids"].shape[1]:])) > 0
    return losses


BLOCK = 64  # tokens per sequence in the data tests


def sequences_of(tmp_path, tiny_model, train, validation=None, extra=()):
    """(raw texts, tokenized documents, training sequences) as run_clm.py makes them, in this process."""
    from transformers import AutoTokenizer

    from clmkit.args import parse_args
    from clmkit.data import load_raw_texts, make_sequences, tokenize_texts

    flags = ["--output_dir", tmp_path / "out", "--do_train", "--use_cpu", "--train_file", train,
             "--block_size", BLOCK, *extra]
    if validation:
        flags += ["--validation_file", validation]
    _, data_args, training_args, _ = parse_args(list(map(str, flags)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    raw, kinds = load_raw_texts(data_args, cache_dir=str(tmp_path / "cache"))
    tokens = tokenize_texts(raw, kinds, tokenizer, data_args, training_args)
    sequences, _ = make_sequences(tokens, kinds, tokenizer, BLOCK, data_args, training_args)
    return raw, tokens, sequences, tokenizer.eos_token_id


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Real text, small: train from the start of the example's train.txt, validation from validation.txt."""
    folder = tmp_path_factory.mktemp("corpus")
    with open(os.path.join(REPO, "train.txt"), encoding="utf-8") as f:
        train = f.read(120_000)
    with open(os.path.join(REPO, "validation.txt"), encoding="utf-8") as f:
        validation = f.read()
    (folder / "train.txt").write_text(train, encoding="utf-8")
    (folder / "validation.txt").write_text(validation, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_model(corpus, tmp_path_factory):
    """A 2-layer GPT-2 with a 500-token byte-level BPE tokenizer, both made here by tools/make_offline_model.py (in
    this process: the unit tests start no subprocess)."""
    from tools.make_offline_model import main as make_offline_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    make_offline_model(["--text", str(corpus / "train.txt"), "--out", str(out), "--vocab_size", "500",
                        "--model", TINY_CONFIG])
    return out


# ---------------------------------------------------------------- runs killed and rerun (test_resume*.py)


STEPS, SAVE_EVERY = 18, 6


# The fp16 mode on the CPU: fp16 weights, its 8-bit AdamW with stochastic rounding, the loss scale.
FP16_MODE_FLAGS = ["--dtype", "float16", "--optim", "adamw_torch_8bit"]


def resume_command(tiny_model, corpus, out, use_deepspeed, fp16_mode=False):
    flags = ["--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt", "--do_train",
             "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 4,
             "--max_steps", STEPS, "--save_steps", SAVE_EVERY, "--logging_steps", 1, "--learning_rate", 1e-3,
             "--seed", 3, "--use_cpu", "--report_to", "none",
             "--save_total_limit", 1]  # pruning must never remove the only complete checkpoint
    script = [os.path.join(REPO, "run_clm.py"), *map(str, flags), *(FP16_MODE_FLAGS if fp16_mode else [])]
    if use_deepspeed:  # full precision: DeepSpeed's CPU Adam on fp32 master weights
        return [DEEPSPEED, "--num_gpus=1", f"--master_port={free_port()}", *script,
                "--deepspeed", os.path.join(REPO, "ds_config.json")]
    return [sys.executable, *script]


def start_run(cmd, env=None):
    return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_to_end(cmd, env=None):
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def run_until_paused(cmd, hook):
    """Start the run with the test hook; return the process once it says it has paused there."""
    proc = start_run(cmd, {"CLM_TEST_PAUSE": hook})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "test hook: paused" in line:  # progress bars share the line
            proc.seen = "".join(seen)
            return proc
    proc.wait()
    pytest.fail(f"the run ended (exit {proc.returncode}) before the hook {hook}:\n" + "".join(seen[-40:]))


def final_state(out):
    with open(out / "trainer_state.json") as f:
        state = json.load(f)
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    with open(out / "train_results.json") as f:
        train_loss = json.load(f)["train_loss"]
    return state["global_step"], losses, train_loss, load_file(out / "model.safetensors")

"""Shared fixtures: a tiny GPT-2 and its tokenizer built here, and text cut from the Shakespeare example."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY_CONFIG = "n_layer=2,n_embd=64,n_head=2,n_positions=256"


def run(args, cwd=None, env=None, timeout=600):
    """Run a command the way a user would; returns the CompletedProcess (never raises on failure)."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def python(script, *args, **kwargs):
    return run([sys.executable, os.path.join(REPO, script), *map(str, args)], **kwargs)


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
    """A 2-layer GPT-2 with a 500-token byte-level BPE tokenizer, both trained/initialised in the test."""
    out = tmp_path_factory.mktemp("tiny") / "model"
    result = python("tools/make_offline_model.py", "--text", corpus / "train.txt", "--out", out,
                    "--vocab_size", 500, "--model", TINY_CONFIG)
    assert result.returncode == 0, result.stderr
    return out

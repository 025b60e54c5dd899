"""Bad input is reported before the model loads: exit code 2, one line per problem naming the culprit, no
traceback, and not a byte changed in any file that was there before (inputs, an earlier run's output_dir).

Each case runs the real run_clm.py. The cases start together (as many at a time as there are cores) when the
first one is asked for; each works in its own copy of the files below.
"""

import importlib.util
import concurrent.futures
import hashlib
import json
import os
import shutil
import stat
import sys

import pytest

from conftest import REPO

RUN_CLM = os.path.join(REPO, "run_clm.py")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SETPRIV = shutil.which("setpriv")


def cuda_available():
    import torch

    return torch.cuda.is_available()


# A valid command; each case appends flags (argparse keeps the last value of a repeated flag).
# {w} is the case's own folder, {model} the tiny model.
VALID = ["--model_name_or_path", "{model}", "--train_file", "{w}/train.txt", "--validation_file",
         "{w}/validation.txt", "--do_train", "--do_eval", "--output_dir", "{w}/previous", "--block_size", "64",
         "--per_device_train_batch_size", "8", "--learning_rate", "1e-4", "--use_cpu"]

MISMATCHED_DS = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 4,
                 "fp16": {"enabled": True}, "optimizer": {"type": "AdamW", "params": {"lr": 0.01}}}


def make_files(w, corpus):
    """The inputs every case gets, good and bad, and an earlier run's output_dir."""
    text = (corpus / "train.txt").read_text(encoding="utf-8")
    w.mkdir()
    (w / "train.txt").write_text(text[:20_000], encoding="utf-8")
    shutil.copy(corpus / "validation.txt", w / "validation.txt")
    (w / "empty.txt").write_bytes(b"")
    (w / "secret.txt").write_text(text[:2000], encoding="utf-8")
    (w / "notes.md").write_text(text[:2000], encoding="utf-8")
    (w / "latin1.txt").write_bytes("ROMEO:\nQue café, señor?\n".encode("latin-1"))  # é at offset 18, line 2
    (w / "columns.csv").write_text("title,body\nHamlet,To be or not to be\n", encoding="utf-8")
    (w / "blank_text.csv").write_text('text,act\n"",1\n" ",2\n', encoding="utf-8")
    (w / "body.jsonl").write_text('{"body": "To be"}\n{"body": "or not"}\n', encoding="utf-8")
    (w / "short.txt").write_text("To be or not to be, that is the question.", encoding="utf-8")  # ~20 tokens
    (w / "one_block.txt").write_text(text[:600], encoding="utf-8")  # ~400 tokens: one block of 256
    (w / "afile").write_text("not a folder\n")
    (w / "broken_ds.json").write_text('{\n  "zero_optimization": {"stage": 2},\n  "fp16": {"enabled": auto}\n}\n')
    (w / "mismatch_ds.json").write_text(json.dumps(MISMATCHED_DS, indent=2))
    (w / "stage5_ds.json").write_text(json.dumps({"zero_optimization": {"stage": 5, "offload_optimizer":
                                                                        {"device": "gpu"}}}))
    chat = {"messages": [{"role": "user", "content": "Who is there?"},
                         {"role": "assistant", "content": "Nay, answer me."}]}
    (w / "bad_role.jsonl").write_text(json.dumps(chat) + "\n\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Stand"}, {"role": "bot", "content": "Long live the king!"}]}) + "\n")
    (w / "no_content.json").write_text(json.dumps([chat, chat, {"messages": [{"role": "user"},
                                                                             {"role": "assistant", "content": "?"}]}]))
    (w / "long_chat.jsonl").write_text(json.dumps(chat) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": text[:400]}, {"role": "assistant", "content": "Aye."}]}) + "\n")
    (w / "nul.txt").write_bytes(b"\x00" * 4096)  # valid UTF-8, no text: a file zeroed by a failed copy
    (w / "blank.txt").write_text(" \n\n\t \n", encoding="utf-8")
    (w / "readonly").mkdir()
    previous = w / "previous" / "checkpoint-5"
    previous.mkdir(parents=True)
    (previous / "trainer_state.json").write_text('{"global_step": 5}')
    (previous / "model.safetensors").write_bytes(os.urandom(4096))
    (w / "previous" / "model.safetensors").write_bytes(os.urandom(4096))
    (w / "previous" / "config.json").write_text('{"model_type": "gpt2"}')
    # Last: what makes a file unreadable or a folder read-only (see ordinary_user for root).
    os.chmod(w / "secret.txt", 0)
    os.chmod(w / "readonly", 0o555)


def ordinary_user(command):
    """Root reads and writes anything; without its override capabilities it meets file permissions like anyone."""
    if not IS_ROOT:
        return command
    return [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search", *command]


def snapshot(folder):
    """{relative path: sha256} of every file under folder; unreadable ones are hashed by lending read permission."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            mode = os.stat(path).st_mode
            os.chmod(path, mode | stat.S_IRUSR)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
            os.chmod(path, mode)
    return hashes


needs_permissions = pytest.mark.skipif(IS_ROOT and not SETPRIV, reason="root without setpriv ignores permissions")

CUDA = cuda_available()

# (id, flags appended to VALID, expected lines: each a tuple of strings one stderr line must all contain,
#  extra environment, marks). A run takes seconds of imports, so related bad inputs share one.
CASES = [
    ("data-files-missing", ["--train_file", "{w}/nope.txt", "--validation_file", "{w}/valid.txt"],
     [("--train_file", "{w}/nope.txt", "no such file"),
      ("--validation_file", "{w}/valid.txt", "no such file")], {}, []),
    ("data-file-empty-or-wrong-extension", ["--train_file", "{w}/empty.txt", "--validation_file", "{w}/notes.md"],
     [("--train_file", "{w}/empty.txt", "is empty"),
      ("--validation_file", "{w}/notes.md", "unsupported extension", ".csv", ".txt", "texttocsv.py")], {}, []),
    ("data-file-unreadable-output-dir-read-only", ["--train_file", "{w}/secret.txt",
                                                   "--output_dir", "{w}/readonly/run"],
     [("--train_file", "{w}/secret.txt", "cannot read it", "Permission denied", "chmod a+r"),
      ("--output_dir", "{w}/readonly/run", "cannot write in", "Permission denied")], {}, [needs_permissions]),
    ("data-file-not-utf8", ["--train_file", "{w}/latin1.txt"],
     [("--train_file", "{w}/latin1.txt", "not UTF-8", "0xe9", "offset 14", "line 2", "convert it to UTF-8",
       "texttocsv.py", "--encoding latin-1")], {}, []),
    ("csv-without-usable-text-column", ["--train_file", "{w}/columns.csv", "--validation_file", "{w}/blank_text.csv"],
     [("--train_file", "{w}/columns.csv", "no 'text' column", "'title', 'body'", "--text_column"),
      ("--validation_file", "{w}/blank_text.csv", "'text' column is empty in every row")], {}, []),
    ("jsonl-without-text-column", ["--train_file", "{w}/body.jsonl", "--validation_file", "{w}/body.jsonl"],
     [("--train_file", "{w}/body.jsonl", "no 'text' column", "'body'", "--text_column body"),
      ("--validation_file", "{w}/body.jsonl", "no 'text' column", "--text_column body")], {}, []),
    ("chat-messages-malformed", ["--train_file", "{w}/bad_role.jsonl", "--validation_file", "{w}/no_content.json"],
     [("--train_file", "{w}/bad_role.jsonl", "line 3", "message 2 has role 'bot'", "system, user, assistant"),
      ("--validation_file", "{w}/no_content.json", "item 3", "message 1 (user) has no 'content' text")], {}, []),
    ("chat-conversation-longer-than-the-block", ["--train_file", "{w}/long_chat.jsonl"],
     [("--train_file", "{w}/long_chat.jsonl", "line 2", "tokens, longer than the block of 64",
       "raise --block_size")], {}, []),
    ("text-shorter-than-a-block", ["--validation_file", "{w}/short.txt"],
     [("--validation_file", "{w}/short.txt", "tokens, shorter than one block of 64 tokens", "use --block_size")],
     {}, []),
    ("too-little-to-hold-out", ["--train_file", "{w}/one_block.txt", "--validation_file", "", "--block_size", "256"],
     [("--train_file", "{w}/one_block.txt", "tokens, only 1 sequence(s) of 256 tokens", "hold 5% out",
       "--validation_file", "use --block_size")], {}, []),
    ("block-size-over-context-disk-too-small", ["--block_size", "2048"],
     [("--block_size 2048", "context is 256 tokens", "--block_size 256 or less"),
      ("--output_dir", "{w}/previous", "one checkpoint", "needs about", "is free", "--save_only_model")],
     {"CLM_ASSUME_FREE_DISK_GIB": "0"}, []),
    ("model-config-tokenizer-not-found", ["--model_name_or_path", "{w}/no_model", "--config_name", "{w}/no_config",
                                          "--tokenizer_name", "gpt2-not-downloaded"],
     [("--model_name_or_path", "{w}/no_model", "no such folder", "save_pretrained"),
      ("--config_name", "{w}/no_config", "no such folder"),
      ("--tokenizer_name gpt2-not-downloaded", "HF_HUB_OFFLINE", "hf download")], {"HF_HUB_OFFLINE": "1"}, []),
    ("unknown-model-type", ["--model_name_or_path", "", "--model_type", "gtp2", "--tokenizer_name", "{model}"],
     [("--model_type gtp2", "unknown", "gpt2")], {}, []),
    ("bad-config-overrides", ["--model_name_or_path", "", "--model_type", "gpt2", "--tokenizer_name", "{model}",
                              "--config_overrides", "n_layer=two,n_heads=2"],
     [("--config_overrides", "n_layer=two", "invalid literal"),
      ("--config_overrides", "n_heads=2", "isn't in the original config", "n_head")], {}, []),
    # TrainingArguments refuses these while parsing the flags: our lines, not its ValueError.
    ("deepspeed-not-json-bf16-without-gpu", ["--deepspeed", "{w}/broken_ds.json", "--bf16", "--use_cpu", "false"],
     [("--deepspeed", "{w}/broken_ds.json", "not valid JSON", "line 3, column 23")]
     + ([] if CUDA else [("--bf16", "no CUDA GPU", "--use_cpu")]), {}, []),
    ("deepspeed-contradicts-flags", ["--deepspeed", "{w}/mismatch_ds.json", "--bf16"],
     [("--deepspeed", "{w}/mismatch_ds.json", '"train_micro_batch_size_per_gpu" is 4',
       "--per_device_train_batch_size is 8", '"auto"'),
      ("--deepspeed", "{w}/mismatch_ds.json", '"fp16.enabled" is true', "--fp16 is not given", '"auto"'),
      ("--deepspeed", "{w}/mismatch_ds.json", '"optimizer.params.lr" is 0.01', "--learning_rate is 0.0001")],
     {}, []),
    # Numbers the Trainer took and failed on later (an eval batch of 0 after the whole training), or silently
    # (--max_steps -5 trained the epochs); --warmup_steps -1 TrainingArguments refuses while parsing.
    ("numbers-out-of-range", ["--per_device_eval_batch_size", "0", "--max_eval_samples", "0",
                              "--gradient_accumulation_steps", "0", "--learning_rate", "-1", "--warmup_steps", "-1",
                              "--max_steps", "-5", "--seed", "-1", "--save_steps", "0"],
     [("--per_device_eval_batch_size 0", "at least 1"), ("--max_eval_samples 0", "at least 1"),
      ("--gradient_accumulation_steps 0", "at least 1"), ("--learning_rate -1", "0 or more"),
      ("--warmup_steps -1", "0 or more"), ("--max_steps -5", "-1 to train --num_train_epochs"),
      ("--seed -1", "0 to 4294967295"), ("--save_steps 0", "--save_strategy no")], {}, []),
    # DeepSpeed's own model of the ZeRO section refused these with a pydantic traceback once the model had loaded.
    ("deepspeed-zero-section-invalid", ["--deepspeed", "{w}/stage5_ds.json"],
     [("--deepspeed", "{w}/stage5_ds.json", '"zero_optimization.stage" is 5', "0, 1, 2, 3", "ds_config.json"),
      ("--deepspeed", "{w}/stage5_ds.json", '"zero_optimization.offload_optimizer.device" is "gpu"', "'cpu'")],
     {}, []),
    # The datasets reader failed on NUL bytes with a traceback; whitespace was "use --block_size 9 or less".
    ("text-files-without-text", ["--train_file", "{w}/nul.txt", "--validation_file", "{w}/blank.txt"],
     [("--train_file", "{w}/nul.txt", "only NUL bytes", "put text in it"),
      ("--validation_file", "{w}/blank.txt", "only whitespace", "put text in it")], {}, []),
    # argparse took -1e-4 for a flag ("expected one argument"), so the check's own line never came.
    ("negative-value-after-a-space", ["--learning_rate", "-1e-4"], [("--learning_rate -0.0001", "0 or more")], {}, []),
    # 1,000 sequences a step from a few hundred trained "1 steps per epoch" without a word.
    ("batch-larger-than-the-data", ["--per_device_train_batch_size", "1000"],
     [("--per_device_train_batch_size 1000", "= 1,000 sequences a step, but the training data holds",
       "or less, or give more text")], {}, []),
    ("dtype-contradicts-precision", ["--dtype", "float16", "--bf16"],
     [("--dtype float16 with --bf16", "use --fp16, or drop --dtype")], {}, []),
    ("fp16-weights-without-master-copy", ["--dtype", "float16"],
     [("--dtype float16 with --optim adamw_torch", "no fp32 copy", "the fp16 mode (--fp16 --optim adamw_torch_8bit",
       "ds_config.json --fp16")], {}, []),
    # A card without bf16 (CLM_ASSUME_NO_BF16; planned for, as this machine has no GPU): the fp16 mode is named.
    ("bf16-on-a-card-without-it", ["--bf16", "--use_cpu", "false", "--plan"],
     [("--bf16: this GPU has no bf16", "use the fp16 mode, --fp16 --optim adamw_torch_8bit")],
     {"CLM_ASSUME_GPU_GIB": "15", "CLM_ASSUME_NO_BF16": "1"}, []),
    ("fp16-on-cpu", ["--fp16"],
     [("--fp16", "fp16 needs a CUDA GPU", "on CPU use --bf16 or no precision flag")], {}, []),
    ("output-dir-is-a-file", ["--output_dir", "{w}/afile"],
     [("--output_dir", "{w}/afile", "is a file, not a folder")], {}, []),
    ("unknown-flag", ["--lerning_rate", "1e-4"], [("unknown flag --lerning_rate", "did you mean --learning_rate?")],
     {}, []),
    # Flags the Trainer would fail on only after tokenizing and loading: an integration that is not installed, the
    # hub while it is offline, a checkpoint that is not one.
    ("flags-that-fail-after-loading", ["--report_to", "tensorboard", "--push_to_hub", "--resume_from_checkpoint",
                                       "{w}/no_checkpoint"],
     [("--report_to tensorboard", "not installed", "pip install tensorboard", "--report_to none"),
      ("--push_to_hub", "offline", "HF_HUB_OFFLINE"),
      ("--resume_from_checkpoint", "{w}/no_checkpoint", "not a complete checkpoint")], {"HF_HUB_OFFLINE": "1"},
     [pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")]),
    ("train-without-train-file", ["--train_file", ""], [("--do_train needs --train_file",)], {}, []),
    # stepping in the backward cannot accumulate: named, with the flag that fixes it
    ("optimizer-in-backward-limits", ["--optimizer_in_backward", "--gradient_accumulation_steps", "2"],
     [("--optimizer_in_backward", "--gradient_accumulation_steps 2", "use --gradient_accumulation_steps 1")], {}, []),
    # the state comes to the GPU a parameter at a time only as each steps in the backward pass
    ("optimizer-state-on-host-alone", ["--optimizer_state_on_host"],
     [("--optimizer_state_on_host without --optimizer_in_backward", "add --optimizer_in_backward")], {}, []),
    # torchao is in requirements.txt (the bf16 mode's 8-bit AdamW); bitsandbytes is not, so CI sees the message
    ("optimizer-package-missing", ["--optim", "adamw_bnb_8bit"],
     [("--optim adamw_bnb_8bit", "needs the bitsandbytes package")], {},
     [pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None,
                         reason="bitsandbytes is installed here")]),
]

# Many problems in one command: every one of them reported by one run.
SEVERAL = ["--train_file", "{w}/latin1.txt", "--validation_file", "{w}/empty.txt", "--tokenizer_name",
           "{w}/no_tokenizer", "--block_size", "2048", "--deepspeed", "{w}/mismatch_ds.json", "--fp16",
           "--output_dir", "{w}/afile"]
SEVERAL_EXPECTED = [
    ("--train_file", "{w}/latin1.txt", "not UTF-8"),
    ("--validation_file", "{w}/empty.txt", "is empty"),
    ("--tokenizer_name", "{w}/no_tokenizer", "no such folder"),
    ("--block_size 2048",),
    ("--deepspeed", '"train_micro_batch_size_per_gpu" is 4'),
    ("--deepspeed", '"optimizer.params.lr" is 0.01'),
    ("--fp16", "fp16 needs a CUDA GPU"),
    ("--output_dir", "{w}/afile", "is a file"),
]


def fill(value, w, model):
    return value.replace("{w}", str(w)).replace("{model}", str(model))


HOST_RAM = "CLM_ASSUME_HOST_RAM_GIB"


def run_case(w, model, flags, env, wrap=lambda command: command):
    """Run run_clm.py in folder w; (result, files before, files after)."""
    import subprocess

    before = snapshot(w)
    command = wrap([sys.executable, RUN_CLM, *(fill(a, w, model) for a in VALID + flags)])
    # The count of error lines is exact, so the host RAM check must not depend on what the test machine has free
    # at that moment (cases about RAM set their own).
    env = {**os.environ, HOST_RAM: "64", **env}
    result = subprocess.run(command, cwd=w, env=env, capture_output=True, text=True,
                            timeout=300)
    return result, before, snapshot(w)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, corpus, tiny_model):
    """Every case, started together; {id: future of (folder, result, files before, files after)}."""
    root = tmp_path_factory.mktemp("bad_input")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    futures = {}
    jobs = [(case[0], case[1], case[3]) for case in CASES] + [("several", SEVERAL, {})]
    for name, flags, env in jobs:
        w = root / name
        make_files(w, corpus)
        permissions = name == "data-file-unreadable-output-dir-read-only"
        wrap = ordinary_user if permissions and SETPRIV else (lambda command: command)
        futures[name] = (w, pool.submit(run_case, w, tiny_model, flags, env, wrap))
    yield futures
    pool.shutdown(wait=True)
    for w, _ in futures.values():  # so that the folders can be removed
        os.chmod(w / "readonly", 0o755)
        os.chmod(w / "secret.txt", 0o644)


def check_reported(outcome, expected):
    w, future = outcome
    result, before, after = future.result()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    for parts in expected:
        parts = [fill(p, w, "") for p in parts]
        assert any(all(p in line for p in parts) for line in errors), f"no line with {parts} in:\n" + \
            "\n".join(errors)
    assert len(errors) == len(expected), "\n".join(errors)  # nothing else wrong with the valid command
    assert after == before  # every file there before is byte-identical after, and no file was added
    return errors


@pytest.mark.parametrize("name,flags,expected,env", [pytest.param(*case[:4], id=case[0], marks=case[4])
                                                      for case in CASES])
def test_bad_input_is_one_line_before_the_model_loads(outcomes, name, flags, expected, env):
    errors = check_reported(outcomes[name], expected)
    if name in ("text-shorter-than-a-block", "too-little-to-hold-out"):
        # The suggested --block_size fits the text: the file's tokens make the blocks it needs.
        words = errors[0].split()
        tokens = int(words[words.index("tokens,") - 1].replace(",", ""))
        suggested = int(words[words.index("--block_size") + 1])
        assert 2 <= suggested and suggested * (2 if name == "too-little-to-hold-out" else 1) <= tokens


def test_several_problems_reported_in_one_run(outcomes):
    check_reported(outcomes["several"], SEVERAL_EXPECTED)

"""The input checks as functions: precision against the machine, where a file stops being UTF-8, a model folder
without weights."""

from types import SimpleNamespace

import pytest

from clmkit.checks import first_non_utf8_byte, hub_problems, precision_problems, reporting_problems
from clmkit.loading import model_weights_problems


@pytest.mark.parametrize("fp16,bf16,use_cpu,cuda,bf16_ok,expected", [
    (True, False, False, False, False, "fp16 needs a CUDA GPU and this machine has none; on CPU use --bf16 --use_cpu"),
    (True, False, True, False, False, "fp16 needs a CUDA GPU and this machine has none; on CPU use --bf16 or no"),
    (True, False, True, True, True, "--fp16 with --use_cpu: fp16 needs a CUDA GPU; drop --use_cpu"),
    (True, False, False, True, False, None),  # fp16 on any CUDA card
    (False, True, False, True, False, "--bf16: this GPU has no bf16 (that needs an Ampere or newer card); use the fp16 "
                                      "mode, --fp16 --optim adamw_torch_8bit"),
    (False, True, False, True, True, None),
    (False, True, False, False, False, "--bf16: this machine has no CUDA GPU; add --use_cpu"),
    (False, True, True, False, False, None),  # bf16 on the CPU
    (True, True, False, True, True, "--fp16 and --bf16: give one of them"),
    (False, False, False, False, False, None),
])
def test_precision_against_the_machine(fp16, bf16, use_cpu, cuda, bf16_ok, expected):
    problems = precision_problems(fp16, bf16, use_cpu, cuda_available=cuda, bf16_supported=bf16_ok)
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems
    if bf16 and not fp16 and cuda and not bf16_ok:  # names the mode for such a card
        assert "--fp16 --optim adamw_torch_8bit" in problems[0]


def test_non_utf8_offset_across_chunks(tmp_path):
    path = tmp_path / "text.txt"
    data = ("é" * 10 + "\n").encode() * 3 + b"ab\xff"  # each line 21 bytes; 0xff at 65, line 4
    path.write_bytes(data)
    for chunk_size in (1, 2, 5, 1 << 20):  # a chunk may end inside a two-byte character
        assert first_non_utf8_byte(path, chunk_size) == (65, 0xFF, 4)
    path.write_bytes("ok é\n".encode() + b"\xc3")  # cut off in the middle of a character
    assert first_non_utf8_byte(path, 3) == (6, 0xC3, 2)
    path.write_bytes("fine é\n".encode())
    assert first_non_utf8_byte(path, 2) is None


def test_model_folder_without_weights(tmp_path, tiny_model):
    """Caught before loading: --config_name and --tokenizer_name given, the weights' folder empty."""
    assert model_weights_problems(str(tiny_model)) == []
    (problem,) = model_weights_problems(str(tmp_path))
    assert problem.startswith(f"--model_name_or_path {tmp_path}: the folder has no model weights")
    (problem,) = model_weights_problems(str(tmp_path / "gone"))
    assert f"{tmp_path / 'gone'}: no such folder" in problem


def test_reporting_integrations_that_are_not_installed_are_named(monkeypatch):
    monkeypatch.setattr("clmkit.checks.get_available_reporting_integrations", lambda: ["wandb"])
    assert reporting_problems(["none"]) == [] and reporting_problems(["wandb"]) == []
    (line,) = reporting_problems(["tensorboard"])
    assert line == ("--report_to tensorboard: the tensorboard package is not installed; pip install tensorboard, "
                    "or use --report_to none")
    (line,) = reporting_problems(["tensorbored"])
    assert line.startswith("--report_to tensorbored: no such integration; use one of ") and "tensorboard" in line


def test_pushing_to_the_hub_needs_it_online_and_a_token(monkeypatch, tmp_path):
    args = SimpleNamespace(push_to_hub=True, hub_token=None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (line,) = hub_problems(args)
    assert line.startswith("--push_to_hub: the hub is offline here (HF_HUB_OFFLINE is set)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    (line,) = hub_problems(args)
    assert "no hub token" in line and "hf auth login" in line and "--hub_token" in line
    assert hub_problems(SimpleNamespace(push_to_hub=True, hub_token="hf_x")) == []
    assert hub_problems(SimpleNamespace(push_to_hub=False, hub_token=None)) == []


def overridden(model_type, overrides):
    from clmkit.loading import load_config

    return load_config(SimpleNamespace(model_type=model_type, config_name=None, model_name_or_path=None,
                                       cache_dir=None, model_revision="main", token=None, trust_remote_code=False,
                                       config_overrides=overrides))


def test_config_overrides_rederive_what_the_config_derives_from_them():
    """Qwen2's config keeps one layer type per layer, made from num_hidden_layers when the config is made: overriding
    the layer count left 32 layer types for 2 layers, and building the model failed. Llama's keeps head_dim, made
    from the hidden size over the heads: overriding those left 128 (4096 / 32), a model of other shapes than asked."""
    config = overridden("qwen2", "hidden_size=64,num_hidden_layers=2,num_attention_heads=4")
    assert config.num_hidden_layers == 2 and len(config.layer_types) == 2 and config.hidden_size == 64
    config.validate()
    assert overridden("llama", "hidden_size=64,num_hidden_layers=2,num_attention_heads=4").head_dim == 16
    assert overridden("llama", "hidden_size=64,num_attention_heads=4,head_dim=32").head_dim == 32  # named: kept
    assert overridden("gemma", "hidden_size=64,num_attention_heads=4").head_dim == 256  # Gemma's own, not derived

"""Beyond GPT-2: tiny Llama-, Qwen2-, GPT-NeoX- and GPT-J-shaped models, built from configs, train in every mode that
runs on a CPU (fp32 AdamW, the bf16 mode, the fp16 mode, DeepSpeed's classic recipe): the loss falls, the start-up
summary names the architecture, and the saved model reloads with from_pretrained and generates.

DeepSpeed runs with the Llama-shaped model alone, to keep CI short: it wraps the model whatever its family, and
what differs between families (loading, 16-bit weights, the loss through an untied output layer) runs in the other
modes for every family."""

import json

import pytest
from conftest import FAMILIES, deepspeed_run, logged_losses, python

STEPS = 12
MODES = {
    "fp32": [],
    "bf16-mode": ["--bf16", "--dtype", "bfloat16", "--optim", "adamw_torch_8bit", "--optim_args",
                  "bf16_stochastic_round=True", "--chunked_loss"],
    "fp16-mode": ["--dtype", "float16", "--optim", "adamw_torch_8bit", "--chunked_loss"],
    "deepspeed": None,  # the classic recipe's engine: ds_config.json, in fp32 on the CPU
}


@pytest.fixture(scope="module", params=[family for family in FAMILIES if family != "gpt_neo"])
def family_model(request, tiny_model, tmp_path_factory):
    """(family, a folder with the tiny model of that family, random weights, and the tests' tokenizer)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer

    family = request.param
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = CONFIG_MAPPING[family](vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **FAMILIES[family])
    folder = tmp_path_factory.mktemp(family) / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return family, folder


@pytest.mark.parametrize("mode", list(MODES))
def test_each_family_trains_in_each_mode_and_reloads(family_model, mode, corpus, tmp_path):
    family, model = family_model
    if mode == "deepspeed" and family != "llama":
        pytest.skip("DeepSpeed runs with the Llama-shaped model (see the module's docstring)")
    out = tmp_path / "out"
    flags = ["--model_name_or_path", model, "--train_file", corpus / "train.txt", "--do_train",
             "--output_dir", out, "--block_size", 32, "--per_device_train_batch_size", 4, "--max_steps", STEPS,
             "--logging_steps", 1, "--learning_rate", 3e-3, "--save_strategy", "no", "--use_cpu",
             "--report_to", "none"]
    if MODES[mode] is None:
        result = deepspeed_run("--deepspeed", "ds_config.json", *flags)
    else:
        result = python("run_clm.py", *flags, *MODES[mode])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"parameters ({family})" in result.stdout
    losses = logged_losses(out)
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.3, losses  # nats: well past noise

    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with open(out / "config.json") as f:
        assert json.load(f)["model_type"] == family
    generated = reloaded.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > 3

"""The benchmark's rows (bench/rows.py) are commands run_clm.py accepts, and the comparisons the table makes
between rows are between like and like."""

import json
import os

import pytest
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from conftest import REPO

from bench import runner
from bench.rows import CLASSIC, CONFIGS, Config, ops_needed, selected_rows
from clmkit import checks
from clmkit.args import deepspeed_config, parse_args


def read_json(relative):
    with open(os.path.join(REPO, relative), encoding="utf-8") as f:
        return json.load(f)


def row_flags(name, tmp_path, use_cpu):
    """The run_clm.py part of the command the runner builds for row `name`."""
    settings = runner.Settings(work_dir=str(tmp_path), log_dir=str(tmp_path), train_file="train.csv",
                               validation_file="validation.csv", steps=20, block_size=1024, gpu_memory_gib=16,
                               use_cpu=use_cpu)
    prepared = runner.Prepared(model_dir="gpt2", cache_dir=str(tmp_path / "hf-cache"),
                               common_flags=runner.common_flags(settings, "gpt2", str(tmp_path / "hf-cache")))
    command = runner.row_command(name, settings, prepared, str(tmp_path / "runs" / name))
    return command[command.index(runner.RUN_CLM) + 1:]


@pytest.mark.parametrize("use_cpu", [False, True], ids=["gpu", "cpu"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_row_is_a_command_run_clm_accepts(name, use_cpu, tmp_path):
    """The command the runner builds, as on a GPU machine and as in the CPU tests (--fp16 rows run in bf16
    there), parsed by run_clm.py's own parser with nothing refused and none of its flag rules or DeepSpeed config
    comparisons broken: a typo in a flag, flags that contradict each other or a config that contradicts the row's
    flags is caught here, not after a GPU machine has loaded the model."""
    config = CONFIGS[name]
    flags = row_flags(name, tmp_path, use_cpu)
    try:
        model_args, data_args, training_args, refused = parse_args(flags)
        # On a machine without the GPU a row is meant for, TrainingArguments refuses its bf16 (and only that).
        this_machine = checks.machine_precision_problems("--fp16" in flags, "--bf16" in flags, use_cpu)
        assert [line for line in refused if line not in this_machine] == []
        assert checks.flag_problems(model_args, data_args, training_args) == []
        if config.ds_config:
            assert checks.deepspeed_file_problems(os.path.join(REPO, config.ds_config)) == []
            assert checks.deepspeed_problems(config.ds_config, deepspeed_config(training_args), training_args) == []
        else:
            assert training_args.deepspeed is None
    finally:
        unset_hf_deepspeed_config()
    if not use_cpu:  # each row's own flags come after the common ones, so that they win
        assert flags[len(flags) - len(config.flags):] == list(config.flags)


def test_multi_gpu_rows_scale_a_one_gpu_row_with_the_same_flags():
    for name, config in CONFIGS.items():
        if config.gpus and config.gpus > 1:
            assert config.scales in CONFIGS, name
            base = CONFIGS[config.scales]
            assert base.gpu_count(1) == 1 and base.scales is None, name
            assert (base.ds_config, base.flags, base.env, base.gpu_memory_gib) == \
                (config.ds_config, config.flags, config.env, config.gpu_memory_gib), name
        else:
            assert config.scales is None, name


def test_classic_is_first_and_frozen():
    assert list(CONFIGS)[:2] == [CLASSIC, "shipped"]
    classic = CONFIGS[CLASSIC]
    # the original recipe, frozen: its own copy of the guide's ds_config, ZeRO-2 with the optimizer offloaded,
    # fp16, 8 x 2, weights loaded in fp32, GPT-2's own GELU, PyTorch's default allocator
    assert classic.ds_config == "bench/ds_classic.json"
    assert classic == Config("bench/ds_classic.json", (
        "--fp16", "--dtype", "float32", "--no_fused_gelu", "--per_device_train_batch_size", "8",
        "--gradient_accumulation_steps", "2"), env={"PYTORCH_CUDA_ALLOC_CONF": ""})
    ds_classic = read_json("bench/ds_classic.json")
    assert ds_classic["zero_optimization"]["stage"] == 2
    assert ds_classic["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    # shipped: today's ds_config.json with the classic command's flags and run_clm.py's defaults
    assert CONFIGS["shipped"] == Config("ds_config.json", classic.flags[:1] + classic.flags[4:])
    assert CONFIGS["no-offload-80g"].gpu_memory_gib is None


def test_deepspeed_configs_differ_from_their_baseline_only_where_their_name_says():
    # ds_config_zero1.json is the shipped config but for the stage
    shipped, zero1 = read_json("ds_config.json"), read_json("ds_config_zero1.json")
    assert (zero1["zero_optimization"].pop("stage"), shipped["zero_optimization"].pop("stage")) == (1, 2)
    assert zero1 == shipped
    # The no-offload config is the classic one, "auto" values and all, without the optimizer offload.
    classic = read_json("bench/ds_classic.json")
    del classic["zero_optimization"]["offload_optimizer"]
    assert read_json("bench/ds_zero2_no_offload.json") == classic


def test_selected_rows_and_the_ops_they_load():
    assert selected_rows(None) == (list(CONFIGS), [])
    assert selected_rows("zero1, classic,zero1") == ([CLASSIC, "zero1"], [])
    names, problems = selected_rows("classic,fastest,quickest")
    assert names == [] and len(problems) == 1
    assert problems[0].startswith("--configs: unknown configurations fastest, quickest; valid names: classic, ")
    # CPU Adam for the offloading rows, FusedAdam for ZeRO without offload, nothing without DeepSpeed
    assert ops_needed([CLASSIC]) == ["CPUAdamBuilder"]
    assert ops_needed(["no-offload-80g", "bf16-adam8bit"]) == ["FusedAdamBuilder"]
    assert ops_needed(["bf16-adam8bit-sr"]) == []

"""tools/make_offline_model.py builds any family's random model (what the GPU runs train when no hub is reachable),
in the dtype asked for, and refuses a family Transformers does not know."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from clmkit.errors import UsageError
from tools.make_offline_model import main

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 40


def test_a_llama_shaped_model_in_bf16_with_its_own_vocabulary(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    main(["--text", str(text), "--out", str(tmp_path / "m"), "--vocab_size", "300", "--model_type", "llama",
          "--model", "hidden_size=32,intermediate_size=64,num_hidden_layers=3,num_attention_heads=2,"
                     "num_key_value_heads=1,vocab_size=1024,tie_word_embeddings=True", "--dtype", "bfloat16"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 3
    assert model.dtype == torch.bfloat16 and model.get_output_embeddings().weight.shape[0] == 1024
    assert model.config.tie_word_embeddings is True


def test_an_unknown_family_is_refused_before_anything_is_made(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    with pytest.raises(UsageError, match="--model_type gpt5"):
        main(["--text", str(text), "--out", str(tmp_path / "m"), "--model_type", "gpt5", "--model", "n_layer=1"])
    assert not (tmp_path / "m").exists()

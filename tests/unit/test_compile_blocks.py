"""--torch_compile compiles each repeated block in place: the same loss and gradients, the same weight names."""

import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from clmkit.loading import compile_blocks


def test_compiled_blocks_train_like_the_eager_model_and_save_under_the_same_names():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=97, n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    eager = GPT2LMHeadModel(config)
    eager.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled) == (3, "GPT2Block")
    ids = torch.randint(0, 97, (2, 24))
    losses = []
    for model in (eager, compiled):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    for (name, p), (other, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        assert name == other
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_the_start_up_line_says_which_speed_ups_a_model_gets_and_why_not():
    from types import SimpleNamespace

    from transformers import LlamaConfig

    from clmkit.loading import speed_switches

    flags = SimpleNamespace(chunked_loss=True, padded_lm_head=True, torch_compile=True, deepspeed=None)
    gpt2 = speed_switches(GPT2Config(), SimpleNamespace(fused_gelu=True), flags)
    assert gpt2 == "one-kernel GELU on; LM head padded 50,257 -> 50,304 rows; --torch_compile: each repeated block"
    llama = speed_switches(LlamaConfig(vocab_size=128256), SimpleNamespace(fused_gelu=True),
                           SimpleNamespace(**{**vars(flags), "torch_compile": False}))
    assert llama == ("one-kernel GELU not applicable (the model's activation is silu); LM head padding not needed "
                     "(128,256 rows, a multiple of 128); blocks not compiled (--torch_compile compiles them)")

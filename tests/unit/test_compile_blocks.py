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

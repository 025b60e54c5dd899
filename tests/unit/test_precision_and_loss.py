"""The chunked loss computes the model's own loss and gradient; weights load in the precision they train in."""

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from clmkit.loading import training_dtype
from clmkit.loss import CHUNK_LOGITS, chunk_tokens_for, chunked_causal_lm_loss_sum
from conftest import FAMILIES


@pytest.mark.parametrize("vocab_multiple", [128, 1], ids=["head-padded-to-128-rows", "head-as-it-is"])
def test_chunked_loss_equals_full_loss(vocab_multiple):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).eval()
    ids = torch.randint(0, 97, (3, 40))
    labels = ids.clone()
    labels[0, 30:] = -100  # padding masked out
    full = model(input_ids=ids, labels=labels)
    full.loss.backward()
    full_grad = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    hidden = model(input_ids=ids, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
    total, count = chunked_causal_lm_loss_sum(hidden, labels, model.get_output_embeddings(), chunk_tokens=16,
                                              vocab_multiple=vocab_multiple)
    (total / count).backward()
    assert count == 3 * 39 - 10
    assert torch.allclose(total / count, full.loss, rtol=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, full_grad, rtol=1e-4, atol=1e-7)


def test_weights_load_in_the_deepspeed_training_precision():
    """DeepSpeed casts the model to fp16/bf16 and makes its fp32 master copy from that: loading straight into the
    half precision is the same numbers. Without DeepSpeed the Trainer's autocast needs the checkpoint's fp32, except
    in the fp16 mode (--fp16 with its 8-bit AdamW), which trains fp16 weights."""
    def args(**kw):
        return SimpleNamespace(**dict(dict(deepspeed=None, fp16=False, bf16=False, optim="adamw_torch"), **kw))

    model_args = SimpleNamespace(dtype=None)
    assert training_dtype(model_args, args(deepspeed="ds_config.json", fp16=True)) is torch.float16
    assert training_dtype(model_args, args(deepspeed="ds_config.json", bf16=True)) is torch.bfloat16
    assert training_dtype(model_args, args(deepspeed="ds_config.json")) is None
    assert training_dtype(model_args, args(fp16=True)) is None
    assert training_dtype(model_args, args(fp16=True, optim="adamw_torch_8bit")) is torch.float16
    assert training_dtype(model_args, args(bf16=True, optim="adamw_torch_8bit")) is None
    assert training_dtype(SimpleNamespace(dtype="float32"), args(deepspeed="ds_config.json", fp16=True)) \
        is torch.float32


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_chunked_loss_is_each_familys_own_loss(family):
    """Through the model's own output layer, tied to the embedding or not, with its bias where it has one: the
    chunked loss equals the model's loss."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    torch.manual_seed(0)
    config = CONFIG_MAPPING[family](vocab_size=500, bos_token_id=0, eos_token_id=0, **FAMILIES[family])
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 500, (2, 40))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt
    expected = model(input_ids=ids, labels=labels).loss
    hidden = model(input_ids=ids, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]
    total, count = chunked_causal_lm_loss_sum(hidden, labels, model.get_output_embeddings(), chunk_tokens=16)
    assert torch.allclose(total / count, expected, rtol=1e-5)


def test_weights_read_onto_a_device_arrive_there_in_the_training_dtype(tiny_model):
    """The fp16 mode reads pretrained weights straight onto its GPU through the loader's device map; here the
    device is the CPU, the one this machine has: the same call, the weights in fp16 where they were sent."""
    from transformers import AutoConfig

    from clmkit.loading import _build_for_training

    model_args = SimpleNamespace(model_name_or_path=str(tiny_model), cache_dir=None, model_revision="main",
                                 token=None, trust_remote_code=False)
    config = AutoConfig.from_pretrained(tiny_model)
    model = _build_for_training(model_args, config, torch.float16, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("vocab, tokens", [(50257, 2048), (128256, 768), (151936, 640), (262144, 384),
                                           (2_000_000, 128)])
def test_a_larger_vocabulary_takes_fewer_tokens_a_chunk(vocab, tokens):
    """A loss chunk holds about as many logits for any vocabulary as for GPT-2's (whose 2048 tokens measured well),
    in whole multiples of 128 tokens, and never fewer than 128."""
    assert chunk_tokens_for(vocab) == tokens
    assert tokens * vocab <= CHUNK_LOGITS or tokens == 128


@pytest.mark.parametrize("vocab_multiple", [1, 128])
def test_the_evaluation_counts_right_tokens_chunk_by_chunk(vocab_multiple):
    """eval_accuracy without a whole batch's logits: the same loss and the same count of right argmaxes as the full
    logits give, padding (-100) left out, over chunks that do not divide the tokens."""
    from clmkit.loss import chunked_eval_sums

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 301, bias=False)
    hidden = torch.randn(3, 40, 16)
    labels = torch.randint(0, 301, (3, 40))
    labels[1, 25:] = -100
    logits = head(hidden)[:, :-1].reshape(-1, 301)
    targets = labels[:, 1:].reshape(-1)
    loss_sum, predicted, correct = chunked_eval_sums(hidden, labels, head, chunk_tokens=7,
                                                     vocab_multiple=vocab_multiple)
    assert torch.allclose(loss_sum, torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), rtol=1e-5)
    assert predicted == (targets != -100).sum() == 3 * 39 - 15
    assert correct == ((logits.argmax(-1) == targets) & (targets != -100)).sum()
    head.weight.data[:] = 0
    head.weight.data[labels[0, 1]] = hidden[0, 0]  # the first prediction now surely right
    assert chunked_eval_sums(hidden, labels, head, chunk_tokens=7)[2] >= 1

"""Faster modes must compute the same thing: the chunked loss against the model's own loss."""

import torch

from conftest import python
from test_run_clm import logged_losses


def test_chunked_loss_equals_full_loss():
    from transformers import GPT2Config, GPT2LMHeadModel

    from clmkit.loss import chunked_causal_lm_loss_sum

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
    total, count = chunked_causal_lm_loss_sum(hidden, labels, model.get_output_embeddings(), chunk_tokens=16)
    (total / count).backward()
    assert count == 3 * 39 - 10
    assert torch.allclose(total / count, full.loss, rtol=1e-5)
    assert torch.allclose(model.transformer.wte.weight.grad, full_grad, rtol=1e-4, atol=1e-7)


def test_chunked_loss_trains_like_the_default(tiny_model, corpus, tmp_path):
    """Same seed, accumulation 2: the logged losses match the default path to float rounding."""
    runs = {}
    for name, extra in (("default", []), ("chunked", ["--chunked_loss"])):
        out = tmp_path / name
        result = python("run_clm.py", "--model_name_or_path", tiny_model, "--train_file", corpus / "train.txt",
                        "--do_train", "--output_dir", out, "--block_size", 64, "--per_device_train_batch_size", 4,
                        "--gradient_accumulation_steps", 2, "--max_steps", 8, "--logging_steps", 1,
                        "--learning_rate", 1e-3, "--seed", 5, "--use_cpu", "--save_strategy", "no", *extra)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        runs[name] = logged_losses(out)
    assert len(runs["default"]) == 8
    for a, b in zip(runs["default"], runs["chunked"]):
        assert abs(a - b) < 1e-4 * abs(a), runs

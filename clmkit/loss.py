"""Cross-entropy over the vocabulary in chunks of tokens, so the full logits never exist at once.

GPT-2 XL at micro-batch 8 x 1024 tokens makes 8 x 1024 x 50257 logits: 0.8 GB in fp16, 1.6 GB again as the
fp32 copy the loss needs, and as much for its gradient. Chunked, with each chunk's logits recomputed in the
backward pass, only one chunk's worth exists at a time, and the freed memory buys a larger micro-batch.

The head's rows are padded with zeros to a multiple of VOCAB_MULTIPLE for the matmuls: with 50,257 rows, the
logits' rows are not 16-byte aligned, and a GPU falls back from its fast kernels to old ones (the LM head took
27% of a 12-layer step's GPU time on an H100, docs/profile-step.md). The padded logits are sliced off before
the loss, which is unchanged.
"""

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# A chunk holds about 100M logits: 2048 tokens of GPT-2's head padded to 50,304 rows, which measured well. A larger
# vocabulary takes fewer tokens a chunk (Llama 3's 128,256: 768), so that its chunk costs the GPU no more memory.
CHUNK_LOGITS = 2048 * 50304
VOCAB_MULTIPLE = 128


def chunk_tokens_for(vocab):
    """Tokens a loss chunk for an LM head of `vocab` rows: CHUNK_LOGITS' worth, in whole multiples of 128."""
    return max(128, CHUNK_LOGITS // max(vocab, 1) // 128 * 128)


def padding_rows(vocab, multiple=VOCAB_MULTIPLE):
    """Zero rows that bring an LM head of `vocab` rows to a multiple of `multiple`."""
    return -vocab % multiple


def _logits(hidden, head, multiple):
    # In the backward's recompute the autocast state may differ from the forward's (CPU autocast is not always
    # restored there): match the weight's dtype explicitly, so fp32 hidden states meet bf16 weights either way.
    hidden = hidden.to(head.weight.dtype)
    vocab = head.weight.shape[0]
    extra = padding_rows(vocab, multiple) if isinstance(head, torch.nn.Linear) else 0
    if not extra:
        return head(hidden)
    bias = None if head.bias is None else F.pad(head.bias, (0, extra))
    return F.linear(hidden, F.pad(head.weight, (0, 0, 0, extra)), bias)[:, :vocab]


def _chunk_loss_sum(hidden, labels, head, multiple):
    logits = _logits(hidden, head, multiple).float()
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")


def chunked_causal_lm_loss_sum(hidden_states, labels, output_embeddings, chunk_tokens=None,
                               vocab_multiple=VOCAB_MULTIPLE):
    """(sum of next-token losses, number of predicted tokens) for final hidden states [batch, seq, hidden].
    chunk_tokens=None: chunk_tokens_for the head's rows. vocab_multiple=1: the head as it is."""
    chunk_tokens = chunk_tokens or chunk_tokens_for(output_embeddings.weight.shape[0])
    hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        stop = start + chunk_tokens
        total = total + checkpoint(_chunk_loss_sum, hidden[start:stop], targets[start:stop], output_embeddings,
                                   vocab_multiple, use_reentrant=False)
    return total, (targets != -100).sum()


@torch.no_grad()
def chunked_eval_sums(hidden_states, labels, output_embeddings, chunk_tokens=None, vocab_multiple=VOCAB_MULTIPLE):
    """(sum of next-token losses, number of predicted tokens, how many of them the model's most likely token got
    right) for an evaluation, chunk by chunk: the accuracy without the logits of a whole batch."""
    chunk_tokens = chunk_tokens or chunk_tokens_for(output_embeddings.weight.shape[0])
    hidden = hidden_states[:, :-1].reshape(-1, hidden_states.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        logits = _logits(hidden[start:start + chunk_tokens], output_embeddings, vocab_multiple).float()
        chunk_targets = targets[start:start + chunk_tokens]
        total += F.cross_entropy(logits, chunk_targets, ignore_index=-100, reduction="sum")
        correct += ((logits.argmax(-1) == chunk_targets) & (chunk_targets != -100)).sum()
    return total, (targets != -100).sum(), correct

"""Vocabulary padding: rows of the output layer beyond the tokenizer's ids.

`model.vocab_size` may exceed the tokenizer's size (50,257 -> 50,304 for GPT-2, 30,522 -> 30,528 for
bert-base-uncased) so the embedding and LM-head matmuls have GPU-friendly shapes. The padded ids
are no tokens: their logits are set to the dtype's minimum in the shared LM head, the one place
every use of the logits goes through (training loss, exact likelihoods, the diffusion bound, the
KV-cached and ancestral samplers). A softmax then gives them exactly zero probability and zero
gradient; the minimum rather than -inf keeps differences and products of logits finite.
"""

from __future__ import annotations

import torch


def mask_padded_vocab(logits: torch.Tensor, real_vocab: int | None) -> torch.Tensor:
    """`logits` [..., vocab_size] with ids >= real_vocab set to the dtype's minimum, in place."""
    if real_vocab is not None and real_vocab < logits.shape[-1]:
        logits[..., real_vocab:] = torch.finfo(logits.dtype).min
    return logits

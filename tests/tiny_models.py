"""A tiny Pythia-architecture language model for integration tests (built, never downloaded)."""

from __future__ import annotations

import torch

VOCAB = 64
CONTEXT = 16


def tiny_gpt_neox(seed: int = 0):
    transformers = __import__("transformers")
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=CONTEXT,
        use_cache=False,
    )
    torch.manual_seed(seed)
    return transformers.GPTNeoXForCausalLM(config)


def token_batches(n_batches: int, batch_size: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Sequences with a learnable pattern: each token is the previous one plus a fixed step."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        start = torch.randint(0, VOCAB, (batch_size, 1), generator=generator)
        ids = (start + 3 * torch.arange(CONTEXT)) % VOCAB
        batches.append({"input_ids": ids, "labels": ids})
    return batches

"""A byte-level Pythia-architecture language model and its data, for CPU-scale benchmarks.

The setting is the paper's in miniature: pretrain on corpus A (GCIDE dictionary entries, see
``benchmarks/data/README.md``), then finetune on corpus B (fortune cookies). Tokens are the 256
byte values plus ``BOS`` (a document boundary, also predicted as end of text) and ``PAD``.
Losses are mean cross-entropy per predicted token in nats; a token is a byte, or the one
``BOS`` that ends a document, so we call it nats/byte.

Example:
    >>> from benchmarks import lm
    >>> model = lm.load_pretrained()  # pretrain.ensure_checkpoint() writes it if it is missing
    >>> splits = lm.finetune_splits()
    >>> loss = lm.evaluate(model, splits.test)
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

BOS = 256  # document boundary: starts every example and ends every complete document
PAD = 257  # fills short examples; lm_loss ignores it
VOCAB_SIZE = 258
CONTEXT = 128  # bytes per example, BOS included

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
CHECKPOINT_DIR = HERE / "checkpoints"
PRETRAIN_CORPUS = "gcide"  # corpus A
FINETUNE_CORPUS = "fortunes"  # corpus B
_SEPARATOR = "\n%\n"


def make_config(
    hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4, context: int = CONTEXT
) -> GPTNeoXConfig:
    """Return a small Pythia-style config (parallel residual, 25% rotary, GELU MLP of 4x width).

    The default has 859,392 parameters; ``bench_step_time.py`` times its steps.
    """
    return GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=context,
        bos_token_id=BOS,
        eos_token_id=BOS,
        pad_token_id=PAD,
        use_cache=False,
    )


def config_name(config: GPTNeoXConfig) -> str:
    """Name a config for file names, e.g. ``h128-l4-a4-t128``."""
    return (
        f"h{config.hidden_size}-l{config.num_hidden_layers}-a{config.num_attention_heads}"
        f"-t{config.max_position_embeddings}"
    )


def build_model(seed: int = 0, config: GPTNeoXConfig | None = None) -> GPTNeoXForCausalLM:
    """Return a randomly initialised fp32 model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config or make_config())


def checkpoint_path(config: GPTNeoXConfig | None = None) -> Path:
    """Where ``benchmarks/pretrain.py`` writes the checkpoint for ``config``."""
    return CHECKPOINT_DIR / f"pythia-bytes-{config_name(config or make_config())}.safetensors"


def load_pretrained(path: str | Path | None = None) -> GPTNeoXForCausalLM:
    """Load the pretrained model (fp32, eval mode) from a ``pretrain.py`` checkpoint.

    Args:
        path: a ``.safetensors`` checkpoint. Default: ``checkpoint_path()`` (the default config).

    Returns:
        The model, with the config that is stored in the checkpoint's metadata.

    Raises:
        FileNotFoundError: no checkpoint at ``path``. ``pretrain.ensure_checkpoint()`` (or
            ``python benchmarks/pretrain.py``) writes the default one.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else checkpoint_path()
    if not path.exists():
        raise FileNotFoundError(
            f"benchmarks.lm: no checkpoint at {path}; write it with `python benchmarks/pretrain.py "
            f"--out {path}` or `benchmarks.pretrain.ensure_checkpoint({str(path)!r})`"
        )
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    config = GPTNeoXConfig.from_dict(json.loads(metadata["config"]))
    model = GPTNeoXForCausalLM(config)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def read_documents(corpus: str) -> list[str]:
    """Read a committed corpus (``"gcide"`` or ``"fortunes"``) as a list of documents."""
    with gzip.open(DATA_DIR / f"{corpus}.txt.gz", "rt", encoding="utf-8") as file:
        return file.read().removesuffix("\n").split(_SEPARATOR)


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as token ids in [0, 256)."""
    return list(text.encode("utf-8"))


def decode(ids: Tensor | list[int]) -> str:
    """Inverse of ``encode``; BOS becomes a newline, PAD is dropped."""
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    data = bytes(10 if i == BOS else i for i in ids if i != PAD)
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Splits:
    """Disjoint example sets, each a LongTensor of shape (N, CONTEXT)."""

    train: Tensor
    test: Tensor
    val: Tensor  # the paper's tiny validation set that stops a Fast Forward stage


def pack_example(document: str, context: int = CONTEXT) -> Tensor:
    """One example: ``[BOS] + bytes + [BOS]``, truncated or PAD-filled to ``context``.

    A document longer than ``context - 2`` bytes keeps its first ``context - 1`` bytes and has
    no closing BOS. Returns a LongTensor of shape (context,).
    """
    ids = [BOS, *encode(document), BOS][:context]
    return torch.tensor(ids + [PAD] * (context - len(ids)), dtype=torch.long)


def finetune_splits(
    seed: int = 0, *, n_test: int = 1000, n_val: int = 32, context: int = CONTEXT
) -> Splits:
    """Corpus B as one example per fortune, shuffled with ``seed`` and split three ways.

    There are 15112 distinct fortunes, so the default train split holds 14080 examples
    (62% fit whole in 128 bytes; the rest are truncated).
    """
    examples = torch.stack([pack_example(doc, context) for doc in read_documents(FINETUNE_CORPUS)])
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Splits(train=examples[train], test=examples[test], val=examples[val])


def pretrain_streams(seed: int = 0, *, held_out: float = 0.02) -> tuple[Tensor, Tensor]:
    """Corpus A as two token streams, each document preceded by BOS: (train, held-out).

    Documents are assigned to the held-out stream at random (fraction ``held_out``, seeded).
    Returns 1-D LongTensors; the default train stream has ~7.8M tokens, held-out ~160k.
    """
    docs = read_documents(PRETRAIN_CORPUS)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = round(held_out * len(docs))

    def stream(indices: list[int]) -> Tensor:
        encoded = [docs[i].encode("utf-8") for i in indices]
        sizes = torch.tensor([len(e) + 1 for e in encoded])
        tokens = torch.full((int(sizes.sum()),), BOS)
        is_byte = torch.ones_like(tokens, dtype=torch.bool)
        is_byte[sizes.cumsum(0) - sizes] = False  # each document's leading BOS
        tokens[is_byte] = torch.frombuffer(bytearray(b"".join(encoded)), dtype=torch.uint8).long()
        return tokens

    return stream(sorted(order[n_held:])), stream(sorted(order[:n_held]))


def chunk(stream: Tensor, context: int = CONTEXT) -> Tensor:
    """Cut a stream into non-overlapping examples of shape (len(stream) // context, context)."""
    n = len(stream) // context
    return stream[: n * context].view(n, context)


def random_windows(
    stream: Tensor, batch_size: int, generator: torch.Generator, context: int = CONTEXT
) -> Tensor:
    """Sample ``batch_size`` windows of a stream at uniform offsets: shape (B, context)."""
    starts = torch.randint(len(stream) - context + 1, (batch_size,), generator=generator)
    return torch.stack([stream[s : s + context] for s in starts.tolist()])


def lm_loss(model: torch.nn.Module, batch: Tensor) -> Tensor:
    """Mean next-token cross-entropy of a (B, T) batch in nats, over non-PAD targets."""
    logits = model(input_ids=batch).logits  # (B, T, V)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), ignore_index=PAD
    )


def evaluate(model: torch.nn.Module, examples: Tensor, batch_size: int = 250) -> float:
    """Loss over all non-PAD targets of (N, T) ``examples``, in nats/byte (token-weighted)."""
    return token_weighted_loss(
        model, examples.split(batch_size), lm_loss, lambda batch: int((batch[:, 1:] != PAD).sum())
    )


@torch.no_grad()
def token_weighted_loss(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[torch.nn.Module, Any], Tensor],
    targets: Callable[[Any], int],
) -> float:
    """The mean of ``loss_fn`` over ``batches``, each weighted by its ``targets(batch)`` count.

    Runs in eval mode and restores the model's mode: the exact per-token mean over all batches
    when ``loss_fn`` is a per-token mean itself.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = targets(batch)
        total += float(loss_fn(model, batch)) * n
        count += n
    model.train(was_training)
    return total / count


def add_lora(
    model: GPTNeoXForCausalLM,
    r: int = 8,
    *,
    seed: int = 0,
    use_dora: bool = False,
    use_rslora: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` in place with LoRA (DoRA, rsLoRA) on the fused ``query_key_value`` matrices.

    ``use_rslora`` scales the adapter by ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r``.
    peft's defaults otherwise (``lora_alpha=8``, no dropout): A is Kaiming-random (seeded),
    B is zero, so the wrapped model starts equal to ``model``. Only the adapter requires grad.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        target_modules=["query_key_value"], r=r, use_dora=use_dora, use_rslora=use_rslora
    )
    with warnings.catch_warnings():  # peft calls a transformers method it has deprecated
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return get_peft_model(model, config)

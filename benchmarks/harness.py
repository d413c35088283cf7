"""What the benchmark scripts share: the paper's constants, runs' models, batches, FLOPs, reports.

A leaf module: it imports no script, and torch and matplotlib only inside the functions that
need them, so that a script's ``--help`` stays fast. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on a run's own model (``unit_costs``); a run's
total is then exact arithmetic on those units (``Costs.flops``).
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]  # e.g. ``lm.lm_loss``

PAPER_LR = 4e-5  # the paper's LoRA learning rate for the medical task (App. E, Table 1)
TOLERANCE = 1e-4  # the paper's ε: a loss within it of a target has reached the target
RESULTS = Path(__file__).resolve().parent / "results"
TINY_MODEL = "pythia-bytes-h128-l4-a4-t128 (byte-level, pretrained by benchmarks/pretrain.py)"


def argument_parser(
    doc: str, *, threads: int | None = 2, presets: Iterable[str] = (), preset: str | None = None
) -> argparse.ArgumentParser:
    """A script's parser: ``doc``'s first line as its description, the rest as its epilog.

    Args:
        doc: the script's module docstring; its epilog describes the presets, if any.
        threads: the default of ``--threads`` (torch CPU threads); None: no such option.
        presets: the choices of ``--preset``.
        preset: the default of ``--preset``; None: no such option.
    """
    parser = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if preset is not None:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            default=preset,
            help=f"which runs, on how much data (default: {preset}; see below)",
        )
    if threads is not None:
        parser.add_argument(
            "--threads", type=int, default=threads, help=f"torch CPU threads (default: {threads})"
        )
    return parser


def finetune_model(
    base: torch.nn.Module, adapter: str = "lora", rank: int = 8, seed: int = 0
) -> torch.nn.Module:
    """A trainable copy of ``lm``'s ``base``: LoRA/DoRA ``rank`` initialised from ``seed``.

    ``adapter`` is "lora", "dora", "rslora" (LoRA scaled by alpha/sqrt(rank)) or "full" (every
    parameter trains; ``rank`` and ``seed`` unused).
    """
    from benchmarks import lm

    model = copy.deepcopy(base).train()
    if adapter == "full":
        return model
    return lm.add_lora(  # type: ignore[arg-type]
        model, rank, seed=seed, use_dora=adapter == "dora", use_rslora=adapter == "rslora"
    )


def base_optimizer(model: Any, lr: float, loraplus_ratio: float = 0.0) -> Any:
    """Adam over ``model``'s trainable parameters at ``lr``, or with ``loraplus_ratio`` LoRA+:
    built by peft's ``create_loraplus_optimizer`` from Adam (LoRA's B at ``ratio * lr``)."""
    import torch

    if not loraplus_ratio:
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model, torch.optim.Adam, lr=lr, loraplus_lr_ratio=loraplus_ratio
    )


def warmup_schedule(schedule: str, optimizer: Any, warmup_steps: int, steps: int) -> Any:
    """transformers' ``"linear"`` or ``"cosine"`` decay over ``steps`` after ``warmup_steps`` of
    linear warmup; None for ``""``. ``ValueError`` naming ``schedule`` for anything else."""
    if not schedule:
        return None
    import transformers

    makers = {
        "linear": transformers.get_linear_schedule_with_warmup,
        "cosine": transformers.get_cosine_schedule_with_warmup,
    }
    if schedule not in makers:
        raise ValueError(f"schedule must be '', 'linear' or 'cosine', got {schedule!r}")
    return makers[schedule](optimizer, warmup_steps, steps)


def epoch_batches(examples: Any, batch_size: int, epochs: int, seed: int) -> list[Any]:
    """``epochs`` shuffles of ``examples`` cut into full batches: every step of a run, in order.

    Each epoch is a fresh permutation from one generator seeded with ``seed``; a last, short
    batch is dropped. ``examples`` is anything indexed by a LongTensor of rows.
    """
    import torch

    order = torch.Generator().manual_seed(seed)
    return [
        examples[index]
        for _ in range(epochs)
        for index in torch.randperm(len(examples), generator=order).split(batch_size)
        if len(index) == batch_size
    ]


def count_flops(fn: Callable[[], object]) -> int:
    """The FLOPs that ``FlopCounterMode`` counts while ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Costs:
    """The measured units of a run: FLOPs of one of each, and the elements a move writes."""

    train_step: int  # forward + backward + Adam step, as it really is with a frozen base
    val_pass: int  # one forward on the validation set, no grad
    forward: int  # one training batch, forward only: the paper's 3x accounting
    trainable: int  # trainable elements: a move W + τΔ costs 2 FLOPs for each

    def flops(self, steps: int, evaluations: int = 0, moves: int = 0) -> int:
        """Exact FLOPs of ``steps`` optimizer steps, ``evaluations`` validation passes, moves.

        A Fast Forward stage moves the parameters once per evaluation and once more to land.
        """
        return steps * self.train_step + evaluations * self.val_pass + 2 * moves * self.trainable

    def paper_flops(self, steps: int, evaluations: int = 0) -> int:
        """The paper's accounting: a step costs 3 forwards, a move nothing."""
        return steps * 3 * self.forward + evaluations * self.val_pass


def unit_costs(model: torch.nn.Module, loss_fn: LossFn, batch: Any, val: Any, lr: float) -> Costs:
    """Measure ``Costs`` on ``model`` (a fresh copy: the Adam step here changes it)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    adam = torch.optim.Adam(params, lr=lr)

    def train_step() -> None:
        loss_fn(model, batch).backward()
        adam.step()
        adam.zero_grad()

    with torch.no_grad():
        val_flops = count_flops(lambda: loss_fn(model, val))
        forward_flops = count_flops(lambda: loss_fn(model, batch))
    return Costs(count_flops(train_step), val_flops, forward_flops, sum(p.numel() for p in params))


def timed_step(
    model: torch.nn.Module, optimizer: Any, loss_fn: LossFn, batch: Any
) -> tuple[float, float]:
    """One training step (backward, ``optimizer.step()``, zero_grad): its (wall, CPU) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    loss_fn(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - wall, time.process_time() - cpu


def provenance(model: str) -> dict[str, str]:
    """What a result file must name to be checked later: model, code commit, library versions.

    ``commit`` is the checkout's ``git rev-parse HEAD``, with ``+dirty`` when tracked files
    of the library or the benchmark scripts differ from it (``unknown`` outside a checkout).
    """
    import torch

    import fastforward

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    code = ("fastforward", "benchmarks/*.py")  # not the results the study is writing
    if commit != "unknown" and git("status", "--porcelain", "--untracked-files=no", "--", *code):
        commit += "+dirty"
    return {
        "model": model,
        "commit": commit,
        "fastforward": fastforward.__version__,
        "torch": torch.__version__,
    }


def slug(name: str) -> str:
    """``name`` for a file name: lower case, every character but letters and digits a ``-``."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, without a trailing newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def saved(cost: float, baseline: float) -> str:
    """The fraction of ``baseline`` that ``cost`` saves, as ``+40%``; empty if no baseline."""
    return f"{1 - cost / baseline:+.0%}" if baseline else ""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures go to files, never to a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay out ``fig``, write it to ``path`` and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)

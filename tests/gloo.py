"""Run a function on several CPU processes joined by torch.distributed's gloo backend."""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_on_ranks(worker: Callable[[int], Any], world: int, out_dir: Path) -> list[Any]:
    """``[worker(rank) for rank in range(world)]``, each rank in its own process, in a group.

    ``worker`` must be a module-level function (it is pickled) and return torch-saveable data.
    """
    mp.spawn(_entry, args=(worker, world, _free_port(), str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world)]


def _entry(rank: int, worker: Callable[[int], Any], world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A rank left waiting in a collective fails the test in a minute instead of hanging it.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        torch.save(worker(rank), Path(out_dir) / f"rank{rank}.pt")
    finally:
        # FSDP2 and DTensor leave cyclic garbage that holds the group; freed at interpreter
        # exit, after the group is gone, it aborted one run in about ten ("terminate called
        # without an active exception").
        gc.collect()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

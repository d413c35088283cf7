"""The stage on CUDA: bitwise landing and rollback, no touched optimizer state, host syncs, memory.

Marked ``gpu`` and skipped without CUDA (``./test.sh`` deselects the marker on CPU machines);
run with ``python -m pytest -m gpu tests/test_gpu.py`` on a machine with a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import bitwise_equal, paper_fast_forward

from fastforward import FastForward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
INTERVAL = 3


def _lora_like(dtype: torch.dtype, device: str = "cuda"):
    """A frozen base and two small trainable factors on the GPU, and a fixed batch.

    The loss is reduced in float32: a bfloat16 mean near 1 moves in steps of 2**-7, coarser
    than what one step's Δ changes, so every stage would see a flat loss.
    """
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 64, bias=False).to(device, dtype).requires_grad_(False)
    a = torch.nn.Parameter(torch.randn(8, 64, device=device, dtype=dtype) * 0.1)
    b = torch.nn.Parameter(torch.zeros(64, 8, device=device, dtype=dtype))
    model = torch.nn.Module()
    model.base, model.a, model.b = base, a, b
    x = torch.randn(256, 64, device=device, dtype=dtype)
    target = torch.randn(256, 64, device=device, dtype=dtype)

    def loss() -> torch.Tensor:
        output = model.base(x) + x @ model.a.T @ model.b.T
        return torch.nn.functional.mse_loss(output.float(), target.float())

    return model, [a, b], loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_stage_lands_bitwise_on_the_best_point_it_evaluated(dtype):
    model, params, loss = _lora_like(dtype)
    points = []

    def val_loss():
        value = loss()
        points.append(([p.detach().clone() for p in params], float(value)))
        return value

    adam = torch.optim.Adam(params, lr=1e-3)
    ff = paper_fast_forward(adam, model, val_loss, INTERVAL, patience=None)
    for _ in range(INTERVAL):
        loss().backward()
        ff.step()
        ff.zero_grad()
    best, _ = min(points, key=lambda point: point[1])
    assert ff.stats.history[0].tau > 0
    assert all(bitwise_equal(p.detach(), b) for p, b in zip(params, best, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_exception_mid_stage_rolls_back_bitwise_and_leaves_adam_state_alone(dtype):
    model, params, loss = _lora_like(dtype)
    calls = []

    def failing():
        calls.append([p.detach().clone() for p in params])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return loss()

    adam = torch.optim.Adam(params, lr=1e-3)
    ff = paper_fast_forward(adam, model, failing, INTERVAL)
    for _ in range(INTERVAL - 1):
        loss().backward()
        ff.step()
        ff.zero_grad()
    loss().backward()
    with pytest.raises(KeyboardInterrupt):
        ff.step()
    state = {k: v.clone() for k, v in adam.state[params[0]].items()}
    assert all(bitwise_equal(p.detach(), w) for p, w in zip(params, calls[0], strict=True))
    assert all(bitwise_equal(adam.state[params[0]][k], v) for k, v in state.items())


def _synchronizations(fn) -> int:
    """Host-device synchronisations that ``fn()`` makes, as CUDA's sync debug mode counts them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Not the one-time notice that the mode is a prototype, which mentions "synchronizing" too.
    return sum("called a synchronizing CUDA operation" in str(w.message) for w in caught)


def _syncs_per_step(wrapped: bool) -> tuple[list[int], torch.optim.Optimizer]:
    """The synchronisations of each of ``2 * INTERVAL`` steps, bare Adam or wrapped."""
    model, params, loss = _lora_like(torch.float32)
    adam = torch.optim.Adam(params, lr=1e-3, capturable=True)
    optimizer: torch.optim.Optimizer = adam
    if wrapped:
        optimizer = paper_fast_forward(
            adam, model, lambda: loss().detach(), INTERVAL, patience=None
        )
    syncs = []
    for _ in range(2 * INTERVAL):
        loss().backward()
        syncs.append(_synchronizations(optimizer.step))
        optimizer.zero_grad()
    return syncs, optimizer


def test_ordinary_steps_add_no_sync_to_the_optimizers_and_a_stage_reads_each_loss_once():
    """Side by side with the bare optimizer on a twin: Adam may sync on its own (its state's
    first step), the wrapper adds nothing to an ordinary step."""
    bare, _ = _syncs_per_step(wrapped=False)
    wrapped, ff = _syncs_per_step(wrapped=True)
    assert isinstance(ff, FastForward)
    stages = iter(ff.stats.history)
    for step, (mine, theirs) in enumerate(zip(wrapped, bare, strict=True), start=1):
        if step % INTERVAL:
            assert mine == theirs, step
        else:  # one read per evaluation, and one for the size of Δ
            assert mine == theirs + next(stages).evaluations + 1, step


def test_the_stage_buffers_are_exactly_two_copies_of_the_trainable_tensors():
    model, params, loss = _lora_like(torch.float32)
    adam = torch.optim.Adam(params, lr=1e-3)
    ff = paper_fast_forward(adam, model, lambda: loss().detach(), INTERVAL, patience=None)
    for _ in range(INTERVAL + 1):  # the first stage allocated them, the next step ran none
        loss().backward()
        ff.step()
        ff.zero_grad(set_to_none=True)
    trainable_bytes = sum(p.numel() * p.element_size() for p in params)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    ff.enabled = False  # frees the two buffers
    torch.cuda.synchronize()
    assert held - torch.cuda.memory_allocated() == 2 * trainable_bytes


def test_a_measured_cost_ratio_is_the_ratio_of_the_two_phases_gpu_times():
    """Frozen 4096-wide layers with LoRA factors: the GPU's work, not the host's launches."""
    torch.manual_seed(0)
    width, rows, depth = 4096, 8192, 4
    model = torch.nn.Module()
    model.base = torch.nn.ModuleList(
        torch.nn.Linear(width, width, bias=False, device="cuda").requires_grad_(False)
        for _ in range(depth)
    )
    model.a = torch.nn.ParameterList(
        torch.nn.Parameter(torch.randn(8, width, device="cuda") * 0.01) for _ in range(depth)
    )
    model.b = torch.nn.ParameterList(
        torch.nn.Parameter(torch.zeros(width, 8, device="cuda")) for _ in range(depth)
    )
    x_train = torch.randn(rows, width, device="cuda")
    x_val = torch.randn(rows // 2, width, device="cuda")

    def loss(x: torch.Tensor) -> torch.Tensor:
        for base, a, b in zip(model.base, model.a, model.b, strict=True):
            x = torch.tanh(base(x) + x @ a.T @ b.T)
        return x.pow(2).mean()

    adam = torch.optim.Adam(list(model.parameters()), lr=1e-3)

    def train_iteration() -> None:
        loss(x_train).backward()
        adam.step()
        adam.zero_grad()

    def gpu_seconds(fn, repeats: int = 10) -> float:
        fn()  # warm up
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats

    with torch.no_grad():
        validation = gpu_seconds(lambda: loss(x_val))
    expected = validation / gpu_seconds(train_iteration)

    def val_loss() -> torch.Tensor:
        return loss(x_val).detach()

    ff = paper_fast_forward(adam, model, val_loss, 6, cost_aware=True, patience=None, max_tau=8)
    for _ in range(12):
        loss(x_train).backward()
        ff.step()
        ff.zero_grad()
    ratios = [record.cost_ratio for record in ff.stats.history]
    assert ratios
    assert ratios[0] == pytest.approx(expected, rel=0.2), (ratios, expected)

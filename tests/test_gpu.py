"""The stage on CUDA: bitwise landing and rollback, no touched optimizer state, host syncs, memory.

Marked ``gpu`` and skipped without CUDA (``./test.sh`` deselects the marker on CPU machines);
run with ``python -m pytest -m gpu tests/test_gpu.py`` on a machine with a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from reference import bitwise_equal

from fastforward import FastForward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
INTERVAL = 3


def _lora_like(dtype: torch.dtype):
    """A frozen base and two small trainable factors on the GPU, and a fixed batch."""
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 64, bias=False).cuda().to(dtype).requires_grad_(False)
    a = torch.nn.Parameter(torch.randn(8, 64, device="cuda", dtype=dtype) * 0.01)
    b = torch.nn.Parameter(torch.zeros(64, 8, device="cuda", dtype=dtype))
    model = torch.nn.Module()
    model.base, model.a, model.b = base, a, b
    x = torch.randn(256, 64, device="cuda", dtype=dtype)
    target = torch.randn(256, 64, device="cuda", dtype=dtype)

    def loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model.base(x) + x @ model.a.T @ model.b.T, target)

    return model, [a, b], loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_stage_lands_bitwise_on_the_best_point_it_evaluated(dtype):
    model, params, loss = _lora_like(dtype)
    points = []

    def val_loss():
        value = loss().float()
        points.append(([p.detach().clone() for p in params], float(value)))
        return value

    adam = torch.optim.Adam(params, lr=1e-3)
    ff = FastForward(adam, model, val_loss, INTERVAL, patience=None)
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
        return loss().float()

    adam = torch.optim.Adam(params, lr=1e-3)
    ff = FastForward(adam, model, failing, INTERVAL)
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


def test_ordinary_steps_never_sync_and_a_stage_reads_each_loss_once():
    model, params, loss = _lora_like(torch.float32)
    adam = torch.optim.Adam(params, lr=1e-3, capturable=True)
    ff = FastForward(adam, model, lambda: loss().detach(), INTERVAL, patience=None)
    torch.cuda.synchronize()
    for step in range(1, 2 * INTERVAL + 1):
        loss().backward()
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                ff.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchronizing" in str(w.message) for w in caught)
        if step % INTERVAL:
            assert syncs == 0, step
        else:  # one read per evaluation, and one for the size of Δ
            assert syncs == ff.stats.history[-1].evaluations + 1, step
        ff.zero_grad()


def test_the_stage_buffers_are_exactly_two_copies_of_the_trainable_tensors():
    model, params, loss = _lora_like(torch.float32)
    adam = torch.optim.Adam(params, lr=1e-3)
    ff = FastForward(adam, model, lambda: loss().detach(), INTERVAL, patience=None)
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

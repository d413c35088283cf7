"""What a user sees: the stats line, the log lines, the repr, and messages for missing extras."""

from __future__ import annotations

import importlib
import logging
import sys

import pytest
import torch
from reference import paper_fast_forward
from strategies import Quadratic, fixed_quadratic, train

import fastforward._logs
from fastforward import FastForwardStats


def _run(steps, **options):
    model = Quadratic(fixed_quadratic())
    ff = paper_fast_forward(
        torch.optim.Adam([model.x], lr=0.02), model, lambda: float(model()), 3, **options
    )
    train(model, ff, steps)
    return ff


def test_the_stats_line_is_short_and_says_what_the_stages_cost_and_simulated():
    ff = _run(30, patience=None)
    line = str(ff.stats)
    assert "\n" not in line
    assert len(line) < 200
    stats = ff.stats
    for number in (stats.optimizer_steps, stats.stages, stats.simulated_steps, stats.evaluations):
        assert f" {number} " in line
    assert len(str(_run(300, patience=None).stats)) < 200  # does not grow with the stages


def test_the_stats_line_counts_one_stage_in_the_singular():
    line = str(_run(3, patience=None).stats)
    assert line.startswith("Fast Forward: 3 optimizer steps, 1 stage (1 moved the model)")
    assert str(FastForwardStats(optimizer_steps=1, evaluations=1)).startswith(
        "Fast Forward: 1 optimizer step, 0 stages (0 moved the model) simulating 0 steps, "
        "for 1 validation pass in"
    )


def test_giving_up_is_a_warning_that_says_why(caplog):
    with caplog.at_level(logging.WARNING, logger="fastforward"):
        ff = _run(12, patience=2, min_improvement=0.9)  # no stage can gain 90%
    assert not ff.active
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "Fast Forward is off from step 6 on" in message
    assert "2 stages in a row accepted tau=0" in message
    assert "min_improvement=0.9" in message
    assert not message.startswith("fastforward:")  # the logger's name already says it


def test_a_stage_the_margin_turned_down_records_and_logs_its_best_point(caplog):
    with caplog.at_level(logging.INFO, logger="fastforward"):
        ff = _run(3, min_improvement=0.9)
    (record,) = ff.stats.history
    assert record.tau == 0
    assert record.rejected_tau is not None
    assert record.rejected_tau > 0
    assert record.rejected_loss < record.loss_before
    assert f"best point tau={record.rejected_tau} gained only" in caplog.text


def test_a_long_stage_reports_progress(caplog, monkeypatch):
    monkeypatch.setattr(fastforward._logs, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.DEBUG, logger="fastforward"):
        ff = _run(3)
    passes = ff.stats.history[0].evaluations
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == passes
    assert any("still running" in r.getMessage() for r in caplog.records)


def test_repr_names_every_hyperparameter():
    text = repr(_run(0))
    for name in ("interval=3", "min_improvement=0.001", "search='parabolic'", "max_tau=1000"):
        assert name in text


def test_the_trainer_module_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "fastforward.hf", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'fastforward-lora\[peft\]'"):
        importlib.import_module("fastforward.hf")

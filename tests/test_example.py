"""docs/example.py runs end to end, and README's Quickstart is a faithful excerpt of it."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "example.py"


def _quickstart() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block, "README's Quickstart has no python block"
    return [line for line in block.group(1).splitlines() if line.strip() and line != "..."]


def test_readme_quickstart_lines_appear_in_the_example_in_order():
    example = [line.strip() for line in EXAMPLE.read_text().splitlines()]
    position = 0
    for line in _quickstart():  # the excerpt may drop a loop level, so compare stripped lines
        matches = [i for i in range(position, len(example)) if example[i] == line.strip()]
        assert matches, f"README line not in docs/example.py (in order): {line!r}"
        position = matches[0] + 1


def test_the_example_trains_with_stages_and_lowers_the_test_loss(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    before, after = (float(x) for x in re.findall(r"test loss \w+: ([\d.]+)", out))
    assert after < before
    stages = int(re.search(r"(\d+) stages?", out).group(1))
    assert stages >= 1


TRAINER_EXAMPLE = ROOT / "docs" / "trainer_example.py"


def test_the_trainer_example_runs_stages_and_shows_them(capsys, caplog):
    """From the first interval, the schedule's warmup included, in the log (INFO lines) and in
    every Trainer log entry (ff/* counters)."""
    pytest.importorskip("transformers")
    namespace = runpy.run_path(str(TRAINER_EXAMPLE), run_name="trainer_example")
    with caplog.at_level("INFO", logger="fastforward"):
        ff = namespace["main"](["--steps", "12", "--batch", "8"])
    assert ff.stats.optimizer_steps == 12
    assert ff.warmup == 0
    steps = [r.step for r in ff.stats.history]
    # The second stage runs only if the first paid (cost_aware, on wall time): 1 or 2 stages.
    assert steps in ([6], [6, 12])
    assert any("stage after step 6: tau=" in r.getMessage() for r in caplog.records)
    out = capsys.readouterr().out
    assert f"'ff/stages': {len(steps)}" in out
    assert str(ff.stats) in out

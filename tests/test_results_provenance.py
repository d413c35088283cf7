"""Every committed result names what made it: the model, the git commit, the library version.

Machine-readable results (``*.json``, ``*.csv``, and text results outside ``gpu/``, whose first
line is a ``# {json}`` header) carry the fields of ``benchmarks.harness.provenance``: one record
per run file, one per run in a scan, one per row of a CSV. ``gpu/`` holds console captures
from a lent machine, described with their commit in ``gpu/README.md``; its JSON is checked.
``local/`` is a git-ignored scratch folder.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness

COMMIT = re.compile(r"[0-9a-f]{40}(\+dirty)?")
VERSION = re.compile(r"\d+\.\d+\.\d+")


def provenance_records(path: Path) -> list[dict[str, Any]]:
    """The provenance records ``path`` holds; raises ``KeyError`` where one is missing."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise KeyError(f"a JSON {type(data).__name__}, not an object with a provenance")
        if path.name == "scan.json":  # predictor_scan: {run: {"provenance", "stages"}}
            return [run["provenance"] for run in data.values()]
        return [data["provenance"]]
    if path.suffix == ".csv":
        with path.open(newline="") as file:
            return list(csv.DictReader(file))
    first_line = path.read_text().split("\n", 1)[0]
    if not first_line.startswith("# {"):
        raise KeyError("no '# {json}' provenance header on the first line")
    return [json.loads(first_line[2:])]


def problems_with(record: dict[str, Any]) -> list[str]:
    problems = []
    if not record.get("model"):
        problems.append("no model")
    if not COMMIT.fullmatch(str(record.get("commit", ""))):
        problems.append(f"commit {record.get('commit')!r} is not a full git hash")
    if not VERSION.fullmatch(str(record.get("fastforward", ""))):
        problems.append(f"fastforward version {record.get('fastforward')!r}")
    return problems


def result_files() -> list[Path]:
    results = harness.RESULTS
    files = [*results.rglob("*.json"), *results.rglob("*.csv"), *results.rglob("*.txt")]
    return sorted(
        path
        for path in files
        if "local" not in path.relative_to(results).parts
        and not (path.suffix == ".txt" and path.parent.name == "gpu")
    )


def test_every_committed_result_names_its_model_commit_and_library_version():
    files = result_files()
    assert len(files) > 200  # the run JSONs of the studies are there to be read
    offenders = []
    for path in files:
        try:
            records = provenance_records(path)
        except KeyError as missing:
            offenders.append(f"{path.relative_to(harness.RESULTS)}: {missing}")
            continue
        assert records, path
        for record in records:
            offenders += [
                f"{path.relative_to(harness.RESULTS)}: {p}" for p in problems_with(record)
            ]
    assert not offenders, "\n".join(offenders[:20])


def test_a_result_without_provenance_is_an_offender(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"final_loss": 1.0}))
    with pytest.raises(KeyError, match="provenance"):
        provenance_records(run)
    run.write_text(json.dumps([{"provenance": {}}]))
    with pytest.raises(KeyError, match="a JSON list"):
        provenance_records(run)
    made_by = harness.provenance(harness.TINY_MODEL)
    assert problems_with({**made_by, "commit": "c1a3c95"}) == [
        "commit 'c1a3c95' is not a full git hash"
    ]
    table = tmp_path / "scan.txt"
    table.write_text(f"# {json.dumps(made_by)}\n0 4.88\n")
    assert provenance_records(table) == [made_by]

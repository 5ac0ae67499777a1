"""The committed results travel: their commands, re-run in a clone, reuse every run (they make none).

A change of a default that these runs use makes them another configuration: re-make them (`--dry-run`
lists which) and commit them with the change. results/grid_defenses is not checked yet: some of its ABD
runs were made with earlier defaults, and so were the bench's SV and SR arms (docs/results.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _plan(study: str) -> dict:
    from abd.experiment.grid import GridConfig, plan_grid
    from abd.experiment.table import TableConfig, plan_table

    if study == "grid":  # abd grid --out results/grid
        return plan_grid(GridConfig(), "results/grid")
    if study == "table":  # abd table --config results/table/table_config.yaml --out results/table
        return plan_table(TableConfig(**yaml.safe_load((ROOT / "results/table/table_config.yaml").read_text())),
                          "results/table")
    raise ValueError(study)


@pytest.mark.parametrize("study", ["grid", "table"])
def test_committed_results_are_reused_by_their_commands(study: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the runs record their teachers relative to the repository root
    p = _plan(study)
    assert p["teachers"]["train"] == 0 and p["runs"]["reuse"] > 0
    assert p["runs"]["make"] == p["runs"]["resume"] == p["runs"]["blocked"] == 0, p["items"][:5]

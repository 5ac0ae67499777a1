"""The committed results travel: their commands, re-run in a clone, reuse every run (they make none).

A change of a default that these runs use makes them another configuration: re-make them (`--dry-run`
lists which) and commit them with the change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFENSE_TRIGGERS = ["badnet_grid", "blend", "trojan_wm"]


def _plan(study: str) -> dict:
    from abd.experiment.demo import DemoConfig, plan_demo
    from abd.experiment.grid import GridConfig, plan_grid
    from abd.experiment.table import TableConfig, plan_table

    if study == "grid":  # abd grid --out results/grid
        return plan_grid(GridConfig(), "results/grid")
    if study == "bench":  # abd bench --seeds 3 --out results/bench
        return plan_demo(DemoConfig(seeds=3), "results/bench")
    if study.startswith("grid_defenses/"):  # abd grid --config results/grid_defenses/grid3.yaml --trigger T ...
        return plan_grid(GridConfig.load(ROOT / "results/grid_defenses/grid3.yaml", trigger=study.split("/")[1]),
                         f"results/{study}")
    if study == "table":  # abd table --config results/table/table_config.yaml --out results/table
        return plan_table(TableConfig.load(ROOT / "results/table/table_config.yaml"), "results/table")
    raise ValueError(study)


@pytest.mark.parametrize("study", ["grid", "table", "bench", *(f"grid_defenses/{t}" for t in DEFENSE_TRIGGERS)])
def test_committed_results_are_reused_by_their_commands(study: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the runs record their teachers relative to the repository root
    p = _plan(study)
    assert p["teachers"]["train"] == 0 and p["runs"]["reuse"] > 0
    assert p["runs"]["make"] == p["runs"]["resume"] == p["runs"]["blocked"] == 0, p["items"][:5]


def test_recheck_reproduces_a_run_and_reports_a_changed_one(backdoored_teacher_dir, tmp_path) -> None:
    """`abd recheck` re-makes a run's first rounds and compares its curve number for number: a run this code
    made is reproduced; a recorded curve it does not compute (one accuracy changed) is reported by field."""
    from abd.distill.config import DistillConfig
    from abd.experiment.runs import recheck_run, run_or_reuse

    cfg = DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", defense="abd", device="cpu",
                        eval_every=2, method_options={"rounds": 6, "batch_size": 8, "kd_steps": 2})
    run = tmp_path / "run"
    run_or_reuse(cfg, run, progress=False)
    r = recheck_run(run, rounds=4)
    assert r["reproduced"] and r["rounds"] == 4 and r["compared"] == 2, r["differences"][:3]
    rows = [json.loads(line) for line in (run / "curve.jsonl").read_text().splitlines()]
    for row in rows:
        if row.get("round") == 4:
            row["acc"] += 0.001
    (run / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = recheck_run(run, rounds=4)
    assert not r["reproduced"]
    assert [(d["round"], d["field"]) for d in r["differences"]] == [(4, "acc")]

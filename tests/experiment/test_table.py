"""``abd table``: the paper's Table 1 in our setting (tiny runs), DER, collapse detection, the paper's numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import yaml

from abd.experiment.table import TableConfig, load_paper_table, paper_numbers, protocol_line, run_table
from abd.metrics import COLLAPSE_SHARE, PARTIAL_SHARE, EvalData, collapse_level, collapse_stats, der, evaluate

TINY = {"seeds": 1, "triggers": ["badnet_grid", "blend"], "methods": ["zskt"], "paper_triggers": ["badnet_grid"],
        "rounds": {"zskt": 1, "clean": 2}, "teacher_epochs": 1, "eval_every": 2, "device": "cpu", "workers": 1,
        "defense_options": {"sr": {"inner_rounds": 2}}}
ROW_KEYS = {"trigger", "method", "defense", "preset", "seeds", "acc", "asr", "acc_std", "asr_std", "acc_per_seed",
            "asr_per_seed", "target_acc", "target_acc_per_seed", "collapsed_per_seed", "der", "paper"}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("table")
    return out, run_table(TableConfig(**TINY), out, progress=False)


def _key(r: dict[str, Any]) -> tuple:
    return r["trigger"], r["method"], r["defense"], r["preset"]


@pytest.mark.slow
def test_table_runs_end_to_end(table: tuple[Path, dict[str, Any]]) -> None:
    out, res = table
    doc = json.loads((out / "table.json").read_text())
    assert {"rows", "protocol", "config", "wall_seconds"} <= doc.keys()
    assert doc["protocol"]["development_seeds"] == [100, 101, 102] and doc["protocol"]["heldout_seeds"] == [0]
    keys = [_key(r) for r in doc["rows"]]
    expected = {(t, "teacher", "none", None) for t in ("none", "badnet_grid", "blend")}
    expected |= {(t, "clean", "none", "cpu") for t in ("none", "badnet_grid", "blend")}
    expected |= {(t, "zskt", d, "cpu") for t in ("none", "badnet_grid", "blend") for d in ("none", "abd")}
    expected |= {("badnet_grid", "zskt", d, "paper") for d in ("none", "abd")}
    assert len(keys) == len(set(keys)) and set(keys) == expected  # one row each, no SV rows
    by = {_key(r): r for r in doc["rows"]}
    for r in doc["rows"]:
        assert ROW_KEYS <= r.keys(), r.keys()
        assert r["seeds"] == [0] and len(r["acc_per_seed"]) == len(r["collapsed_per_seed"]) == 1
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["asr"] <= 1.0
        assert isinstance(r["collapsed_per_seed"][0], bool)
        if r["defense"] == "abd":
            van = by[(r["trigger"], r["method"], "none", r["preset"])]
            assert r["der"] == pytest.approx(der(van["acc"], van["asr"], r["acc"], r["asr"]))
        else:
            assert r["der"] is None
    teacher = json.loads((out / "seed0" / "blend" / "teacher" / "metrics.json").read_text())
    assert by[("blend", "teacher", "none", None)]["acc_per_seed"] == [teacher["acc"]]
    assert by[("badnet_grid", "zskt", "none", "cpu")]["paper"] == pytest.approx({"acc": 0.719, "asr": 0.969})
    assert by[("badnet_grid", "zskt", "abd", "paper")]["paper"] == pytest.approx({"acc": 0.683, "asr": 0.007})
    assert by[("none", "zskt", "none", "cpu")]["paper"] is None
    # the paper-preset run is the paper preset at the CPU rows' rounds; teacher paths are relative
    run_cfg = yaml.safe_load((out / "seed0" / "badnet_grid" / "zskt+abd@paper" / "config.yaml").read_text())
    assert run_cfg["preset"] == "paper" and run_cfg["method_options"]["rounds"] == 1
    assert run_cfg["method_options"]["generator"] == "zskt" and run_cfg["method_options"]["kd_steps"] == 10
    assert not Path(run_cfg["teacher"]).is_absolute()
    assert (Path(run_cfg["teacher"]) / "teacher.safetensors").is_file()
    # every metrics.json and curve.jsonl carries the collapse statistics
    m = json.loads((out / "seed0" / "blend" / "zskt+none" / "metrics.json").read_text())
    assert {"pred_max_share", "collapsed", "partial_collapse"} <= m.keys()
    for r in doc["rows"]:  # the table's flag is the share's level, for every run
        assert r["partial_collapse_per_seed"] == [collapse_level(x) == "partial" for x in r["pred_max_share_per_seed"]]
    curve = [json.loads(x) for x in (out / "seed0" / "blend" / "zskt+none" / "curve.jsonl").read_text().splitlines()]
    assert all("collapsed" in c for c in curve if "acc" in c)
    md = (out / "table.md").read_text()
    assert "held-out" in md and "paper ZSKT+ABD" in md and "## paper preset" in md and "## per seed" in md
    assert "| badnet_grid |" in md and "71.9 / 96.9" in md and "none (clean teacher" in md
    assert (out / "table.png").stat().st_size > 0


def test_second_call_reuses_every_run(table: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from abd.cli import main
    from abd.experiment import runs

    out, first = table

    def no_run(*a: Any, **k: Any) -> None:
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(runs, "build_distiller", no_run)
    monkeypatch.setattr("abd.attacks.teacher.train_teacher", no_run)
    again = run_table(TableConfig(**TINY), out, progress=False)
    assert again["rows"] == first["rows"]
    # the CLI, from the table's own written config, reuses them too and prints the table
    assert main(["table", "--config", str(out / "table_config.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(protocol_line(TableConfig(**TINY))) and "(held-out)" in printed
    assert "# abd table" in printed and json.loads((out / "table.json").read_text())["rows"] == first["rows"]


def test_der_as_defined() -> None:
    # DER = (max(0, dASR) - max(0, dACC) + 1) / 2, d = vanilla - defended
    assert der(0.90, 0.95, 0.88, 0.05) == pytest.approx((0.90 - 0.02 + 1) / 2)  # 0.94
    assert der(0.90, 1.00, 0.90, 0.00) == pytest.approx(1.0)  # backdoor removed for free
    assert der(1.00, 0.00, 0.00, 0.00) == pytest.approx(0.0)  # nothing to remove, all ACC lost
    assert der(0.90, 0.10, 0.90, 0.30) == pytest.approx(0.5)  # an ASR rise is clipped at 0 (no gain)
    assert der(0.80, 0.90, 0.85, 0.10) == pytest.approx(0.9)  # an ACC rise is clipped at 0 (no bonus)
    assert der(0.90, 1.00, 0.10, 0.00) == pytest.approx(0.6)


class Constant(nn.Module):
    """Always answers class `cls`."""

    def __init__(self, cls: int, num_classes: int = 10) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes
        self.dummy = nn.Parameter(torch.zeros(()))  # predict() reads the device from the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.cls] = 1.0
        return logits + 0 * self.dummy


class Echo(nn.Module):
    """Answers the class written in the input's first pixel (varied outputs)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float() + 0 * self.dummy


def test_collapse_is_detected_on_a_constant_model_only() -> None:
    y = torch.arange(50) % 10  # a balanced test set
    x = torch.zeros(50, 1, 2, 2)
    x[:, 0, 0, 0] = y.float()
    data = EvalData(x_clean=x, y_clean=y, num_classes=10, target=0)
    m = evaluate(Constant(3), data)
    assert m["collapsed"] is True and m["pred_max_share"] == pytest.approx(1.0) and m["pred_max_class"] == 3
    m = evaluate(Echo(), data)
    assert m["collapsed"] is False and m["pred_max_share"] == pytest.approx(0.1) and m["acc"] == 1.0
    # the threshold: >= 90 % on one class
    assert COLLAPSE_SHARE == 0.9
    assert collapse_stats(torch.tensor([3] * 9 + [1]), 10)["collapsed"] is True
    assert collapse_stats(torch.tensor([3] * 8 + [1, 2]), 10)["collapsed"] is False
    assert collapse_stats(torch.empty(0, dtype=torch.long), 10)["collapsed"] is False
    # a partial collapse: one class on 40-90 % of the test set, flagged apart from a full one
    assert PARTIAL_SHARE == 0.4
    half = collapse_stats(torch.tensor([1] * 47 + list(range(10)) * 5 + [2] * 3), 10)
    assert half["pred_max_class"] == 1 and half["pred_max_share"] == pytest.approx(0.52)
    assert half["partial_collapse"] is True and half["collapsed"] is False
    assert collapse_stats(torch.tensor([3] * 9 + [1]), 10)["partial_collapse"] is False  # full, not partial
    assert collapse_stats(torch.tensor([3] * 2 + list(range(8))), 10)["partial_collapse"] is False  # 0.3
    assert collapse_level(0.4) == "partial" and collapse_level(0.39) is None and collapse_level(None) is None


def test_paper_numbers_load() -> None:
    from abd.attacks import list_triggers

    doc = load_paper_table()
    assert "ICML 2023" in doc["source"] and "WRN-16-2" in doc["source"]
    assert doc["rows"]["badnet_grid"]["zskt"] == {"acc": 71.9, "asr": 96.9}
    assert len(doc["rows"]) == 10 and set(doc["rows"]) <= set(list_triggers())  # our registry's names
    assert set(list_triggers()) - set(doc["rows"]) == {"smooth"}
    assert paper_numbers("badnet_grid", "clean_kd") == pytest.approx({"acc": 0.746, "asr": 0.043})
    assert paper_numbers("smooth", "zskt") is None


def test_config_defaults_and_validation() -> None:
    from pydantic import ValidationError

    from abd.attacks import list_triggers
    from abd.registry import UnknownNameError

    cfg = TableConfig()
    assert sorted(cfg.triggers) == list_triggers() and len(cfg.triggers) == 11
    assert cfg.seed_list == [0, 1, 2] and cfg.method_seed_list("zskt") == [0, 1, 2]
    assert cfg.method_seed_list("cmi") == cfg.method_seed_list("ood") == [0]
    assert "(held-out)" in protocol_line(cfg)
    assert "(development)" in protocol_line(TableConfig(first_seed=100))
    for bad in ({"triggers": ["badnet_gird"]}, {"methods": ["zkst"]}, {"methods": ["clean"]},
                {"paper_triggers": ["nope"]}, {"method_seeds": {"cmi": 0}}, {"rounds": {"nope": 3}}):
        with pytest.raises((ValidationError, UnknownNameError)):  # as GridConfig (the CLI reports both)
            TableConfig(**bad)


def test_protocol_names_development_and_held_out_seeds() -> None:
    from abd.experiment.report import protocol

    p = protocol([0, 1, 2])
    assert p["heldout_seeds"] == [0, 1, 2] and p["development_seeds"] == [100, 101, 102]
    assert p["text"].endswith("(held-out)")
    assert protocol([100, 101])["text"].endswith("(development)") and protocol([100, 101])["heldout_seeds"] == []
    mixed = protocol([99, 100])
    assert mixed["heldout_seeds"] == [99] and "development seeds [100] among them" in mixed["text"]


def test_table_cells_mark_full_and_partial_collapses() -> None:
    from abd.experiment.table import collapse_warnings, run_cell

    row = {"trigger": "trojan_3x3", "method": "zskt", "defense": "abd", "preset": "cpu", "seeds": [0, 1],
           "acc": 0.67, "acc_std": 0.19, "asr": 0.01, "asr_std": 0.0, "collapsed_per_seed": [False, False],
           "partial_collapse_per_seed": [False, True], "pred_max_share_per_seed": [0.12, 0.47],
           "pred_max_class_per_seed": [0, 1]}
    assert run_cell(row) == "67.0 ± 19.0 / 1.0 ± 0.0 (partial 1/2)"
    assert collapse_warnings([row]) == ["partial collapse: seed 1 trigger trojan_3x3 zskt+abd answers class 1 on "
                                        "47 % of the clean test set"]
    row["collapsed_per_seed"] = [True, False]
    assert run_cell(row).endswith("(collapsed 1/2, partial 1/2)")


def test_collapse_lines_name_every_collapsed_run_and_only_those() -> None:
    from abd.experiment.report import collapse_lines

    runs = {"zskt+none": [{"collapsed": True, "pred_max_class": 0, "pred_max_share": 1.0}, {"collapsed": False}],
            "zskt+abd": [{"collapsed": False}, {"collapsed": False}]}
    lines = collapse_lines(runs, [0, 1])
    assert lines == ["- collapsed: [seed 0] zskt+none answers class 0 on 100 % of the clean test set"]
    runs["zskt+abd"][1] = {"collapsed": False, "pred_max_class": 1, "pred_max_share": 0.47}  # a record of before
    assert collapse_lines(runs, [0, 1])[1] == ("- partial collapse: [seed 1] zskt+abd answers class 1 on 47 % of "
                                               "the clean test set")



def test_paper_seeds_limit_the_paper_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``paper_seeds``: the paper-preset rows run on the first N seeds, the CPU rows on all of them (the
    runs themselves are recorded, not made: the end-to-end table is the fixture above)."""
    import abd.experiment.runs as runs
    import abd.experiment.table as table
    from abd.experiment.table import cfg_seeds, config_record

    made: list[Path] = []
    metrics = {"acc": 0.9, "asr": 0.5, "target_acc": 0.9, "collapsed": False, "seconds": 1.0}
    monkeypatch.setattr(table, "ensure_teachers", lambda items, *a, **k: [dict(metrics) for _ in items])
    monkeypatch.setattr(runs, "run_jobs", lambda jobs, *a, **k: [made.append(j.run_dir) or dict(metrics) for j in jobs])
    cfg = TableConfig(**{**TINY, "seeds": 2, "triggers": ["badnet_grid"], "clean_teacher": False, "paper_seeds": 1})
    assert cfg_seeds(config_record(cfg), "paper") == [0] and cfg_seeds(config_record(cfg), "zskt") == [0, 1]
    res = run_table(cfg, tmp_path, progress=False)
    seeds = {(r["method"], r["defense"], r["preset"]): r["seeds"] for r in res["rows"]}
    assert seeds[("zskt", "none", "paper")] == [0] and seeds[("zskt", "abd", "paper")] == [0]
    assert seeds[("zskt", "none", "cpu")] == [0, 1] and seeds[("zskt", "abd", "cpu")] == [0, 1]
    assert tmp_path / "seed0" / "badnet_grid" / "zskt+none@paper" in made
    assert not any(d.parent.parent.name == "seed1" and d.name.endswith("@paper") for d in made)
    assert "zskt@paper: seeds [0]" in (tmp_path / "table.md").read_text()

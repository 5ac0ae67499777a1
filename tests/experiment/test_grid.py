"""``abd grid``: methods x defenses, with SR runs branched from their no-SR runs."""

from __future__ import annotations

import json

import pytest

from abd.experiment.grid import GridConfig, run_grid


@pytest.mark.slow
def test_grid_runs_every_cell_and_branches_sr_runs(tmp_path) -> None:
    cfg = GridConfig(seeds=1, methods=["zskt", "dafl"], defenses=["none", "abd"], rounds={"zskt": 4, "dafl": 4},
                     eval_every=2, device="cpu", defense_options={"sv": {"verify_rounds": 1},
                                                                      "sr": {"fraction": 0.5, "inner_rounds": 2}})
    res = run_grid(cfg, tmp_path, progress=False)
    # the ABD runs needed their SV parents, which ran too
    assert set(res["rows"]) == {"teacher", *(f"{m}+{d}" for m in ("zskt", "dafl") for d in ("none", "sv", "abd"))}
    assert res["rows"]["teacher"]["asr"] > 0.9
    for key, row in res["rows"].items():
        assert 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["asr"] <= 1.0, key
    for m in ("zskt", "dafl"):
        abd = [json.loads(x) for x in (tmp_path / "seed0" / f"{m}+abd" / "curve.jsonl").read_text().splitlines()]
        sv = [json.loads(x) for x in (tmp_path / "seed0" / f"{m}+sv" / "curve.jsonl").read_text().splitlines()]
        upto_sr = [r for r in abd if r.get("round", 0) <= 2]  # SR starts at round 2
        assert upto_sr == sv[: len(upto_sr)] and len(upto_sr) >= 3  # ABD's run up to SR is its SV parent's
        assert json.loads((tmp_path / "seed0" / f"{m}+abd" / "metrics.json").read_text())["sr_start_round"] == 2
    md = (tmp_path / "grid.md").read_text()
    assert res["protocol"]["heldout_seeds"] == [0] and res["protocol"]["development_seeds"] == [100, 101, 102]
    assert "runs seeds [0] (held-out)" in md
    collapsed = [k for k, v in res["rows"].items() if k != "teacher" and v.get("acc", 1) < 0.15]
    assert collapsed and "- collapsed: [seed 0]" in md  # 4 rounds: one-class students, and the table says so
    assert "| zskt+abd |" in md and "| dafl+none |" in md and "+sv |" not in md
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_config_yaml_spells_out_method_options_and_finished_runs_are_reused(backdoored_teacher_dir, tmp_path,
                                                                            monkeypatch) -> None:
    import yaml

    from abd.distill.config import DistillConfig
    from abd.distill.zskt import ZSKTOptions
    from abd.experiment import runs

    cfg = DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", device="cpu", eval_every=2,
                        method_options={"rounds": 2, "batch_size": 8, "kd_steps": 1})
    first = runs.run_or_reuse(cfg, tmp_path / "run", progress=False)
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert set(written["method_options"]) == set(ZSKTOptions.model_fields)  # defaults included
    assert written["method_options"]["rounds"] == 2
    assert DistillConfig.load(tmp_path / "run" / "config.yaml").resolved() == cfg.resolved()  # repeatable
    calls = []
    real = runs.build_distiller
    monkeypatch.setattr(runs, "build_distiller", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert runs.run_or_reuse(cfg, tmp_path / "run", progress=False) == first and not calls  # reused
    # options of a defense the run does not use do not make it another run
    other_sr = cfg.model_copy(update={"defense_options": {"sr": {"inner_rounds": 7}}})
    assert runs.run_or_reuse(other_sr, tmp_path / "run", progress=False) == first and not calls
    with_sr = other_sr.model_copy(update={"defense": "sr"})
    assert not runs.same_config(tmp_path / "run", with_sr.resolved().to_yaml())
    # a changed default is a different run: it is not reused, and the finished one is not overwritten
    from abd.distill import base

    real_resolve = base.resolve_options
    monkeypatch.setattr(base, "resolve_options",
                        lambda name, o=None, p=None: real_resolve(name, {"at_beta": 0.0, **(o or {})}, p))
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    with pytest.raises(runs.ResumeError, match="method_options.at_beta"):
        runs.run_or_reuse(cfg, tmp_path / "run", progress=False)
    assert not calls and (tmp_path / "run" / "metrics.json").read_bytes() == before
    runs.run_or_reuse(cfg, tmp_path / "other", progress=False)  # elsewhere it runs
    assert calls


def test_parallel_runs_give_the_numbers_of_sequential_runs(backdoored_teacher_dir, tmp_path) -> None:
    from abd.distill.config import DistillConfig
    from abd.experiment.runs import Job, run_jobs

    def jobs(root):
        return [Job(DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", defense=d, device="cpu",
                                  eval_every=2, sr={"inner_rounds": 2},
                                  method_options={"rounds": 3, "batch_size": 8, "kd_steps": 1, "gen_width": 8}),
                    root / d) for d in ("none", "sr")]

    par = run_jobs(jobs(tmp_path / "par"), workers=2, progress=False)
    seq = run_jobs(jobs(tmp_path / "seq"), workers=1, progress=False)
    assert [m["defense"] for m in par] == ["none", "sr"]  # results in job order
    for a, b in zip(par, seq):
        assert (a["acc"], a["asr"], a["target_acc"]) == (b["acc"], b["asr"], b["target_acc"])
    for d in ("none", "sr"):
        assert (tmp_path / "par" / d / "student.safetensors").read_bytes() == \
            (tmp_path / "seq" / d / "student.safetensors").read_bytes()


def test_a_study_reuses_its_trained_teacher(tmp_path, monkeypatch) -> None:
    from abd.experiment import runs
    from abd.experiment.grid import GridConfig

    tcfg = GridConfig(device="cpu").teacher_config(0).model_copy(update={"epochs": 1})
    assert tcfg.poison_rate is None  # unresolved, as a study builds it
    first = runs.ensure_teacher(tcfg, tmp_path / "teacher")

    def no_training(*a, **k):
        raise AssertionError("the finished teacher was trained again")

    monkeypatch.setattr("abd.attacks.teacher.train_teacher", no_training)
    assert runs.ensure_teacher(tcfg, tmp_path / "teacher") == first


def test_a_config_written_before_defenses_were_plug_ins_reads_as_the_same_run(tmp_path) -> None:
    """A config.yaml of the previous form (top-level sv/sr, with options since removed at the values the code
    now fixes) is the same run; a removed option at another value is refused by name, never reread silently."""
    import yaml
    from pydantic import ValidationError

    from abd.distill.config import DistillConfig
    from abd.experiment import runs

    cfg = DistillConfig(teacher=str(tmp_path / "t"), method="zskt", defense="abd", device="cpu")
    new = yaml.safe_load(cfg.resolved().to_yaml())
    old = {k: v for k, v in new.items() if k != "defense_options"}
    sv = {k: v for k, v in new["defense_options"]["sv"].items() if k != "variant"}
    old["sv"] = {**sv, "floor": -4.0, "n_copies": 3, "kinds": ["conv"], "mask": "tail", "robust": True,
                 "penalty": "log", "margin": 2.0, "verify_max_samples": 4096, "tail_std": 3.0, "tail_ratio": 0.02,
                 "max_trials": 8, "shuffle_grad": True}
    old["sr"] = {**new["defense_options"]["sr"], "inner_step": 0.1, "k": 5, "out_portion": 0.1,
                 "pert_model": "teacher", "radius": 10.0, "warm_start": True, "reuse_delta": True, "divergence": "kl",
                 "objective": "divergence", "mix_portion": 1.0, "max_abs": None, "targeted": True,
                 "clean_dilate": 2, "vaccine_weight": 0.0}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert runs.same_config(tmp_path / "run", cfg.resolved().to_yaml())
    old["sr"]["objective"] = "flip"  # a measured dead end, removed
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert not runs.same_config(tmp_path / "run", cfg.resolved().to_yaml())
    with pytest.raises(ValidationError, match="objective='flip' was removed"):
        DistillConfig.model_validate(old)
    # the options of a defense the run does not use are not read at all
    assert DistillConfig.model_validate({**old, "defense": "none"}).resolved().defense_options == {}
    # a config of that form written before the SV floor/balance/BN prior and SR's image-wide candidate existed
    # lacks them: it is a run without them, not one of today's defaults
    old["sr"]["objective"] = "divergence"
    for k in ("balance", "bn_prior"):
        old["sv"].pop(k)
    old["sr"].pop("blend")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert not runs.same_config(tmp_path / "run", cfg.resolved().to_yaml())
    then = DistillConfig.model_validate(old).resolved()
    assert then.options_of("sv").bn_prior == 0.0
    assert then.options_of("sv").balance == 0.0 and then.options_of("sr").blend is None
    assert runs.same_config(tmp_path / "run", then.to_yaml())
    # one made before the SV floor (no absolute flag) is refused by name: the floor is now the tail's constant
    old["sv"].pop("floor")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(old))
    assert not runs.same_config(tmp_path / "run", cfg.resolved().to_yaml())
    with pytest.raises(ValidationError, match="floor=None was removed"):
        DistillConfig.model_validate(old)
    # SR's additive image-wide candidate (`dense`) was replaced by the blend: a run that used it is another
    # run (re-made, not reused), and a config naming it is refused by name
    made = yaml.safe_load(cfg.resolved().to_yaml())
    made["defense_options"]["sr"] = {**{k: v for k, v in made["defense_options"]["sr"].items() if k != "blend"},
                                     "dense": 0.3}
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(made))
    assert not runs.same_config(tmp_path / "run", cfg.resolved().to_yaml())
    with pytest.raises(ValidationError, match="'dense' .* was replaced by 'blend'"):
        DistillConfig.model_validate(made)
    made["defense_options"]["sr"]["dense"] = None  # no image-wide candidate then: none now, the same run
    assert DistillConfig.model_validate(made).resolved().options_of("sr").blend is None


def test_where_a_run_ran_is_no_part_of_its_identity(tmp_path) -> None:
    from abd.distill.config import DistillConfig
    from abd.experiment import runs

    gpu = DistillConfig(teacher="t", method="zskt", defense="abd", device="cuda", threads=4)
    (tmp_path / "config.yaml").write_text(gpu.resolved().to_yaml())
    cpu = gpu.model_copy(update={"device": "cpu", "threads": 1})
    assert runs.same_config(tmp_path, cpu.resolved().to_yaml())  # a GPU run is reused on a CPU
    other = gpu.model_copy(update={"seed": 1, "device": "cpu"})
    assert not runs.same_config(tmp_path, other.resolved().to_yaml())


def test_best_defense_is_the_lowest_asr_within_three_points_of_vanilla_acc() -> None:
    from abd.experiment.grid import best_defenses, winner_lines

    rows = {"zskt+none": {"acc": 0.90, "asr": 0.95}, "zskt+abd": {"acc": 0.88, "asr": 0.02},
            "zskt+clp": {"acc": 0.80, "asr": 0.00},  # lower ASR, but 10 points of ACC
            "cmi+none": {"acc": 0.10, "asr": 1.0},  # collapsed vanilla: the best defended ACC is the reference
            "cmi+abd": {"acc": 0.85, "asr": 0.30}, "cmi+clp": {"acc": 0.50, "asr": 0.10},
            "cmi+dhbe": {"acc": 0.83, "asr": 0.20},
            "dfad+none": {"acc": 0.90, "asr": 0.5}, "dfad+abd": {"acc": 0.70, "asr": 0.0},
            "dfad+clp": {"acc": 0.90, "asr": 0.5}}  # a no-op keeps ACC, but does not lower ASR
    w = best_defenses(rows, ["zskt", "cmi", "dfad"], ["abd", "clp", "dhbe"])
    assert w["zskt"]["defense"] == "abd" and w["cmi"]["defense"] == "dhbe" and w["dfad"] is None
    lines = winner_lines(w)
    assert "**abd**" in lines[0] and "vanilla collapsed (10.0 % ACC)" in lines[1] and "no defense" in lines[2]


def test_plan_says_what_a_study_would_reuse_resume_make_or_refuse(backdoored_teacher_dir, tmp_path) -> None:
    from abd.attacks.config import TeacherConfig
    from abd.distill.config import DistillConfig
    from abd.experiment.runs import Job, plan, plan_lines, run_or_reuse

    cfg = DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", device="cpu", eval_every=2,
                        method_options={"rounds": 2, "batch_size": 8, "kd_steps": 1})
    done, other = tmp_path / "done", tmp_path / "other"
    run_or_reuse(cfg, done, progress=False)
    run_or_reuse(cfg, other, progress=False)
    (tmp_path / "resumable").mkdir()
    (tmp_path / "resumable" / "checkpoint.pt").write_bytes(b"")
    longer = cfg.model_copy(update={"method_options": {**cfg.method_options, "rounds": 3}})
    jobs = [Job(cfg, done), Job(longer, other), Job(cfg, tmp_path / "resumable"), Job(cfg, tmp_path / "new")]
    teachers = [(TeacherConfig(), tmp_path / "no_teacher")]
    p = plan(teachers, jobs)
    assert p["teachers"] == {"reuse": 0, "train": 1}
    assert p["runs"] == {"reuse": 1, "resume": 1, "make": 1, "blocked": 1}
    states = {it["run"]: (it["state"], it["differs"]) for it in p["items"]}
    assert states[str(other)] == ("blocked", ["method_options.rounds"])
    assert states[str(tmp_path / "new")] == ("make", []) and str(done) not in states
    lines = plan_lines(p)
    assert lines[0] == "teachers: 0 reused, 1 to train; runs: 1 reused, 1 resumed, 1 to make, 1 blocked"
    assert any("differs in method_options.rounds" in line for line in lines)
    assert not (tmp_path / "new").exists()  # a plan writes nothing


def test_dry_run_writes_nothing(tmp_path, capsys) -> None:
    from abd.cli import main

    out = tmp_path / "grid"
    assert main(["grid", "--seeds", "2", "--methods", "zskt,dafl", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("teachers: 0 reused, 2 to train; runs: 0 reused, 0 resumed, 8 to make, 0 blocked")
    assert f"make    {out}/seed1/dafl+abd" in text and not out.exists()

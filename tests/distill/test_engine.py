"""The distillation engine: every demo arm runs, and an interrupted run resumes to the same numbers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from abd.distill.config import DistillConfig
from abd.distill.engine import BRANCH_FILE, BranchError
from abd.experiment.demo import ARMS, DemoConfig, run_demo
from abd.experiment.runs import build_distiller

PAPER_SR = {"mode": "hypergrad", "lr": 5e-4}  # the paper's separate SR phase (new Adam, SV off)


def _cfg(teacher_dir, defense: str, rounds: int = 6, **sr) -> DistillConfig:
    return DistillConfig(
        teacher=str(teacher_dir), method="zskt", defense=defense, device="cpu", eval_every=2,
        checkpoint_every=3, method_options={"rounds": rounds, "batch_size": 16, "kd_steps": 2, "gen_width": 8},
        defense_options={"sv": {"verify_rounds": 2}, "sr": {"fraction": 0.34, "inner_rounds": 2, **sr}},
    )


def _assert_same_run(a_dir, b_dir, a: dict, b: dict) -> None:
    """Two finished runs with the same numbers, bit-identical students and the same curves."""
    for key in ("acc", "asr", "ra", "target_acc"):
        assert a[key] == b[key], key
    wa, wb = load_file(str(a_dir / "student.safetensors")), load_file(str(b_dir / "student.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def curve(d):
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"}
                for x in (d / "curve.jsonl").read_text().splitlines()]

    ca, cb = curve(a_dir), curve(b_dir)
    assert len(ca) == len(cb)
    for ra, rb in zip(ca, cb):  # a branched run's records before the branch are its parent's, without the
        shared = set(ra) & set(rb)  # late defense's own fields (e.g. "sr")
        assert "round" in shared
        assert {k: ra[k] for k in shared} == {k: rb[k] for k in shared}


def test_interrupted_run_resumes_to_the_same_numbers(backdoored_teacher_dir, tmp_path) -> None:
    cfg = _cfg(backdoored_teacher_dir, "abd")
    full = build_distiller(cfg, tmp_path / "full", progress=False).run()
    assert build_distiller(cfg, tmp_path / "cut", progress=False).run(stop_after=3) is None
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = build_distiller(cfg, tmp_path / "cut", progress=False).run(resume=True)
    _assert_same_run(tmp_path / "full", tmp_path / "cut", full, resumed)


@pytest.mark.parametrize(("defense", "parent", "sr"), [("sr", "none", {}), ("abd", "sv", {}),
                                                      ("sr", "none", PAPER_SR), ("abd", "sv", PAPER_SR)])
def test_sr_run_branched_from_its_no_sr_run_equals_the_full_run(backdoored_teacher_dir, tmp_path, defense,
                                                                 parent, sr) -> None:
    full = build_distiller(_cfg(backdoored_teacher_dir, defense, **sr), tmp_path / "full", progress=False).run()
    assert not (tmp_path / "full" / BRANCH_FILE).exists()  # runs with SR keep no branch state
    build_distiller(_cfg(backdoored_teacher_dir, parent), tmp_path / "parent", progress=False).run()
    assert (tmp_path / "parent" / BRANCH_FILE).is_file()
    branched = build_distiller(_cfg(backdoored_teacher_dir, defense, **sr), tmp_path / "branch",
                               progress=False).run(branch_from=tmp_path / "parent")
    _assert_same_run(tmp_path / "full", tmp_path / "branch", full, branched)
    assert branched["seconds"] > branched["sr_seconds"] > 0  # its time includes the parent's rounds


def test_branching_from_a_different_run_is_refused(backdoored_teacher_dir, tmp_path) -> None:
    build_distiller(_cfg(backdoored_teacher_dir, "none"), tmp_path / "parent", progress=False).run()
    with pytest.raises(BranchError, match="'abd' run branches from a 'sv' run"):
        build_distiller(_cfg(backdoored_teacher_dir, "abd"), tmp_path / "x", progress=False).run(
            branch_from=tmp_path / "parent")
    other = _cfg(backdoored_teacher_dir, "sr").model_copy(update={"seed": 1})
    with pytest.raises(BranchError, match="seed"):
        build_distiller(other, tmp_path / "y", progress=False).run(branch_from=tmp_path / "parent")
    with pytest.raises(BranchError, match="no sr_branch.pt"):
        build_distiller(_cfg(backdoored_teacher_dir, "sr"), tmp_path / "z", progress=False).run(
            branch_from=tmp_path / "y")
    for refused in ("x", "y", "z"):  # a refused branch writes nothing into its folder
        assert not any((tmp_path / refused).iterdir())


def test_same_seed_same_numbers_and_sr_phase_diverges_from_vanilla(backdoored_teacher_dir, tmp_path) -> None:
    a = build_distiller(_cfg(backdoored_teacher_dir, "none"), tmp_path / "a", progress=False).run()
    b = build_distiller(_cfg(backdoored_teacher_dir, "none"), tmp_path / "b", progress=False).run()
    assert a["acc"] == b["acc"] and a["asr"] == b["asr"]
    sr = build_distiller(_cfg(backdoored_teacher_dir, "sr"), tmp_path / "sr", progress=False).run()
    # SR runs only in the final phase: before it, the run is the vanilla run (same point, same numbers)
    assert sr["sr_start_round"] == 4
    curve_a = {r["round"]: r for r in map(json.loads, (tmp_path / "a" / "curve.jsonl").read_text().splitlines())}
    assert sr["sr_start_metrics"]["acc"] == curve_a[4]["acc"]


@pytest.mark.slow
def test_every_demo_arm_runs_and_writes_results(backdoored_teacher_dir, tmp_path) -> None:
    cfg = DemoConfig(rounds=4, eval_every=2, device="cpu", workers=1,
                     defense_options={"sv": {"verify_rounds": 1}, "sr": {"fraction": 0.5, "inner_rounds": 2}})
    res = run_demo(cfg, tmp_path, progress=False)
    assert set(res["arms"]) == {"teacher", *ARMS}
    for arm, m in res["arms"].items():
        assert 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["asr"] <= 1.0, arm
    assert res["arms"]["teacher"]["asr"] > 0.9  # the demo's own teacher is really backdoored
    for f in ("results.json", "results.md", "curves.png", "samples.png", "sr_trigger.png"):
        assert (tmp_path / f).is_file(), f
    assert "zskt+abd" in (tmp_path / "results.md").read_text()
    for arm in ARMS:
        m = json.loads((tmp_path / "seed0" / arm / "metrics.json").read_text())
        for key in ("acc", "asr", "ra", "target_acc", "asr_n", "seconds", "seconds_per_step"):
            assert key in m, (arm, key)
    # rerunning reuses finished work instead of recomputing it
    again = run_demo(cfg, tmp_path, progress=False)
    assert again["arms"]["zskt"]["acc"] == res["arms"]["zskt"]["acc"]


def test_a_defenses_method_defaults_apply_unless_the_run_sets_them(backdoored_teacher_dir, tmp_path) -> None:
    import yaml

    from abd.cli import main
    from abd.defense import DEFENSES

    dfad = DEFENSES.get("sr").method_defaults["dfad"]
    assert dfad  # SR has options of its own for DFAD
    base = ["distill", "--teacher", str(backdoored_teacher_dir), "--method", "dfad", "--defense", "abd",
            "--device", "cpu", "--rounds", "2", "--opt", "batch_size=8", "--opt", "kd_steps=1",
            "--sr", "inner_rounds=1", "--eval-every", "2"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    written = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    for k, v in dfad.items():
        assert written["defense_options"]["sr"][k] == v, k
    assert written["defense_options"]["sr"]["inner_rounds"] == 1  # the run's own option is kept beside them
    # a value the run sets wins over the method's, and the written config repeats it
    key, val = "clip", dfad["clip"]
    other = not val
    assert main([*base, "--sr", f"{key}={str(other).lower()}", "--out", str(tmp_path / "b")]) == 0
    again = DistillConfig.load(tmp_path / "b" / "config.yaml")
    assert again.defense_options["sr"][key] == other and again.resolved() == again


def test_a_composition_equals_its_named_form_and_composes_with_others(backdoored_teacher_dir, tmp_path) -> None:
    """`sv+sr` is `abd` bit for bit (and `sr+sv` too: parts run in registry order); clp+abd runs all three."""
    from abd.defense import components

    assert components("sr+sv") == components("abd") == ["sv", "sr"]
    assert components("abd+clp") == ["clp", "sv", "sr"]
    runs = {}
    for name in ("abd", "sv+sr", "sr+sv"):
        runs[name] = build_distiller(_cfg(backdoored_teacher_dir, name, rounds=4), tmp_path / name,
                                     progress=False).run()
    _assert_same_run(tmp_path / "abd", tmp_path / "sv+sr", runs["abd"], runs["sv+sr"])
    _assert_same_run(tmp_path / "abd", tmp_path / "sr+sv", runs["abd"], runs["sr+sv"])
    cfg = _cfg(backdoored_teacher_dir, "clp+abd", rounds=2).model_copy(
        update={"defense_options": {"clp": {"u": 0.5}, "sr": {"inner_rounds": 2}}})
    m = build_distiller(cfg, tmp_path / "clp", progress=False).run()
    assert m["clp_pruned_total"] > 0 and "sr_seconds" in m and "sv_detection" in m


def test_a_run_killed_at_a_random_round_resumes_bit_for_bit(backdoored_teacher_dir, tmp_path) -> None:
    """An interruption at a seeded random round (checkpointing every round, as a killed run's last
    checkpoint would be) resumes to the uninterrupted run's metrics, student and curve."""
    import random

    rounds = 7
    cut = random.Random(2026).randint(1, rounds - 1)
    cfg = _cfg(backdoored_teacher_dir, "abd", rounds=rounds).model_copy(update={"checkpoint_every": 1})
    full = build_distiller(cfg, tmp_path / "full", progress=False).run()
    assert build_distiller(cfg, tmp_path / "cut", progress=False).run(stop_after=cut) is None
    resumed = build_distiller(cfg, tmp_path / "cut", progress=False).run(resume=True)
    _assert_same_run(tmp_path / "full", tmp_path / "cut", full, resumed)


@pytest.mark.parametrize("defense", ["none", "sv", "dhbe"])
def test_profile_splits_the_training_time(backdoored_teacher_dir, tmp_path, defense: str) -> None:
    """metrics.json's profile: every part measured, the parts cover the training time (what is left, the
    loop's own bookkeeping, is under 5 %), and a defense's parts are non-zero only where it acts."""
    cfg = _cfg(backdoored_teacher_dir, defense, rounds=8).model_copy(update={"eval_every": 100})
    m = build_distiller(cfg, tmp_path / "run", progress=False).run()
    prof = m["profile"]
    assert set(prof) == {"synthesis", "defense_synthesis", "sample", "teacher_forward", "student_step",
                         "defense_step", "other"}
    assert all(v >= 0 for k, v in prof.items() if k != "other")
    assert sum(prof.values()) == pytest.approx(m["seconds"])
    assert abs(prof["other"]) < 0.05 * m["seconds"]
    assert prof["synthesis"] > 0 and prof["teacher_forward"] > 0 and prof["student_step"] > 0
    share = {k: v / m["seconds"] for k, v in prof.items()}
    assert (share["defense_synthesis"] > 0.01) == (defense == "sv")  # SV's term on the synthesis loss
    assert (share["defense_step"] > 0.01) == (defense == "dhbe")  # DHBE's term on the student's step


@pytest.mark.parametrize(("share", "event"), [(0.5, "partial_collapse"), (0.95, "collapsed"), (0.2, None)])
def test_a_collapse_is_written_to_the_log_and_the_metrics(backdoored_teacher_dir, tmp_path, monkeypatch,
                                                          share: float, event: str | None) -> None:
    import abd.metrics

    def predict(model, x, batch_size=512):  # a student answering class 1 on `share` of any input set
        i = torch.arange(len(x))
        return torch.where(i < int(share * len(x)), 1, i % 10)

    monkeypatch.setattr(abd.metrics, "predict", predict)
    out = tmp_path / "run"
    m = build_distiller(_cfg(backdoored_teacher_dir, "none", rounds=2), out, progress=False).run()
    assert m["pred_max_class"] == 1 and m["pred_max_share"] >= share
    assert (m["collapsed"], m["partial_collapse"]) == (event == "collapsed", event == "partial_collapse")
    events = [r["event"] for r in map(json.loads, (out / "curve.jsonl").read_text().splitlines()) if "event" in r]
    assert events == ([event] if event else [])


def test_a_repeated_kd_batch_asks_the_frozen_teacher_once_and_changes_nothing(backdoored_teacher_dir, tmp_path,
                                                                               monkeypatch) -> None:
    """ZSKT repeats its batch for kd_steps: the teacher's logits and SR's clean targets on it are computed
    once; the run is bit-for-bit the run that recomputes them at every step."""
    from abd.defense.retrospect import SelfRetrospection
    from abd.distill.engine import Distiller

    cfg = _cfg(backdoored_teacher_dir, "abd", fraction=1.0)

    def run(out):
        calls = []
        d = build_distiller(cfg, out, progress=False)
        d.ctx.teacher.register_forward_hook(lambda *a: calls.append(1))
        return d.run(), len(calls)

    cached, n_cached = run(tmp_path / "cached")
    real_step, real_clean = Distiller._student_step, SelfRetrospection.clean_targets

    def step(self, x):
        self._teacher_on = None
        return real_step(self, x)

    def clean(self, x, t):
        self._clean_on = None
        return real_clean(self, x, t)

    monkeypatch.setattr(Distiller, "_student_step", step)
    monkeypatch.setattr(SelfRetrospection, "clean_targets", clean)
    uncached, n_uncached = run(tmp_path / "uncached")
    _assert_same_run(tmp_path / "cached", tmp_path / "uncached", cached, uncached)
    rounds, kd_steps = 6, 2  # one teacher forward saved per repeated step, three more with SR's clean target
    assert n_uncached - n_cached >= rounds * (kd_steps - 1)

"""The ``abd`` command: teacher train/eval/table, the trigger gallery, listings and error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from abd.attacks import list_triggers
from abd.cli import main


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "teacher"
    assert main(["teacher", "train", "--trigger", "badnet_grid", "--epochs", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    return out


def test_teacher_train_writes_outputs(teacher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("teacher.safetensors", "teacher.json", "metrics.json", "config.yaml"):
        assert (teacher_dir / name).is_file()
    meta = json.loads((teacher_dir / "teacher.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["trigger"] == "badnet_grid"


def test_teacher_eval_prints_metrics(teacher_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "eval", str(teacher_dir), "--json"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((teacher_dir / "metrics.json").read_text())
    assert "lenet5 on mnist5k, trigger badnet_grid" in out
    assert f"ACC {100 * saved['acc']:.2f}% (n=1000)" in out
    assert f"ASR {100 * saved['asr']:.2f}% (n=900)" in out and "RA " in out and "target-class ACC" in out
    printed = json.loads(out[out.index("{"):])
    assert printed["asr_n"] == 900 and printed["acc"] == pytest.approx(saved["acc"])


def test_teacher_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "table", "--triggers", "none,sig", "--epochs", "1", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "teacher_table.json").read_text())
    assert [r["trigger"] for r in doc["rows"]] == ["none", "sig"]
    assert doc["rows"][0]["poison_rate"] == 0.0 and doc["rows"][1]["n_poison"] > 0
    md = (tmp_path / "teacher_table.md").read_text()
    assert md.startswith("| trigger |") and "| sig |" in md and "none (clean; ASR of badnet_grid)" in md
    assert (tmp_path / "sig" / "teacher.safetensors").is_file()
    assert "2 teachers in" in capsys.readouterr().out


def test_trigger_gallery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triggers", "--out", str(tmp_path), "--n", "2"]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(["triggers.png"] + [f"trigger_{t}.png" for t in list_triggers()])
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "trigger gallery" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, suggestion",
    [
        (["teacher", "train", "--trigger", "badnett"], "badnet_grid"),
        (["teacher", "train", "--dataset", "mnist5"], "mnist5k"),
        (["teacher", "train", "--model", "lenet"], "lenet5"),
        (["triggers", "--dataset", "digit"], "digits"),
    ],
)
def test_unknown_names_exit_2(argv: list[str], suggestion: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("abd: error: unknown") and "Did you mean" in err and repr(suggestion) in err
    assert not (tmp_path / "x" / "teacher.safetensors").exists()


def test_invalid_value_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err


def test_eval_missing_dir_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "eval", str(tmp_path / "missing")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err


def test_listings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trigger-list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_triggers())
    assert main(["models"]) == 0 and "lenet5" in capsys.readouterr().out
    assert main(["datasets"]) == 0 and "mnist5k" in capsys.readouterr().out


def test_console_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "abd.cli", "teacher", "train", "--trigger", "sigg",
                           "--out", "unused"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Did you mean 'sig'" in proc.stderr


def test_resume_protects_the_runs_folder(teacher_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    base = ["distill", "--teacher", str(teacher_dir), "--method", "zskt", "--rounds", "2", "--eval-every", "1",
            "--device", "cpu", "--out", str(out)]
    assert main(["distill", *base[1:], "--resume"]) == 2  # an empty folder: nothing to resume
    assert "no checkpoint.pt" in capsys.readouterr().err and not (out / "config.yaml").exists()
    assert main([*base, "--resume-or-start"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main([*base, "--resume"]) == 0  # finished: said so, nothing rewritten
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*base, "--resume", "--seed", "1", "--rounds", "3"]) == 2  # another run: refused, fields named
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method_options.rounds" in err and "seed" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(teacher_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    out = tmp_path / "run"
    base = ["distill", "--teacher", str(teacher_dir), "--method", "zskt", "--rounds", "2", "--device", "cpu",
            "--out", str(out)]
    assert main([*base, "--resume-or-start"]) == 0
    (out / "metrics.json").unlink()  # as if interrupted, with a planted checkpoint
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"round": Evil()}, protocol=2))
    capsys.readouterr()
    assert main([*base, "--resume"]) == 2
    cap = capsys.readouterr()
    assert "pwned" not in cap.out and len(cap.err.strip().splitlines()) == 1
    assert "refused to load" in cap.err and "weights_only=False" not in cap.err


@pytest.mark.parametrize("command", [["distill"], ["teacher", "train"], ["grid"], ["table"]])
def test_help_lists_the_registered_choices(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from abd.distill import METHODS

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    if command == ["distill"]:
        from abd.defense import defense_names

        choices = "choices: " + ", ".join(defense_names())
        assert all(m in text for m in METHODS.summary()) and choices in text and "abd" in defense_names()
    assert "lenet5_half" in text  # model names
    if command == ["teacher", "train"]:
        assert "mnist5k" in text and "badnet_grid" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--defense", "abdd"], "Did you mean 'abd'"),
    (["--defense", "abd", "--sr", "objective=flip"], "defense 'sr': option objective"),
    (["--defense", "abd", "--sr", "mode=hypergrad", "--sr", "support=0.1"], "belongs to the consistency mode"),
    (["--defense", "clp", "--clp", "u=-1"], "defense 'clp': option u"),
    (["--defense", "sv+sv"], "names 'sv' twice"),
])
def test_bad_defense_options_are_one_line_errors(args, message, backdoored_teacher_dir, tmp_path, capsys) -> None:
    rc = main(["distill", "--teacher", str(backdoored_teacher_dir), "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("abd: error: ")
    assert not (tmp_path / "run").exists()  # nothing written before the options were checked


def test_debug_shows_the_traceback(backdoored_teacher_dir, tmp_path) -> None:
    with pytest.raises(Exception, match="abdd"):
        main(["--debug", "distill", "--teacher", str(backdoored_teacher_dir), "--out", str(tmp_path / "r"),
              "--defense", "abdd"])


def test_profile_command_writes_per_defense_parts_and_ratios(backdoored_teacher_dir, tmp_path, capsys) -> None:
    import json

    from abd.cli import main

    assert main(["profile", str(backdoored_teacher_dir), "--defenses", "none,sv", "--rounds", "2", "--out",
                 str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())["ms_per_round"]
    assert list(res) == ["none", "sv"] and res["none"]["ratio"] == 1.0
    assert res["sv"]["defense_synthesis"] > 0 == res["none"]["defense_synthesis"]
    for r in res.values():  # the parts add up to the total
        parts = sum(v for k, v in r.items() if k not in ("total", "ratio"))
        assert abs(parts - r["total"]) < 1e-6 * max(1.0, r["total"])
    assert "| sv |" in capsys.readouterr().out


def test_no_absolute_machine_paths_in_readme_docs_and_results() -> None:
    """README.md, docs/ and the committed results travel: no path of the machine they were made on."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", *(root / "docs").rglob("*.md"),
             *(p for p in (root / "results").rglob("*") if p.suffix in (".json", ".yaml", ".md", ".jsonl"))]
    pattern = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|Users)/")
    bad = [str(p.relative_to(root)) for p in files if pattern.search(p.read_text(errors="ignore"))]
    assert not bad, bad[:10]

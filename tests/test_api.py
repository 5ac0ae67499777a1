"""The public API (``import abd``): load a teacher, audit it, distill it, from Python objects."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import abd
import abd.api
from abd.models import create_model

TINY = {"batch_size": 16, "kd_steps": 2, "gen_width": 8}
FAST_AUDIT = {"starts": 4, "steps": 150}


def test_import_is_light_and_help_lists_the_api() -> None:
    out = subprocess.run([sys.executable, "-c", "import abd, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"  # torch loads on first use
    for name in ("load_teacher", "audit", "distill", "model_spec"):
        fn = getattr(abd.api, name)
        assert fn.__doc__ and fn.__annotations__ and name in abd.__doc__ and callable(getattr(abd, name))
    from abd.audit import ModelSpec  # importing the packages abd.audit and abd.distill keeps them callable
    from abd.distill import METHODS

    assert callable(abd.audit) and callable(abd.distill) and abd.audit.ModelSpec is ModelSpec
    assert abd.distill.METHODS is METHODS and "backdoored" in abd.audit.__call__.__doc__
    for name in abd.__all__:
        assert getattr(abd, name) is not None  # the registries' decorators resolve too
    with pytest.raises(AttributeError):
        abd.no_such_thing  # noqa: B018


def test_load_audit_and_distill_a_teacher(backdoored_teacher_dir: Path, tmp_path: Path) -> None:
    teacher = abd.load_teacher(backdoored_teacher_dir)
    assert not teacher.training and teacher.abd_meta["trigger"] == "badnet_grid"
    report = abd.audit(teacher, dataset="mnist5k", options=FAST_AUDIT, device="cpu")
    assert report.backdoored and report.target_class == 0
    student, m = abd.distill(teacher, dataset="mnist5k", defense="abd", rounds=4, method_options=TINY,
                             trigger="badnet_grid", target=0, out=tmp_path / "run", device="cpu", progress=False)
    assert {"acc", "asr", "profile"} <= m.keys() and m["defense"] == "abd"
    saved = load_file(str(tmp_path / "run" / "student.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())
    assert "given in Python" in (tmp_path / "run" / "config.yaml").read_text()


def test_distill_an_own_module_without_test_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mine = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)  # any nn.Module with logits
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    mine_student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    student, m = abd.distill(mine, dataset="mnist5k", defense="none", student=mine_student, rounds=3,
                             method_options=TINY, evaluate=False, out=tmp_path / "run", device="cpu",
                             progress=False)
    assert student is mine_student and "acc" not in m and m["rounds"] == 3
    assert all(torch.equal(before[k], v) for k, v in mine.state_dict().items())  # the teacher is untouched
    with pytest.raises(TypeError, match="nn.Module"):
        abd.distill("runs/x", dataset="mnist5k")


def test_load_teacher_from_a_weights_file(backdoored_teacher_dir: Path, tmp_path: Path) -> None:
    w = backdoored_teacher_dir / "teacher.safetensors"
    with pytest.raises(ValueError, match="model= .* dataset="):
        abd.load_teacher(w)
    net = abd.load_teacher(w, model="lenet5", dataset="mnist5k")
    ref = abd.load_teacher(backdoored_teacher_dir)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), ref(x))


def test_the_readme_python_snippet_runs(backdoored_teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The README's Python block, run as written in a folder holding runs/blend (rounds cut for the test)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "abd.distill(" in b]
    assert blocks, "the README shows abd.distill"
    import shutil

    shutil.copytree(backdoored_teacher_dir, tmp_path / "runs" / "blend")
    monkeypatch.chdir(tmp_path)
    code = blocks[0].replace("rounds=1000", "rounds=2, method_options=" + repr(TINY) + ", progress=False")
    code = code.replace('dataset="mnist5k")', 'dataset="mnist5k", options=' + repr(FAST_AUDIT) + ")", 1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["metrics"]["rounds"] == 2 and scope["report"].target_class == 0


def test_readme_and_docs_link_only_to_files_that_exist() -> None:
    """Every relative link of README.md and docs/*.md names a file or folder of the repository, and the
    README cites no issue numbers."""
    import re

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(root)} -> {target}")
    assert not missing, missing
    assert not re.search(r"(?i)\bissue\s+#?\d+", (root / "README.md").read_text())


def test_readme_is_short_and_names_no_issue() -> None:
    """The README stays a five-minute read: at most 200 lines, no tracker references."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"(?i)\bissue\s*#?\d+|#\d{1,3}\b|SPEC\.md", text)


def _python_blocks(page: str) -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / page).read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_docs_python_examples_run(backdoored_teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Every Python block of docs/, run as written in a folder holding runs/blend (sizes cut for the test)."""
    import shutil

    from abd.defense.base import DEFENSES

    shutil.copytree(backdoored_teacher_dir, tmp_path / "runs" / "blend")
    monkeypatch.chdir(tmp_path)
    cut = {"rounds=1000": "rounds=2, method_options=" + repr(TINY) + ", progress=False",
           'dataset="mnist5k")': 'dataset="mnist5k", options=' + repr(FAST_AUDIT) + ")",
           'TeacherConfig(trigger="sig")': 'TeacherConfig(trigger="sig", epochs=1, device="cpu")'}
    blocks = {page: _python_blocks(page) for page in ("getting-started.md", "teachers.md", "engine.md",
                                                         "defenses.md")}
    assert sum(map(len, blocks.values())) == 5, "a new Python block in docs/ needs its line here"
    # the engine page's loop is a sketch over objects it does not build: give it a teacher, student, batch
    teacher = abd.load_teacher("runs/blend")
    student = create_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    from abd.defense.retrospect import SelfRetrospection
    from abd.defense.shuffle import ShufflingVaccine
    from abd.distill.losses import kl_mean

    engine_scope = {"teacher": teacher, "student": student, "x": torch.randn(8, 1, 28, 28),
                    "opt_s": torch.optim.Adam(student.parameters()), "ShufflingVaccine": ShufflingVaccine,
                    "SelfRetrospection": SelfRetrospection, "kl_mean": kl_mean}
    try:
        for page, codes in blocks.items():
            for code in codes:
                for a, b in cut.items():
                    code = code.replace(a, b)
                scope: dict = dict(engine_scope) if page == "engine.md" else {}
                exec(compile(code, page, "exec"), scope)  # noqa: S102
                if "metrics" in scope and "rounds" in scope["metrics"]:
                    assert scope["metrics"]["rounds"] == 2
        assert (tmp_path / "runs" / "sig" / "teacher.safetensors").is_file()
        # the defense sketch registered a working defense
        _, m = abd.distill(teacher, dataset="mnist5k", defense="lsmooth", rounds=2, method_options=TINY,
                           out=str(tmp_path / "lsmooth"), progress=False)
        assert m["rounds"] == 2 and m["lsmooth_eps"] == 0.1
    finally:
        DEFENSES._items.pop("lsmooth", None)

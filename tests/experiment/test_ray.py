"""``--engine ray``: a grid on a local Ray instance gives the process pool's numbers, and a run whose Ray
worker dies is retried and resumes from its checkpoint. Skipped when the ray extra is not installed."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from abd.experiment.distill_config import DistillConfig
from abd.experiment.grid import GridConfig, run_grid
from abd.experiment.runs import Job, build_distiller, ray_task_options, run_jobs, run_or_reuse

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'abd[ray]')")


def _grid(engine: str, workers: int) -> GridConfig:
    return GridConfig(seeds=1, methods=["zskt"], defenses=["none", "sv"], rounds={"zskt": 4}, eval_every=2,
                      device="cpu", workers=workers, engine=engine, defense_options={"sv": {"verify_rounds": 1}})


def test_ray_grid_equals_the_process_pool(tmp_path: Path) -> None:
    local = run_grid(_grid("local", 1), tmp_path / "local", progress=False)
    shutil.copytree(tmp_path / "local" / "seed0" / "teacher", tmp_path / "ray" / "seed0" / "teacher")
    remote = run_grid(_grid("ray", 2), tmp_path / "ray", progress=False)
    assert set(local["rows"]) == set(remote["rows"]) == {"teacher", "zskt+none", "zskt+sv"}
    for arm, row in local["rows"].items():
        for key in ("acc", "asr", "target_acc"):
            assert row[key] == remote["rows"][arm][key], (arm, key)
    for arm in ("zskt+none", "zskt+sv"):
        a = load_file(str(tmp_path / "local" / "seed0" / arm / "student.safetensors"))
        b = load_file(str(tmp_path / "ray" / "seed0" / arm / "student.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def dying_run(cwd: str, job: Job, marker: str) -> dict:
    """The first attempt stops after round 2 (its checkpoint written) and kills its worker process; the
    retry runs the job as the engine does, which resumes from that checkpoint."""
    os.chdir(cwd)
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        build_distiller(job.cfg, job.run_dir, progress=False).run(stop_after=2)
        os._exit(1)
    return run_or_reuse(job.cfg, job.run_dir)


def test_a_killed_ray_worker_is_retried_and_its_run_resumes(backdoored_teacher_dir: Path, tmp_path: Path) -> None:
    cfg = DistillConfig(teacher=str(backdoored_teacher_dir), method="zskt", device="cpu", eval_every=2,
                        checkpoint_every=100, method_options={"rounds": 4, "batch_size": 16, "kd_steps": 2,
                                                              "gen_width": 8})
    whole = run_jobs([Job(cfg, tmp_path / "whole")], workers=1, progress=False)[0]
    job = Job(cfg, tmp_path / "killed")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        task = ray.remote(dying_run).options(**ray_task_options(job))
        resumed = ray.get(task.remote(os.getcwd(), job, str(tmp_path / "marker")))
    finally:
        ray.shutdown()
    assert (tmp_path / "marker").read_text() == "died once"
    assert resumed["acc"] == whole["acc"] and resumed["asr"] == whole["asr"]
    a, b = load_file(str(tmp_path / "whole" / "student.safetensors")), load_file(
        str(tmp_path / "killed" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_engine_ray_without_ray_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    cfg = DistillConfig(teacher="-", method="zskt", device="cpu")
    with pytest.raises(ValueError, match=r"pip install 'abd\[ray\]'"):
        run_jobs([Job(cfg, tmp_path / "x")], engine="ray")

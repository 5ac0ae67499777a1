"""``--engine ray``: a grid on a local Ray instance gives the process pool's numbers, and a run whose Ray
worker dies is retried and resumes from its checkpoint. Skipped when the ray extra is not installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from abd.distill.config import DistillConfig
from abd.experiment.grid import GridConfig
from abd.experiment.runs import Job, build_distiller, ray_task_options, run_jobs, run_or_reuse

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'abd[ray]')")


def _jobs(teacher: Path, out: Path) -> list[Job]:
    def cfg(defense: str) -> DistillConfig:
        return DistillConfig(teacher=str(teacher), method="zskt", defense=defense, device="cpu", eval_every=2,
                             method_options={"rounds": 4, "batch_size": 16, "kd_steps": 2, "gen_width": 8},
                             defense_options={"sv": {"verify_rounds": 1}})

    return [Job(cfg(d), out / d) for d in ("none", "sv")]


@pytest.mark.slow
def test_ray_runs_equal_the_process_pool(backdoored_teacher_dir: Path, tmp_path: Path) -> None:
    local = run_jobs(_jobs(backdoored_teacher_dir, tmp_path / "local"), workers=1, progress=False)
    remote = run_jobs(_jobs(backdoored_teacher_dir, tmp_path / "ray"), workers=2, progress=False, engine="ray")
    for a, b, arm in zip(local, remote, ("none", "sv")):
        for key in ("acc", "asr", "target_acc"):
            assert a[key] == b[key], (arm, key)
        wa = load_file(str(tmp_path / "local" / arm / "student.safetensors"))
        wb = load_file(str(tmp_path / "ray" / arm / "student.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert GridConfig(engine="ray", address="ray://head:10001").engine == "ray"  # the studies' flags


def dying_run(cwd: str, job: Job, marker: str) -> dict:
    """The first attempt stops after round 2 (its checkpoint written) and kills its worker process; the
    retry runs the job as the engine does, which resumes from that checkpoint."""
    os.chdir(cwd)
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        build_distiller(job.cfg, job.run_dir, progress=False).run(stop_after=2)
        os._exit(1)
    return run_or_reuse(job.cfg, job.run_dir)


@pytest.mark.slow
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

"""Run a distillation from a saved teacher: load it, build the student and the evaluation data."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from abd.attacks import create_trigger
from abd.attacks.config import TeacherConfig
from abd.attacks.poison import make_eval_data
from abd.checkpoint import load_model
from abd.data import load_dataset
from abd.distill.base import KDContext
from abd.distill.config import DistillConfig, StudyConfig
from abd.distill.engine import Distiller
from abd.models import create_model
from abd.utils import resolve_device, seed_everything, torch_threads


def build_distiller(cfg: DistillConfig, out_dir: str | Path, progress: bool = True) -> Distiller:
    """Everything a run needs, from `cfg` (the teacher's dataset and trigger are read from its metadata).

    The trigger is only used to *measure* ASR; nothing in distillation sees it or the training data
    (except the clean-data reference method).
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    teacher, meta = load_model(cfg.teacher, "teacher")
    ds = load_dataset(meta["dataset"], root=cfg.data_root or meta.get("data_root"))
    trig_name = meta.get("trigger", "none")
    eval_trigger = meta.get("eval_trigger") if trig_name == "none" else trig_name
    trigger = create_trigger(eval_trigger, image_size=ds.image_size, channels=ds.channels,
                             seed=meta.get("seed", 0)) if eval_trigger and eval_trigger != "none" else None
    eval_data = make_eval_data(ds, trigger, meta.get("target", 0) if trigger else None)
    student = create_model(cfg.student, num_classes=ds.num_classes, in_channels=ds.channels,
                           image_size=ds.image_size).to(device)
    ctx = KDContext(
        teacher=teacher.to(device), student=student, num_classes=ds.num_classes, channels=ds.channels,
        image_size=ds.image_size, mean=ds.mean, std=ds.std, device=device,
        dataset=ds if cfg.method == "clean" else None,
    )
    return Distiller(cfg, ctx, eval_data, out_dir, progress=progress)  # it writes config.yaml once its checks pass


def run_distill(cfg: DistillConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                branch_from: str | Path | None = None) -> dict[str, Any]:
    """Distill as `cfg` says into `out_dir` (continuing an interrupted run with `resume`; an SR run can
    branch from the same run without SR with `branch_from`)."""
    with torch_threads(cfg.threads):
        return build_distiller(cfg, out_dir, progress).run(resume=resume, branch_from=branch_from)


def recheck_run(run_dir: str | Path, rounds: int = 50) -> dict[str, Any]:
    """Re-make the first `rounds` rounds of the finished run in `run_dir` from its ``config.yaml`` with this
    version of the code (in a temporary folder) and compare its curve with the recorded one, number for
    number. A run this code does not reproduce on this machine was made by other code or on another CPU (the
    float kernels differ between processors, and a run's trajectory with them): its reuse is by
    configuration only.

    Returns ``{"reproduced", "rounds", "compared", "differences": [{"round", "field", "recorded", "now"}]}``
    (``compared``: the evaluated rounds compared; timings are not compared)."""
    import tempfile

    from abd.utils import read_jsonl

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "curve.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} holds no finished run (config.yaml and curve.jsonl)")
    cfg = DistillConfig.load(run_dir / "config.yaml")
    recorded = {r["round"]: r for r in read_jsonl(run_dir / "curve.jsonl") if "acc" in r and 0 < r["round"] <= rounds}
    if not recorded:
        raise ValueError(f"{run_dir}: no evaluation within the first {rounds} rounds to compare "
                         f"(it evaluated every {cfg.eval_every}); pass more rounds")
    with tempfile.TemporaryDirectory() as tmp, torch_threads(cfg.threads):
        build_distiller(cfg, tmp, progress=False).run(stop_after=max(recorded))
        now = {r["round"]: r for r in read_jsonl(Path(tmp) / "curve.jsonl") if "acc" in r}
    diffs = []
    for rnd, old in sorted(recorded.items()):
        new = now.get(rnd, {})
        for k, v in old.items():
            if k != "seconds" and isinstance(v, (int, float)) and new.get(k) != v:
                diffs.append({"round": rnd, "field": k, "recorded": v, "now": new.get(k)})
    return {"reproduced": not diffs, "rounds": max(recorded), "compared": len(recorded), "differences": diffs}


WHERE = ("device", "threads")  # where a run ran, not what it is: a run made on a GPU is reused on a CPU


def _effective(cfg: Any) -> Any:
    """A config as data: a run configuration read as this version reads it (one written before defenses
    became plug-ins migrated, the options of defenses the run does not use dropped, options a config
    written before they existed lacks filled in), without where it ran."""
    if not isinstance(cfg, dict):
        return cfg
    if "defense" in cfg:
        try:
            cfg = DistillConfig.model_validate(cfg).resolved().model_dump(mode="json")
        except ValueError:  # not readable by this version (e.g. a removed option): compared as written
            pass
    return {k: v for k, v in cfg.items() if k not in WHERE}


def same_config(run_dir: str | Path, cfg_yaml: str) -> bool:
    """Whether `run_dir` holds a run of exactly this configuration (compared as data, not as text, and
    ignoring the options of defenses the run does not use)."""
    c = Path(run_dir) / "config.yaml"
    return c.is_file() and _effective(yaml.safe_load(c.read_text())) == _effective(yaml.safe_load(cfg_yaml))


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields where configs `a` and `b` (as data) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in config_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


class ResumeError(ValueError):
    """``--resume`` cannot continue this folder's run as asked."""


def check_resume(cfg: DistillConfig, run_dir: str | Path, or_start: bool = False) -> dict[str, Any] | None:
    """Before anything is written: the metrics of `run_dir` when its run of this very config is finished
    (nothing to do); None when it may be resumed (or, with `or_start`, started). Raises ResumeError when the
    folder holds another run (naming the fields that differ) or nothing to resume."""
    run_dir, cfg_yaml = Path(run_dir), cfg.resolved().to_yaml()
    written = run_dir / "config.yaml"
    if written.is_file():
        diff = config_diff(_effective(yaml.safe_load(written.read_text())), _effective(yaml.safe_load(cfg_yaml)))
        if diff:
            raise ResumeError(f"{run_dir} holds another run (it differs in {', '.join(diff)}): resume it with its "
                              f"own options (--config {written}) or choose another --out")
    m = finished(run_dir, cfg_yaml)
    if m is not None:
        return m
    if not (run_dir / "checkpoint.pt").is_file() and not or_start:
        raise ResumeError(f"{run_dir} has no checkpoint.pt: nothing to resume (--resume-or-start starts the run "
                          "when there is none)")
    return None


def finished(run_dir: str | Path, cfg_yaml: str) -> dict[str, Any] | None:
    """The metrics of a finished run in `run_dir` with exactly this configuration, if any."""
    m = Path(run_dir) / "metrics.json"
    return json.loads(m.read_text()) if m.is_file() and same_config(run_dir, cfg_yaml) else None


def ensure_teacher(cfg: TeacherConfig, teacher_dir: str | Path) -> dict[str, Any]:
    """Train the teacher `cfg` describes into `teacher_dir`, or reuse it when it is already there."""
    from abd.attacks.teacher import train_teacher

    m = finished(teacher_dir, cfg.resolved().to_yaml())  # the teacher writes its resolved config
    return m if m is not None else train_teacher(cfg, teacher_dir, progress=False)


def run_or_reuse(cfg: DistillConfig, run_dir: str | Path, parent: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """The metrics of run `cfg` in `run_dir`: reused when finished, resumed when interrupted, else run
    (an SR run branches from `parent`, the same run without SR, when that saved its branch state)."""
    from abd.distill.engine import BRANCH_FILE, BranchError

    run_dir = Path(run_dir)
    m = finished(run_dir, cfg.resolved().to_yaml())
    if m is not None:
        return m
    state, diff = run_status(Job(cfg, run_dir))
    if state == "blocked":  # never overwrite another run
        raise ResumeError(f"{run_dir} holds another run (it differs in {', '.join(diff)}); it "
                          "is kept: choose another --out, or delete that folder to make the run again")
    resume = state == "resume"
    branch = parent if parent is not None and (Path(parent) / BRANCH_FILE).is_file() else None
    with torch_threads(cfg.threads):
        distiller = build_distiller(cfg, run_dir, progress)
        if branch is not None and not resume:
            try:
                distiller.check_branch(branch)
            except BranchError as e:  # a stale parent: run the whole thing instead
                warnings.warn(f"not branching from {branch}: {e}", stacklevel=2)
                branch = None
        return distiller.run(resume=resume, branch_from=branch)


@dataclass
class Job:
    """One run of a study: its config, its directory, and the no-SR run it may branch from."""

    cfg: DistillConfig
    run_dir: Path
    parent: Path | None = None
    label: str = ""

    @property
    def branch_parent(self) -> Path | None:
        """The parent this run really branches from: only a run with a late-starting defense has one."""
        return self.parent if self.cfg.branch_parent is not None else None


@dataclass(frozen=True)
class Arm:
    """One arm of a study: its folder name under ``seed<N>/``, KD method, defense and method options."""

    name: str
    method: str
    defense: str
    opts: dict[str, Any] = field(default_factory=dict)


def study_jobs(cfg: StudyConfig, out: Path, seeds: list[int],
               arms: list[Arm]) -> tuple[list[tuple[TeacherConfig, Path]], list[Job]]:
    """The teachers (config, folder ``out/seed<N>/teacher``) and the runs (folder ``out/seed<N>/<arm>``) of a
    study. A run whose defense starts late branches from the arm of the same method whose defense it names,
    which must be among `arms`."""
    teachers, jobs = [], []
    for seed in seeds:
        tdir = out / f"seed{seed}" / "teacher"
        teachers.append((cfg.teacher_config(seed), tdir))
        for arm in arms:
            dcfg = cfg.distill_config(str(tdir), arm.method, arm.defense, seed, arm.opts)
            parent = None
            if (bp := dcfg.branch_parent) is not None:
                src = next((a for a in arms if (a.method, a.defense) == (arm.method, bp)), None)
                if src is None:
                    raise ValueError(f"arm {arm.name} branches from {arm.method}+{bp}, which is not in the study")
                parent = out / f"seed{seed}" / src.name
            jobs.append(Job(dcfg, out / f"seed{seed}" / arm.name, parent, f"[seed {seed}] {arm.name}"))
    return teachers, jobs


def run_study(cfg: StudyConfig, out: Path, seeds: list[int], arms: list[Arm],
              progress: bool = True) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """The runner the demo and the grid share: every seed's teacher trained or reused, then every arm's run
    made or reused (:func:`study_jobs`), `cfg.workers` at a time. Returns the teachers' metrics and each
    arm's metrics, one per seed."""
    teacher_items, jobs = study_jobs(cfg, out, seeds, arms)
    teachers = []
    for seed, (tcfg, tdir) in zip(seeds, teacher_items):
        if progress:
            tqdm.write(f"[seed {seed}] {cfg.trigger} teacher")
        teachers.append(ensure_teacher(tcfg, tdir))
    per_arm: dict[str, list[dict[str, Any]]] = {a.name: [] for a in arms}
    for job, m in zip(jobs, run_jobs(jobs, cfg.workers, progress, cfg.engine, cfg.address)):
        per_arm[job.run_dir.name].append(m)
    return teachers, per_arm


def run_status(job: Job) -> tuple[str, list[str]]:
    """What running `job` would do, without doing it: ``reuse`` (its folder holds this finished run),
    ``resume`` (a checkpoint of this run), ``make`` (nothing of it there yet) or ``blocked`` (the folder
    holds another run, which is never overwritten), with the config fields that differ when blocked."""
    run_dir, cfg_yaml = Path(job.run_dir), job.cfg.resolved().to_yaml()
    if finished(run_dir, cfg_yaml) is not None:
        return "reuse", []
    written = run_dir / "config.yaml"
    held = (run_dir / "metrics.json").is_file() or (run_dir / "checkpoint.pt").is_file()
    if held and written.is_file() and not same_config(run_dir, cfg_yaml):
        return "blocked", config_diff(_effective(yaml.safe_load(written.read_text())),
                                      _effective(yaml.safe_load(cfg_yaml))) or ["its options"]
    return ("resume" if (run_dir / "checkpoint.pt").is_file() else "make"), []


PLAN_STATES = {"reuse": "reused", "resume": "resumed", "make": "to make", "blocked": "blocked"}


def plan(teachers: list[tuple[TeacherConfig, Path]], jobs: list[Job]) -> dict[str, Any]:
    """A study's plan (``--dry-run``): how many teachers are reused or to train, how many runs are reused,
    resumed, to make or blocked by another run in their folder, and every run that is not simply reused."""
    trained = [str(d) for c, d in teachers if finished(d, c.resolved().to_yaml()) is None]
    runs: dict[str, int] = dict.fromkeys(PLAN_STATES, 0)
    items = []
    for job in jobs:
        state, diff = run_status(job)
        runs[state] += 1
        if state != "reuse":
            items.append({"run": str(job.run_dir), "state": state, "differs": diff})
    return {"teachers": {"reuse": len(teachers) - len(trained), "train": len(trained)}, "to_train": trained,
            "runs": runs, "items": items}


def plan_lines(p: dict[str, Any]) -> list[str]:
    """A plan as text: one summary line, then one line per teacher to train and per run not reused."""
    t, r = p["teachers"], p["runs"]
    lines = [f"teachers: {t['reuse']} reused, {t['train']} to train; runs: "
             + ", ".join(f"{r[k]} {label}" for k, label in PLAN_STATES.items())]
    lines += [f"  train   {d}" for d in p["to_train"]]
    for it in p["items"]:
        why = f" (holds another run: differs in {', '.join(it['differs'])}; delete it to re-make)" \
            if it["state"] == "blocked" else ""
        lines.append(f"  {it['state']:7s} {it['run']}{why}")
    return lines


def with_parents(defenses: list[str], parent_of: Any) -> list[str]:
    """`defenses` with, before each, the defense of the run it branches from (``parent_of(d)``, None when
    it does not branch), each once."""
    out: list[str] = []
    for d in defenses:
        p = parent_of(d)
        for name in ([p] if p is not None else []) + [d]:
            if name not in out:
                out.append(name)
    return out


def _run_job(job: Job, progress: bool = False) -> dict[str, Any]:
    return run_or_reuse(job.cfg, job.run_dir, job.branch_parent, progress)


def _run_job_in(cwd: str, job: Job) -> dict[str, Any]:
    """`job` with `cwd` as the working directory (a Ray worker starts elsewhere; run folders are relative)."""
    os.chdir(cwd)
    return _run_job(job)


RAY_HINT = "--engine ray needs Ray: pip install 'abd[ray]' (or pip install ray)"


def ray_task_options(job: Job, max_retries: int = 3) -> dict[str, Any]:
    """What a run asks Ray for: one CPU (with its ``threads``), a GPU when it runs on CUDA, and retries when
    its worker dies (the retried run resumes from its checkpoint)."""
    gpus = 1 if str(job.cfg.device).startswith("cuda") else 0
    return {"num_cpus": max(1, job.cfg.threads), "num_gpus": gpus, "max_retries": max_retries}


def _run_ray(jobs: list[Job], waves: list[list[int]], workers: int, address: str | None,
             report: Any, progress: bool) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_HINT) from None
    started = not ray.is_initialized()
    if started:  # a local instance sized to `workers` CPUs, or the cluster at `address`
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    task = ray.remote(_run_job_in)
    cwd = os.getcwd()
    bar = tqdm(total=len(jobs), desc="runs (ray)", unit="run", disable=not progress)
    try:
        for wave in waves:
            refs = {task.options(**ray_task_options(jobs[i])).remote(cwd, jobs[i]): i for i in wave}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                report(refs[done[0]], ray.get(done[0]))
                bar.update(1)
    finally:
        bar.close()
        if started:
            ray.shutdown()


def run_jobs(jobs: list[Job], workers: int = 1, progress: bool = True, engine: str = "local",
             address: str | None = None) -> list[dict[str, Any]]:
    """The metrics of every job, in order: run (or reused, resumed), up to `workers` at a time in separate
    processes, or as Ray tasks (``engine="ray"``, on the cluster at `address` or a local instance). Each
    run seeds itself, so the numbers do not depend on `workers` or the engine. A job whose parent is
    another job's directory waits for it (it branches from the parent's saved state)."""
    results: dict[int, dict[str, Any]] = {}
    dirs = {Path(j.run_dir) for j in jobs}
    first = [i for i, j in enumerate(jobs) if j.branch_parent is None or Path(j.branch_parent) not in dirs]
    waves = [first, [i for i in range(len(jobs)) if i not in first]]

    def report(i: int, m: dict[str, Any]) -> None:
        results[i] = m
        if progress:
            nan = float("nan")
            tqdm.write(f"{jobs[i].label or jobs[i].run_dir}: ACC {100 * m['acc']:.1f}%  ASR "
                       f"{100 * m.get('asr', nan):.1f}%  target ACC {100 * m.get('target_acc', nan):.1f}%  "
                       f"{m['seconds']:.0f} s")

    if engine == "ray":
        _run_ray(jobs, waves, workers, address, report, progress)
        return [results[i] for i in range(len(jobs))]
    if workers <= 1:
        for wave in waves:
            for i in wave:
                if progress:
                    tqdm.write(f"{jobs[i].label or jobs[i].run_dir}")
                report(i, _run_job(jobs[i], progress))
        return [results[i] for i in range(len(jobs))]
    bar = tqdm(total=len(jobs), desc=f"runs ({workers} processes)", unit="run", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for wave in waves:  # the costliest runs (with SR, then SV) first, so that the processes end together
            order = sorted(wave, key=lambda i: -len(jobs[i].cfg.components))
            futures = {pool.submit(_run_job, jobs[i]): i for i in order}
            for f in as_completed(futures):
                report(futures[f], f.result())
                bar.update(1)
    bar.close()
    return [results[i] for i in range(len(jobs))]

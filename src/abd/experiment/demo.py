"""``abd demo``: the paper's core result on embedded data, end to end on a CPU.

Trains (or reuses) a BadNets-grid LeNet-5 teacher on mnist5k, then distills it into LeNet-5-half students
with clean KD, vanilla ZSKT, ZSKT+SV, ZSKT+SR and ZSKT+ABD (SV and SR), for one or more seeds, and writes
``results.json``, ``results.md`` and PNG figures. Arms run in parallel processes (``workers``). With an SR
phase that starts late (``sr.fraction < 1``, the paper's protocol) the SR arms branch from the state their
no-SR arm saved at the SR start round, so that arm is also the control for the SR phase.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field
from safetensors.torch import load_file
from tqdm.auto import tqdm

from abd.distill.config import StudyConfig
from abd.experiment.report import (
    aggregate,
    collapse_lines,
    markdown_table,
    plot_curves,
    plot_sample_grids,
    plot_trigger_vs_delta,
    protocol,
)
from abd.utils import read_jsonl, write_json

ARMS: dict[str, tuple[str, str]] = {  # arm -> (method, defense)
    "clean_kd": ("clean", "none"),
    "zskt": ("zskt", "none"),
    "zskt+sv": ("zskt", "sv"),
    "zskt+sr": ("zskt", "sr"),
    "zskt+abd": ("zskt", "abd"),
}
KEYS = ("acc", "asr", "ra", "target_acc", "seconds", "seconds_per_step")


class DemoConfig(StudyConfig):
    """The demo: one teacher per seed and the five distillation arms."""

    rounds: int = Field(1000, ge=1, description="ZSKT pseudo-batches (and clean-KD steps) per arm")
    arms: list[str] = Field(default_factory=lambda: list(ARMS))


def demo_arms(cfg: DemoConfig) -> list[Any]:
    """The demo's arms, each `cfg.rounds` long."""
    from abd.experiment.runs import Arm

    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown demo arm(s) {unknown}; known: {list(ARMS)}")
    return [Arm(a, *ARMS[a], {"rounds": cfg.rounds}) for a in cfg.arms]


def plan_demo(cfg: DemoConfig, out_dir: str | Path) -> dict[str, Any]:
    """What :func:`run_demo` would train, reuse, resume or make in `out_dir` (nothing is written)."""
    from abd.experiment.runs import plan, study_jobs

    return plan(*study_jobs(cfg, Path(out_dir), list(range(cfg.seeds)), demo_arms(cfg)))


def run_demo(cfg: DemoConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every seed and arm; write results.json, results.md and figures into `out_dir`."""
    from abd.experiment.runs import run_study

    arms = demo_arms(cfg)  # checks the arm names before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.yaml").write_text(cfg.to_yaml())
    t_start = time.perf_counter()
    proto = protocol(list(range(cfg.seeds)), what="the demo")
    if progress:
        tqdm.write(proto["text"])
    teachers, per_arm = run_study(cfg, out, list(range(cfg.seeds)), arms, progress)
    rows = {"teacher": aggregate(teachers, KEYS)}
    rows.update({a: aggregate(runs, KEYS) for a, runs in per_arm.items()})
    if "zskt+sr" in per_arm and "zskt" in per_arm:  # SR phase vs the vanilla control from the same point
        rows["zskt+sr"].update(aggregate([{"asr_at_sr_start": r.get("sr_start_metrics", {}).get("asr")}
                                          for r in per_arm["zskt+sr"]], ["asr_at_sr_start"]))
    if "zskt+sv" in per_arm and "zskt" in per_arm:
        ratio = [s["seconds_per_step"] / v["seconds_per_step"]
                 for s, v in zip(per_arm["zskt+sv"], per_arm["zskt"])]
        rows["zskt+sv"].update(aggregate([{"time_ratio_vs_vanilla": r} for r in ratio], ["time_ratio_vs_vanilla"]))
    results = {"config": cfg.model_dump(mode="json"), "arms": rows, "protocol": proto,
               "wall_seconds": time.perf_counter() - t_start,
               "collapse_warnings": collapse_lines(per_arm, list(range(cfg.seeds)))}
    write_json(out / "results.json", results)
    columns = [("acc", "ACC %", "%"), ("asr", "ASR %", "%"), ("target_acc", "target-class ACC %", "%"),
               ("seconds", "seconds", "s")]
    table = markdown_table(rows, columns)
    note = (f"\n{cfg.seeds} seed(s); ASR over n={teachers[0].get('asr_n')} triggered non-target test images; "
            f"mean ± std over seeds. Wall time {results['wall_seconds']:.0f} s.\n\n{proto['text']}\n")
    collapsed = results["collapse_warnings"]
    note += "".join(f"\n{line}" for line in collapsed) + ("\n" if collapsed else "")
    (out / "results.md").write_text(f"# abd demo: {cfg.trigger} teacher on {cfg.dataset}\n\n{table}{note}")
    _figures(cfg, out)
    return results


def _figures(cfg: DemoConfig, out: Path) -> None:
    """curves.png (ACC/ASR vs rounds), samples.png (vanilla vs vaccinated generator), sr_trigger.png."""
    from abd.attacks import create_trigger
    from abd.data import load_dataset

    s0 = out / "seed0"
    curves = {a: read_jsonl(s0 / a / "curve.jsonl") for a in cfg.arms if (s0 / a / "curve.jsonl").is_file()}
    plot_curves(curves, out / "curves.png", title=f"{cfg.trigger} teacher, seed 0")
    ds = load_dataset(cfg.dataset)
    grids = {}
    for arm, name in (("zskt", "vanilla ZSKT generator"), ("zskt+sv", "vaccinated (SV) generator")):
        f = s0 / arm / "artifacts.safetensors"
        if f.is_file():
            grids[name] = load_file(str(f))["samples"]
    if grids:
        plot_sample_grids(grids, ds.mean, ds.std, out / "samples.png")
    for arm in ("zskt+abd", "zskt+sr"):
        f = s0 / arm / "artifacts.safetensors"
        if f.is_file() and "sr_delta" in (art := load_file(str(f))):
            trig = create_trigger(cfg.trigger, image_size=ds.image_size, channels=ds.channels, seed=0)
            clean = ds.x_test[ds.y_test != 0][:1]
            plot_trigger_vs_delta(clean[0], trig.apply(clean)[0], art["sr_delta"], ds.std, out / "sr_trigger.png")
            break

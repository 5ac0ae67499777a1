"""The teacher zoo (``abd zoo``) and the detectors' benchmark on it (``abd audit-bench``).

The zoo is clean and backdoored teachers of two architectures, its recipe a YAML file in the package
(``zoo.yaml``). The benchmark runs every detector on every teacher and reports ROC-AUC, the true-positive
rate at 5 % false positives, the TrojAI cross-entropy of the detector's probability, how often the
suspected class is the real target on the backdoored teachers, and seconds per teacher.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from abd.attacks.config import TeacherConfig
from abd.utils import write_json

RECIPES = {"heldout": "zoo.yaml", "dev": "zoo_dev.yaml"}  # the packaged zoos, by split


def zoo_recipe(path: str | Path | None = None, split: str = "heldout") -> dict[str, TeacherConfig]:
    """The zoo's teachers by folder name, validated (default: the packaged recipe of `split`: ``zoo.yaml``,
    the held-out zoo, or ``zoo_dev.yaml``, the development zoo)."""
    if not path and split not in RECIPES:
        raise ValueError(f"unknown zoo split {split!r}; choices: {', '.join(RECIPES)}")
    text = Path(path).read_text() if path else resources.files("abd.audit").joinpath(RECIPES[split]).read_text()
    raw = yaml.safe_load(text)
    base = raw.get("defaults", {})
    return {name: TeacherConfig.model_validate({**base, **entry}) for name, entry in raw["teachers"].items()}


def _train(cfg: TeacherConfig, out: Path) -> dict[str, Any]:
    from abd.experiment.runs import ensure_teacher
    from abd.utils import torch_threads

    with torch_threads(1):
        return ensure_teacher(cfg, out)


def build_zoo(out_dir: str | Path, recipe: dict[str, TeacherConfig] | None = None, workers: int = 2,
              progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train (or reuse) every teacher of the recipe into ``out_dir/<name>``; their metrics by name, also
    written to ``zoo.json``."""
    recipe = recipe if recipe is not None else zoo_recipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(recipe), desc="zoo", unit="teacher", disable=not progress)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train, cfg, out / name): name for name, cfg in recipe.items()}
        for f in as_completed(futures):
            results[futures[f]] = f.result()
            bar.update(1)
    bar.close()
    rows = {name: {"model": recipe[name].model, "trigger": recipe[name].trigger, "target": recipe[name].target,
                   **{k: results[name].get(k) for k in ("acc", "asr", "target_acc")}} for name in recipe}
    write_json(out / "zoo.json", rows)
    return rows


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = 0.05) -> float:
    """The largest true-positive rate with a false-positive rate <= `fpr` (thresholds at the scores)."""
    best = 0.0
    neg, pos = scores[labels == 0], scores[labels == 1]
    for t in np.unique(scores):
        if (neg >= t).mean() <= fpr:
            best = max(best, float((pos >= t).mean()))
    return best


def cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """TrojAI's cross-entropy of the detector's probabilities, clipped to [1e-12, 1 - 1e-12]."""
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _bench_teacher(teacher: Path, todo: list[str], options: dict[str, dict[str, Any]], device: str,
                   min_asr: float) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The detectors `todo` on one teacher folder: its rows, or (no rows, why) when it is left out."""
    from abd.api import model_spec
    from abd.audit.combined import PARTS, combine
    from abd.audit.report import audit_model
    from abd.checkpoint import load_model
    from abd.utils import torch_threads

    model, meta = load_model(teacher, "teacher")
    metrics = json.loads((teacher / "metrics.json").read_text())
    poisoned = meta.get("trigger", "none") != "none"
    if poisoned and metrics.get("asr", 0) < min_asr:
        return [], {"teacher": teacher.name, "asr": metrics.get("asr")}
    spec = model_spec(meta["dataset"], meta.get("data_root"))

    rows, found = [], {}
    with torch_threads(1):
        for name in sorted(todo, key=lambda d: d == "combined"):  # the combined detector's parts first
            parts = {p: found[p] for p in PARTS if p in found and not options.get(p)}
            if name == "combined" and not options.get(name) and len(parts) == len(PARTS):
                r = combine(parts, spec.num_classes)  # the same verdict as running it, without re-running
            else:
                r = audit_model(model, spec, name, options.get(name), device=device, progress=False)
            found[name] = r
            rows.append({"teacher": teacher.name, "model": meta.get("arch", {}).get("name"), "detector": name,
                         "backdoored": int(poisoned), "target": meta.get("target") if poisoned else None,
                         "score": r.score, "probability": r.probability, "flagged": r.backdoored,
                         "suspect": r.target_class, "seconds": r.seconds})
    return rows, None


def audit_bench(zoo_dir: str | Path, detectors: list[str], out_dir: str | Path, device: str = "cpu",
                min_asr: float = 0.5, options: dict[str, dict[str, Any]] | None = None,
                progress: bool = True, split: str = "heldout", workers: int = 1) -> dict[str, Any]:
    """Every detector on every teacher of `zoo_dir`; ``audit_bench.json``, ``.md`` and ``roc.png`` in
    `out_dir`. A teacher is backdoored when it was poisoned and its backdoor works (ASR >= `min_asr`); a
    poisoned teacher whose backdoor did not take is left out and listed. Each teacher's rows are appended to
    ``audit_rows.jsonl`` as they come (`workers` teachers at a time, one thread each), and a detector's rows
    of an earlier (or interrupted) bench in `out_dir` are reused when its options were the same. `split`
    names the zoo's teacher seeds (``heldout``: no detector setting was chosen on them)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from abd.audit.base import DETECTORS

    zoo = Path(zoo_dir)
    teachers = sorted(p.parent for p in zoo.glob("*/teacher.json"))
    if not teachers:
        raise ValueError(f"{zoo} holds no teacher folders (run `abd zoo --out {zoo}` first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = options or {}
    resolved = {name: DETECTORS.get(name).Options.model_validate(options.get(name) or {}).model_dump()
                for name in detectors}
    done: dict[tuple[str, str], dict[str, Any]] = {}
    previous, journal = out / "audit_bench.json", out / "audit_rows.jsonl"
    if previous.is_file():
        old = json.loads(previous.read_text())
        done = {(r["teacher"], r["detector"]): r for r in old.get("rows", [])
                if old.get("options", {}).get(r["detector"]) == resolved.get(r["detector"])}
    if journal.is_file():
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            if r.pop("options", None) == resolved.get(r["detector"]):
                done[(r["teacher"], r["detector"])] = r
    todo = {t: [d for d in detectors if (t.name, d) not in done] for t in teachers}
    results: dict[Path, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
    bar = tqdm(total=len(teachers), desc="audit-bench", unit="teacher", disable=not progress)
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_bench_teacher, t, todo[t], options, device, min_asr): t for t in teachers}
        for f in as_completed(futures):
            t = futures[f]
            results[t] = f.result()
            with journal.open("a") as fh:
                for r in results[t][0]:
                    fh.write(json.dumps({**r, "options": resolved[r["detector"]]}) + "\n")
            bar.update(1)
    bar.close()
    rows, skipped = [], []
    for t in teachers:
        new, left_out = results[t]
        if left_out is not None:
            skipped.append(left_out)
            continue
        fresh = {r["detector"]: r for r in new}
        rows += [fresh[d] if d in fresh else done[(t.name, d)] for d in detectors]
    summary = {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for name in detectors:
        mine = [r for r in rows if r["detector"] == name]
        y = np.array([r["backdoored"] for r in mine])
        s = np.array([r["score"] for r in mine])
        prob = np.array([r["probability"] for r in mine])
        both = len(set(y.tolist())) == 2
        hits = [r["suspect"] == r["target"] for r in mine if r["backdoored"]]
        summary[name] = {
            "auc": float(roc_auc_score(y, s)) if both else math.nan,
            "tpr_at_5fpr": tpr_at_fpr(y, s) if both else math.nan,
            "ce": cross_entropy(y, prob),
            "target_acc": float(np.mean(hits)) if hits else math.nan,
            "accuracy": float(np.mean([r["flagged"] == bool(r["backdoored"]) for r in mine])),
            "seconds_per_teacher": float(np.mean([r["seconds"] for r in mine])),
            "n_backdoored": int(y.sum()), "n_clean": int(len(y) - y.sum()),
        }
        if both:
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, label=f"{name} (AUC {summary[name]['auc']:.2f})")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    plt.close(fig)
    result = {"detectors": summary, "split": split, "options": resolved, "rows": rows, "skipped": skipped,
              "min_asr": min_asr, "zoo": zoo.name}
    write_json(out / "audit_bench.json", result)
    (out / "audit_bench.md").write_text(bench_markdown(result))
    return result


def bench_markdown(result: dict[str, Any]) -> str:
    """The benchmark as Markdown: one row per detector, then one per teacher."""
    lines = ["# abd audit-bench", "",
             "| detector | ROC-AUC | TPR @ 5 % FPR | cross-entropy | accuracy at its threshold | target class right "
             "| s / teacher | backdoored / clean |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["detectors"].items():
        lines.append(f"| {name} | {s['auc']:.3f} | {100 * s['tpr_at_5fpr']:.0f} % | {s['ce']:.3f} | "
                     f"{100 * s['accuracy']:.0f} % | {100 * s['target_acc']:.0f} % | "
                     f"{s['seconds_per_teacher']:.1f} | {s['n_backdoored']} / {s['n_clean']} |")
    lines += ["", "| teacher | detector | backdoored (target) | score | flagged | suspect class |",
              "|---|---|---|---:|---|---:|"]
    for r in result["rows"]:
        truth = f"yes ({r['target']})" if r["backdoored"] else "no"
        lines.append(f"| {r['teacher']} | {r['detector']} | {truth} | {r['score']:.2f} | "
                     f"{'yes' if r['flagged'] else 'no'} | {r['suspect']} |")
    if result["skipped"]:
        lines += ["", f"Left out (poisoned, but the backdoor did not take: ASR < {100 * result['min_asr']:.0f} %): "
                  + ", ".join(f"{s['teacher']} (ASR {100 * s['asr']:.1f} %)" for s in result["skipped"])]
    return "\n".join(lines) + "\n"

"""``abd grid``: the method x defense grid on one poisoned teacher, over seeds (the KD-methods benchmark).

Every registered KD method runs vanilla and with each requested defense into the same student; SR runs
whose SR phase starts late branch from the same run without SR. Writes ``grid.json``, ``grid.md`` and
``grid.png`` (ACC against ASR, an arrow from each method's vanilla run to its defended runs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from abd.distill.config import StudyConfig
from abd.experiment.report import aggregate, collapse_lines, markdown_table, protocol
from abd.utils import write_json

GRID_KEYS = ("acc", "asr", "target_acc", "seconds", "seconds_per_step")


class GridConfig(StudyConfig):
    """Methods x defenses x seeds on one trigger, with the demo's teacher and student."""

    seeds: int = Field(3, ge=1)
    first_seed: int = Field(0, ge=0, description="run seeds first_seed .. first_seed + seeds - 1 (to split a "
                            "grid over processes sharing one output folder)")
    methods: list[str] = Field(default_factory=lambda: ["zskt", "dafl", "dfad", "deepinv", "cmi", "ood"])
    defenses: list[str] = Field(default_factory=lambda: ["none", "abd"], description="registered defenses or "
                                "'+'-joined compositions (`abd defenses` lists them)")
    rounds: dict[str, int] = Field(default_factory=dict, description="per-method rounds (default: the method's "
                                   "CPU default)")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from abd.distill import METHODS

        for name in v:
            METHODS.get(name)
        return v

    @field_validator("defenses")
    @classmethod
    def _defenses(cls, v: list[str]) -> list[str]:
        from abd.defense import components

        for name in v:
            components(name)
        return v


def grid_arms(cfg: GridConfig) -> list[Any]:
    """Every method with every defense, each run a late-starting defense branches from included."""
    from abd.experiment.runs import Arm, with_parents

    arms = []
    for method in cfg.methods:
        opts = {"rounds": cfg.rounds[method]} if method in cfg.rounds else {}
        parents = {d: cfg.distill_config("teacher", method, d, 0, opts).branch_parent for d in cfg.defenses}
        arms += [Arm(f"{method}+{d}", method, d, opts) for d in with_parents(cfg.defenses, parents.get)]
    return arms


def plan_grid(cfg: GridConfig, out_dir: str | Path) -> dict[str, Any]:
    """What :func:`run_grid` would train, reuse, resume or make in `out_dir` (nothing is written)."""
    from abd.experiment.runs import plan, study_jobs

    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    return plan(*study_jobs(cfg, Path(out_dir), seeds, grid_arms(cfg)))


def run_grid(cfg: GridConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) every seed x method x defense; write grid.json, grid.md and grid.png."""
    from abd.experiment.runs import run_study

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid_config.yaml").write_text(cfg.to_yaml())
    t_start = time.perf_counter()
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    proto = protocol(seeds, what="the grid")
    if progress:
        print(proto["text"], flush=True)
    teachers, runs = run_study(cfg, out, seeds, grid_arms(cfg), progress)
    rows = {"teacher": aggregate(teachers, GRID_KEYS)}
    rows.update({k: aggregate(v, GRID_KEYS) for k, v in runs.items()})
    results = {"config": cfg.model_dump(mode="json"), "rows": rows, "protocol": proto,
               "wall_seconds": time.perf_counter() - t_start}
    shown = {k: v for k, v in rows.items() if k == "teacher" or k.split("+", 1)[1] in cfg.defenses}
    columns = [("acc", "ACC %", "%"), ("asr", "ASR %", "%"), ("target_acc", "target-class ACC %", "%"),
               ("seconds_per_step", "s/round", "x")]
    note = (f"\n{cfg.seeds} seed(s), {cfg.trigger} {cfg.teacher_model} teacher on {cfg.dataset} -> "
            f"{cfg.student}; ASR over n={teachers[0].get('asr_n')} triggered non-target test images; "
            f"mean ± std over seeds. Wall time {results['wall_seconds']:.0f} s.\n\n{proto['text']}\n")
    winners = best_defenses(rows, cfg.methods, [d for d in cfg.defenses if d != "none"])
    results["best_defense"] = winners
    write_json(out / "grid.json", results)
    note += "".join(f"\n{line}" for line in winner_lines(winners)) + ("\n" if winners else "")
    collapsed = collapse_lines(runs, seeds)
    note += "".join(f"\n{line}" for line in collapsed) + ("\n" if collapsed else "")
    (out / "grid.md").write_text(f"# abd grid\n\n{markdown_table(shown, columns)}{note}")
    plot_grid(shown, cfg.methods, [d for d in cfg.defenses if d != "none"], out / "grid.png")
    return results


ACC_BUDGET = 0.03  # a defense "wins" a method when it has the lowest ASR among those costing <= 3 points of ACC


def best_defenses(rows: dict[str, dict[str, Any]], methods: list[str], defenses: list[str]) -> dict[str, Any]:
    """Per method: the defense with the lowest mean ASR among those whose mean ACC is at most 3 points below
    vanilla's (when vanilla collapsed, below 20 % ACC: below the best defended ACC) and whose ASR is below
    vanilla's, or None when none qualifies."""
    out: dict[str, Any] = {}
    for method in methods:
        van = rows.get(f"{method}+none")
        cands = [(d, rows[f"{method}+{d}"]) for d in defenses if f"{method}+{d}" in rows]
        if van is None or not cands:
            continue
        ref = van["acc"] if van["acc"] >= 0.2 else max(r["acc"] for _, r in cands)
        floor = ref - ACC_BUDGET
        ok = [(d, r) for d, r in cands if r["acc"] >= floor and r.get("asr") is not None
              and (van["acc"] < 0.2 or van.get("asr") is None or r["asr"] < van["asr"])]  # it must lower ASR
        if not ok:
            out[method] = None
            continue
        d, r = min(ok, key=lambda dr: dr[1]["asr"])
        out[method] = {"defense": d, "asr": r["asr"], "acc": r["acc"], "vanilla_asr": van.get("asr"),
                       "vanilla_acc": van["acc"]}
    return out


def winner_lines(winners: dict[str, Any]) -> list[str]:
    """One Markdown line per method: which defense has the lowest ASR at an ACC cost of at most 3 points."""
    lines = []
    for method, w in winners.items():
        if w is None:
            lines.append(f"- {method}: no defense lowers ASR while keeping ACC within 3 points of vanilla")
        elif w["vanilla_acc"] < 0.2:
            lines.append(f"- {method}: vanilla collapsed ({100 * w['vanilla_acc']:.1f} % ACC); lowest ASR within 3 "
                         f"points of the best defended ACC: **{w['defense']}** ({100 * w['asr']:.1f} % ASR, "
                         f"{100 * w['acc']:.1f} % ACC)")
        else:
            lines.append(f"- {method}: lowest ASR at <= 3 points of ACC cost: **{w['defense']}** "
                         f"({100 * w['asr']:.1f} % ASR, {100 * w['acc']:.1f} % ACC; vanilla "
                         f"{100 * (w['vanilla_asr'] or 0):.1f} / {100 * w['vanilla_acc']:.1f})")
    return lines


def plot_grid(rows: dict[str, dict[str, Any]], methods: list[str], defenses: list[str], path: str | Path) -> Path:
    """ACC against ASR per method: a dot for vanilla, an arrow to each defended run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        van = rows.get(f"{method}+none")
        c = colors(i % 10)
        if van is not None:
            ax.scatter(100 * van["asr"], 100 * van["acc"], color=c, marker="o", label=method)
        for d in defenses:
            r = rows.get(f"{method}+{d}")
            if r is None:
                continue
            ax.scatter(100 * r["asr"], 100 * r["acc"], color=c, marker="*", s=90)
            if van is not None:
                ax.annotate("", xy=(100 * r["asr"], 100 * r["acc"]), xytext=(100 * van["asr"], 100 * van["acc"]),
                            arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.6})
    ax.set_xlabel("ASR %  (lower is safer)")
    ax.set_ylabel("ACC %")
    ax.set_title(f"vanilla (o) -> {'/'.join(defenses) or 'defended'} (*)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""``abd table``: the paper's Table 1 in our setting, over held-out seeds.

For every seed and trigger (plus a clean teacher, ``none``): a teacher, clean KD, and each KD method vanilla
and with ABD; for ``paper_triggers`` also ZSKT vanilla and ZSKT+ABD with the method's paper preset (at the
CPU rows' rounds). Finished runs are reused. Writes ``table.json``, ``table.md`` (the main table beside the
paper's numbers, the paper-preset table and a per-seed table) and ``table.png``.

Run directories: ``seed{S}/{trigger}/teacher``, ``seed{S}/{trigger}/{method}+{defense}`` and
``seed{S}/{trigger}/zskt+{defense}@paper``. The teacher path written into each run's ``config.yaml`` is
relative to the working directory (run from the repository root for results that are committed).
In ``table.json`` every ACC/ASR, the paper's included, is a fraction; ``der`` too (DER in [0, 1]).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from abd.attacks.config import TeacherConfig
from abd.distill.config import StudyConfig
from abd.experiment.report import collapse_line, mean_std
from abd.metrics import collapse_level
from abd.utils import write_json

PAPER_METHOD = "zskt"  # the method of the paper's table (and of the paper-preset rows)
PAPER_PRESET_SUFFIX = "@paper"
ROW_DEFENSES = ("none", "abd")  # what the table shows (SV runs may run as parents of branched ABD runs)


@cache
def load_paper_table() -> dict[str, Any]:
    """The paper's table (packaged as ``paper_table.json``): ``source``, ``paper_names`` and
    ``rows``: our trigger name -> {teacher, zskt, zskt+abd, clean_kd} -> {acc, asr} in %."""
    return json.loads(resources.files("abd.experiment").joinpath("paper_table.json").read_text())


def paper_numbers(trigger: str, column: str) -> dict[str, float] | None:
    """The paper's ``{acc, asr}`` as fractions for `trigger` and `column` (teacher, zskt, zskt+abd, clean_kd),
    or None where the paper has no such row."""
    row = load_paper_table()["rows"].get(trigger, {}).get(column)
    return None if row is None else {"acc": row["acc"] / 100.0, "asr": row["asr"] / 100.0}


def default_triggers() -> list[str]:
    """Every registered trigger, in the paper's row order, then those it lacks (``smooth``)."""
    from abd.attacks import list_triggers

    paper = [t for t in load_paper_table()["rows"] if t in list_triggers()]
    return paper + [t for t in list_triggers() if t not in paper]


class TableConfig(StudyConfig):
    """The paper's table: triggers x (teacher, clean KD, methods vanilla and ABD) x seeds."""

    seeds: int = Field(3, ge=1)
    first_seed: int = Field(0, ge=0, description="run seeds first_seed .. first_seed + seeds - 1")
    trigger: str = Field("badnet_grid", description="unused by the table (see triggers)")
    triggers: list[str] = Field(default_factory=default_triggers, description="poisoned teachers' triggers")
    clean_teacher: bool = Field(True, description="also a clean teacher (trigger none; ASR of its eval trigger)")
    methods: list[str] = Field(default_factory=lambda: ["zskt", "cmi", "ood"])
    method_seeds: dict[str, int] = Field(default_factory=lambda: {"cmi": 1, "ood": 1},
                                         description="method -> N: the method runs on the first N seeds only")
    rounds: dict[str, int] = Field(default_factory=dict, description="per-method rounds, 'clean' for clean KD "
                                   "(default: the method's CPU default)")
    paper_triggers: list[str] = Field(default_factory=lambda: ["badnet_grid", "blend", "trojan_wm"],
                                      description="triggers (among `triggers`) that also get ZSKT vanilla and "
                                      "ZSKT+ABD with the paper preset, at the CPU rows' rounds")
    paper_seeds: int | None = Field(None, ge=1, description="the paper-preset rows run on the first N seeds only "
                                    "(None: all)")
    development_seeds: list[int] = Field(default_factory=lambda: [100, 101, 102],
                                         description="seeds the defaults were chosen on (recorded in the protocol)")
    teacher_epochs: int | None = Field(None, ge=1, description="teacher epochs (None: the teacher recipe's)")

    @field_validator("triggers", "paper_triggers")
    @classmethod
    def _triggers(cls, v: list[str]) -> list[str]:
        from abd.config import _check_registered

        for name in v:
            _check_registered("trigger", name)
        if len(set(v)) != len(v):
            raise ValueError(f"repeated trigger in {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from abd.distill import METHODS

        for name in v:
            METHODS.get(name)
        if "clean" in v:
            raise ValueError("clean KD is always in the table: leave 'clean' out of methods")
        return v

    @field_validator("method_seeds", "rounds")
    @classmethod
    def _method_keys(cls, v: dict[str, int]) -> dict[str, int]:
        from abd.distill import METHODS

        for name, n in v.items():
            METHODS.get(name)
            if n < 1:
                raise ValueError(f"{name}: expected a positive number, got {n}")
        return v

    @model_validator(mode="after")
    def _something_to_run(self) -> TableConfig:
        if not self.triggers and not self.clean_teacher:
            raise ValueError("no teachers: give triggers or keep clean_teacher")
        return self

    @property
    def seed_list(self) -> list[int]:
        """The seeds this table runs."""
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def teacher_triggers(self) -> list[str]:
        """``none`` (with ``clean_teacher``) then the poisoned teachers' triggers."""
        return (["none"] if self.clean_teacher else []) + list(self.triggers)

    def method_seed_list(self, method: str) -> list[int]:
        """The seeds `method` runs on (its first ``method_seeds[method]``, else all)."""
        return self.seed_list[: self.method_seeds.get(method, self.seeds)]

    def teacher_for(self, seed: int, trigger: str) -> TeacherConfig:
        """The teacher of `seed` poisoned with `trigger` (``none``: clean)."""
        base = self.teacher_config(seed).model_dump()
        extra = {"epochs": self.teacher_epochs} if self.teacher_epochs is not None else {}
        return TeacherConfig(**{**base, "trigger": trigger, **extra})

    def method_rounds(self, method: str) -> int:
        """Rounds of `method`'s CPU rows: ``rounds[method]``, else the method's CPU default."""
        from abd.distill.base import resolve_options

        return self.rounds.get(method, resolve_options(method).rounds)


def config_record(cfg: TableConfig) -> dict[str, Any]:
    """The config as written to ``table_config.yaml`` and ``table.json``: every field (the defense options only
    as given, so that each method keeps its defenses' own defaults when the file is read back; each run's
    config.yaml spells them out)."""
    return cfg.model_dump(mode="json")


def protocol_line(cfg: TableConfig) -> str:
    """Which seeds chose the defaults and whether the seeds run here are held out."""
    from abd.experiment.report import protocol

    return protocol(cfg.seed_list, cfg.development_seeds, "this table")["text"]


def _ensure_teacher(item: tuple[TeacherConfig, Path]) -> dict[str, Any]:
    from abd.experiment.runs import ensure_teacher

    return ensure_teacher(*item)


def ensure_teachers(items: list[tuple[TeacherConfig, Path]], workers: int = 1,
                    progress: bool = True) -> list[dict[str, Any]]:
    """The metrics of every (config, directory) teacher, trained where not finished, up to `workers` at a
    time in separate processes."""
    from abd.experiment.runs import finished

    out: list[dict[str, Any] | None] = [finished(d, c.resolved().to_yaml()) for c, d in items]
    todo = [i for i, m in enumerate(out) if m is None]
    if progress and todo:
        tqdm.write(f"training {len(todo)} teacher(s), {min(workers, len(todo))} at a time")
    if workers <= 1 or len(todo) <= 1:
        for i in todo:
            out[i] = _ensure_teacher(items[i])
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, m in zip(todo, pool.map(_ensure_teacher, [items[i] for i in todo])):
                out[i] = m
    return out  # type: ignore[return-value]


def _row_name(method: str, defense: str, preset: str | None) -> str:
    """A run's label: ``teacher``, ``clean``, ``zskt+abd`` or ``zskt+abd@paper``."""
    if method in ("teacher", "clean"):
        return method
    return f"{method}+{defense}" + (PAPER_PRESET_SUFFIX if preset == "paper" else "")


def _paper_column(method: str, defense: str) -> str | None:
    if method == "teacher":
        return "teacher"
    if method == "clean":
        return "clean_kd"
    if method == PAPER_METHOD:
        return {"none": "zskt", "abd": "zskt+abd"}.get(defense)
    return None


def make_row(trigger: str, method: str, defense: str, preset: str | None,
             per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One row of ``table.json`` from the metrics of its runs, seed -> metrics (``der`` filled in later)."""
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]
    row: dict[str, Any] = {"trigger": trigger, "method": method, "defense": defense, "preset": preset,
                           "seeds": seeds}
    for key in ("acc", "asr", "target_acc"):
        vals = [r.get(key) for r in runs]
        known = [v for v in vals if v is not None]
        row[key], row[f"{key}_std"] = mean_std(known) if known else (None, None)
        row[f"{key}_per_seed"] = vals
    row["collapsed_per_seed"] = [r.get("collapsed") for r in runs]
    # derived from the share, so that runs recorded before the partial flag existed carry it too
    row["partial_collapse_per_seed"] = [collapse_level(r.get("pred_max_share")) == "partial" for r in runs]
    row["pred_max_share_per_seed"] = [r.get("pred_max_share") for r in runs]
    row["pred_max_class_per_seed"] = [r.get("pred_max_class") for r in runs]
    row["seconds"] = sum(float(r.get("seconds") or 0.0) for r in runs)
    row["der"] = None
    col = _paper_column(method, defense)
    row["paper"] = paper_numbers(trigger, col) if col else None
    return row


def add_der(rows: list[dict[str, Any]]) -> None:
    """Set each defended row's ``der``: DER of its mean ACC/ASR against the same trigger/method/preset's
    vanilla mean (None where either lacks a number)."""
    from abd.metrics import der

    vanilla = {(r["trigger"], r["method"], r["preset"]): r for r in rows if r["defense"] == "none"}
    for r in rows:
        v = vanilla.get((r["trigger"], r["method"], r["preset"]))
        if r["defense"] == "none" or r["method"] in ("teacher", "clean") or v is None:
            continue
        if None not in (v["acc"], v["asr"], r["acc"], r["asr"]):
            r["der"] = der(v["acc"], v["asr"], r["acc"], r["asr"])


def collapse_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One line per collapsed or partially collapsed run (seed, trigger, run, the class it answers and on
    what share)."""
    lines = []
    for r in rows:
        for seed, c, p, share, cls in zip(r["seeds"], r["collapsed_per_seed"], r["partial_collapse_per_seed"],
                                          r["pred_max_share_per_seed"], r["pred_max_class_per_seed"]):
            if c or p:
                who = f"seed {seed} trigger {r['trigger']} {_row_name(r['method'], r['defense'], r['preset'])}"
                lines.append(collapse_line("collapsed" if c else "partial", who, cls, share))
    return lines


def table_jobs(cfg: TableConfig, out: Path) -> tuple[list[tuple[TeacherConfig, Path]], list[Any],
                                                     list[tuple[str, str, str, str, int]]]:
    """The table's teachers (config, folder), its runs and each run's (trigger, method, defense, preset,
    seed), in the order they run."""
    from abd.experiment.demo import ARMS
    from abd.experiment.runs import Job

    seeds, groups = cfg.seed_list, cfg.teacher_triggers
    paper_triggers = [t for t in cfg.triggers if t in cfg.paper_triggers]
    defenses = list(ROW_DEFENSES)
    tdirs = {(s, t): out / f"seed{s}" / t / "teacher" for s in seeds for t in groups}
    jobs: list[Job] = []
    tags: list[tuple[str, str, str, str, int]] = []  # (trigger, method, defense, preset, seed)

    def add(seed: int, trigger: str, method: str, defense: str, preset: str, opts: dict[str, Any]) -> None:
        # the teacher path is written into the run's config.yaml: relative, so that results can be committed
        teacher = os.path.relpath(tdirs[seed, trigger])
        dcfg = cfg.distill_config(teacher, method, defense, seed, opts)
        if preset == "paper":
            dcfg = dcfg.model_copy(update={"preset": "paper"})
        suffix = PAPER_PRESET_SUFFIX if preset == "paper" else ""
        run_dir = out / f"seed{seed}" / trigger / f"{method}+{defense}{suffix}"
        bp = dcfg.branch_parent
        parent = run_dir.parent / f"{method}+{bp}{suffix}" if bp is not None else None
        jobs.append(Job(dcfg, run_dir, parent, f"[seed {seed}] {trigger} {method}+{defense}{suffix}"))
        tags.append((trigger, method, defense, preset, seed))

    clean_method, clean_defense = ARMS["clean_kd"]  # the demo's clean KD arm
    # method-major, the paper's method first: an interrupted table has whole columns, not whole seeds
    for seed in seeds:
        for trigger in groups:
            add(seed, trigger, clean_method, clean_defense, "cpu", {"rounds": cfg.method_rounds(clean_method)})
    for method in cfg.methods:
        for seed in cfg.method_seed_list(method):
            for trigger in groups:
                for defense in defenses:
                    add(seed, trigger, method, defense, "cpu", {"rounds": cfg.method_rounds(method)})
    for seed in seeds[: cfg.paper_seeds or len(seeds)]:
        for trigger in paper_triggers:
            for defense in defenses:  # the paper preset's rounds (80000) are not the CPU rows'
                add(seed, trigger, PAPER_METHOD, defense, "paper", {"rounds": cfg.method_rounds(PAPER_METHOD)})

    return [(cfg.teacher_for(s, t), d) for (s, t), d in tdirs.items()], jobs, tags


def plan_table(cfg: TableConfig, out_dir: str | Path) -> dict[str, Any]:
    """What :func:`run_table` would train, reuse, resume or make in `out_dir` (nothing is written)."""
    from abd.experiment.runs import plan

    teachers, jobs, _ = table_jobs(cfg, Path(out_dir))
    return plan(teachers, jobs)


def run_table(cfg: TableConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) every seed x trigger x run of the table; write table.json, table.md and table.png."""
    from abd.experiment.runs import run_jobs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table_config.yaml").write_text(yaml.safe_dump(config_record(cfg), sort_keys=False))
    if progress:
        print(protocol_line(cfg), flush=True)
    t_start = time.perf_counter()
    seeds, groups = cfg.seed_list, cfg.teacher_triggers
    teacher_items, jobs, tags = table_jobs(cfg, out)
    keys = [(s, t) for s in seeds for t in groups]
    teacher_metrics = dict(zip(keys, ensure_teachers(teacher_items, cfg.workers, progress)))

    metrics = run_jobs(jobs, cfg.workers, progress, cfg.engine, cfg.address)
    per_row: dict[tuple[str, str, str, str | None], dict[int, dict[str, Any]]] = {}
    for (s, t), m in teacher_metrics.items():
        per_row.setdefault((t, "teacher", "none", None), {})[s] = m
    for (trigger, method, defense, preset, seed), m in zip(tags, metrics):
        if defense in ROW_DEFENSES:  # SV runs are only the parents of branched ABD runs
            per_row.setdefault((trigger, method, defense, preset), {})[seed] = m
    rows = [make_row(*key, runs) for key, runs in per_row.items()]
    order = {t: i for i, t in enumerate(groups)}
    kind = {"teacher": 0, "clean": 1, **{m: 2 + i for i, m in enumerate(cfg.methods)}}
    rows.sort(key=lambda r: (order[r["trigger"]], r["preset"] == "paper", kind.get(r["method"], 99),
                             ROW_DEFENSES.index(r["defense"])))
    add_der(rows)
    warnings = collapse_warnings(rows)
    heldout = [s for s in seeds if s not in cfg.development_seeds]
    results = {
        "rows": rows,
        "protocol": {"development_seeds": list(cfg.development_seeds), "heldout_seeds": heldout,
                     "seeds": seeds, "text": protocol_line(cfg)},
        "collapse_warnings": warnings,
        "paper_source": load_paper_table()["source"],
        "config": config_record(cfg),
        "run_seconds": sum(float(m.get("seconds") or 0.0) for m in [*teacher_metrics.values(), *metrics]),
        "wall_seconds": time.perf_counter() - t_start,
    }
    write_json(out / "table.json", results)
    (out / "table.md").write_text(markdown(results))
    plot_table(rows, cfg.methods, out / "table.png")
    if progress:
        for line in warnings:
            print(line, flush=True)
    return results


# ---------------------------------------------------------------------------------------------- Markdown
def _pct(v: float | None, sd: float | None, n: int) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" + (f" ± {100 * sd:.1f}" if n > 1 and sd is not None else "")


def _collapsed_mark(row: dict[str, Any]) -> str:
    n = len(row["seeds"])
    k = sum(bool(c) for c in row["collapsed_per_seed"])
    p = sum(bool(c) for c in row["partial_collapse_per_seed"])
    marks = [f"collapsed {k}/{n}"] * bool(k) + [f"partial {p}/{n}"] * bool(p)
    return f" ({', '.join(marks)})" if marks else ""


def run_cell(row: dict[str, Any] | None) -> str:
    """``ACC / ASR`` in %, mean ± std over seeds, with a collapse marker."""
    if row is None:
        return "-"
    n = len(row["seeds"])
    return f"{_pct(row['acc'], row['acc_std'], n)} / {_pct(row['asr'], row['asr_std'], n)}{_collapsed_mark(row)}"


def _paper_cell(p: dict[str, float] | None) -> str:
    return "-" if p is None else f"{100 * p['acc']:.1f} / {100 * p['asr']:.1f}"


def _der_cell(row: dict[str, Any] | None) -> str:
    return "-" if row is None or row.get("der") is None else f"{100 * row['der']:.1f}"


def _trigger_label(trigger: str) -> str:
    eval_trigger = TeacherConfig.model_fields["eval_trigger"].default
    return f"none (clean teacher; ASR of {eval_trigger})" if trigger == "none" else trigger


def markdown(results: dict[str, Any]) -> str:
    """``table.md``: the main table, the paper-preset table and the per-seed table, with the protocol."""
    rows, cfg = results["rows"], results["config"]
    by = {(r["trigger"], r["method"], r["defense"], r["preset"]): r for r in rows}
    triggers = list(dict.fromkeys(r["trigger"] for r in rows))
    methods = list(cfg["methods"])
    paper = load_paper_table()
    seeds = results["protocol"]["seeds"]
    lines = [
        "# abd table: the paper's Table 1 in our setting",
        "",
        f"{results['protocol']['text']}.",
        f"{cfg['dataset']}, {cfg['teacher_model']} teachers -> {cfg['student']} students; target class 0. "
        "Cells: ACC / ASR in %, mean ± std over seeds (population std); "
        + "; ".join(f"{m}: seeds {cfg_seeds(cfg, m)}" for m in ["clean", *methods])
        + (f"; {PAPER_METHOD}@paper: seeds {cfg_seeds(cfg, 'paper')}" if cfg.get("paper_triggers") else "") + ". "
        "DER (BackdoorBench, %): (max(0, ΔASR) - max(0, ΔACC) + 1) / 2 of the ABD mean against the vanilla "
        "mean (50: no change). \"(collapsed k/n)\": k of n seeds answer one class on >= 90 % of the clean test "
        "set; \"(partial k/n)\": on 40-90 % (a partial collapse). "
        f"Wall time {results['wall_seconds']:.0f} s (the runs' own compute: {results['run_seconds']:.0f} s).",
        "",
        f"Paper columns: {paper['source']}",
        "",
    ]
    head = ["trigger", "teacher", "clean KD"]
    for m in methods:
        head += [m, f"{m}+ABD", f"DER {m}"]
        if m == PAPER_METHOD:
            head += ["paper ZSKT", "paper ZSKT+ABD"]
    if PAPER_METHOD not in methods:
        head += ["paper ZSKT", "paper ZSKT+ABD"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "|".join("---:" for _ in head[1:]) + "|"]
    for t in triggers:
        cells = [_trigger_label(t), run_cell(by.get((t, "teacher", "none", None))),
                 run_cell(by.get((t, "clean", "none", "cpu")))]
        paper_cells = [_paper_cell(paper_numbers(t, "zskt")), _paper_cell(paper_numbers(t, "zskt+abd"))]
        for m in methods:
            abd = by.get((t, m, "abd", "cpu"))
            cells += [run_cell(by.get((t, m, "none", "cpu"))), run_cell(abd), _der_cell(abd)]
            if m == PAPER_METHOD:
                cells += paper_cells
        if PAPER_METHOD not in methods:
            cells += paper_cells
        lines.append("| " + " | ".join(cells) + " |")

    preset_triggers = [t for t in triggers if (t, PAPER_METHOD, "none", "paper") in by]
    if preset_triggers:
        lines += ["", "## paper preset", "",
                  "ZSKT with its paper preset (the published ZSKT generator, width, batch, kd_steps, at_beta; "
                  f"the paper's SV and SR) at the CPU rows' rounds ({cfg_rounds(cfg, PAPER_METHOD)}), vanilla and "
                  "ABD; the CPU rows and the paper beside them.", "",
                  "| trigger | zskt@paper | zskt+ABD@paper | DER | zskt (cpu) | zskt+ABD (cpu) | paper ZSKT | "
                  "paper ZSKT+ABD |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for t in preset_triggers:
            abd = by.get((t, PAPER_METHOD, "abd", "paper"))
            cells = [t, run_cell(by.get((t, PAPER_METHOD, "none", "paper"))), run_cell(abd), _der_cell(abd),
                     run_cell(by.get((t, PAPER_METHOD, "none", "cpu"))),
                     run_cell(by.get((t, PAPER_METHOD, "abd", "cpu"))),
                     _paper_cell(paper_numbers(t, "zskt")), _paper_cell(paper_numbers(t, "zskt+abd"))]
            lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## per seed", "",
              "Cells: ACC / ASR / target-class ACC in %; \"C\": collapsed; \"P\": partially collapsed.", "",
              "| trigger | run | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|" + "|".join("---:" for _ in seeds) + "|"]
    for r in rows:
        per = {s: i for i, s in enumerate(r["seeds"])}
        cells = []
        for s in seeds:
            if s not in per:
                cells.append("-")
                continue
            i = per[s]
            vals = [r["acc_per_seed"][i], r["asr_per_seed"][i], r["target_acc_per_seed"][i]]
            txt = " / ".join("-" if v is None else f"{100 * v:.1f}" for v in vals)
            part = r["partial_collapse_per_seed"][i]
            cells.append(txt + (" C" if r["collapsed_per_seed"][i] else " P" if part else ""))
        lines.append(f"| {r['trigger']} | {_row_name(r['method'], r['defense'], r['preset'])} | "
                     + " | ".join(cells) + " |")
    if results.get("collapse_warnings"):
        lines += ["", *(f"- {w}" for w in results["collapse_warnings"])]
    return "\n".join(lines) + "\n"


def cfg_seeds(cfg: dict[str, Any], method: str) -> list[int]:
    """The seeds `method` ran on, from a dumped TableConfig (clean KD: all; ``paper``: the paper-preset rows)."""
    seeds = list(range(cfg["first_seed"], cfg["first_seed"] + cfg["seeds"]))
    if method == "paper":
        return seeds[: cfg.get("paper_seeds") or len(seeds)]
    return seeds if method == "clean" else seeds[: cfg["method_seeds"].get(method, cfg["seeds"])]


def cfg_rounds(cfg: dict[str, Any], method: str) -> int:
    """The rounds of `method`'s CPU rows, from a dumped TableConfig."""
    from abd.distill.base import resolve_options

    return cfg["rounds"].get(method, resolve_options(method).rounds)


# ---------------------------------------------------------------------------------------------- figure
def plot_table(rows: list[dict[str, Any]], methods: list[str], path: str | Path) -> Path:
    """Per trigger, grouped bars of ASR (top) and ACC (bottom): each method vanilla (light) and ABD (dark),
    the paper-preset ZSKT pair where run; a black tick marks the teacher; collapsed runs are hatched (xx),
    partially collapsed ones dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    by = {(r["trigger"], r["method"], r["defense"], r["preset"]): r for r in rows}
    triggers = list(dict.fromkeys(r["trigger"] for r in rows))
    series = [(m, "cpu") for m in ["clean", *methods]]
    if any(r["preset"] == "paper" for r in rows):
        series.append((PAPER_METHOD, "paper"))
    bars = [(m, p, d) for m, p in series for d in (("none",) if m == "clean" else ROW_DEFENSES)]
    width = 0.85 / len(bars)
    x = np.arange(len(triggers))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 1.1 * len(triggers) + 3), 7.5), sharex=True)
    for ax, key, name in zip(axes, ("asr", "acc"), ("ASR %  (lower is safer)", "ACC %")):
        for j, (m, p, d) in enumerate(bars):
            c = colors(series.index((m, p)) % 10)
            for i, t in enumerate(triggers):
                r = by.get((t, m, d, p))
                if r is None or r[key] is None:
                    continue
                hatch = "xx" if any(r["collapsed_per_seed"]) else \
                    ".." if any(r["partial_collapse_per_seed"]) else None
                ax.bar(x[i] - 0.425 + (j + 0.5) * width, 100 * r[key], width, yerr=100 * (r[f"{key}_std"] or 0),
                       color=c, alpha=0.45 if d == "none" else 1.0, hatch=hatch, edgecolor="k" if hatch else c,
                       linewidth=0.4, error_kw={"elinewidth": 0.6, "capsize": 1.5})
            for i, t in enumerate(triggers):
                tr = by.get((t, "teacher", "none", None))
                if tr is not None and tr[key] is not None and j == 0:
                    ax.hlines(100 * tr[key], x[i] - 0.45, x[i] + 0.45, color="k", linewidth=1.2)
        ax.set_ylabel(name)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x, [t if t != "none" else "none (clean)" for t in triggers], rotation=30, ha="right")
    handles = [Patch(color=colors(k % 10), label=f"{m}{PAPER_PRESET_SUFFIX if p == 'paper' else ''}")
               for k, (m, p) in enumerate(series)]
    handles += [Patch(facecolor="grey", alpha=0.45, label="vanilla"), Patch(facecolor="grey", label="ABD"),
                Patch(facecolor="white", edgecolor="k", hatch="xx", label="collapsed (some seed)"),
                Patch(facecolor="white", edgecolor="k", hatch="..", label="partial collapse (some seed)"),
                plt.Line2D([], [], color="k", label="teacher")]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title("vanilla (light) vs ABD (dark), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""The teacher table: one teacher per trigger (plus a clean one), measured and written as Markdown + JSON."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from abd.attacks.config import TeacherConfig
from abd.utils import write_json

COLUMNS = ("trigger", "poison_rate", "cutout", "n_poison", "acc", "asr", "ra", "target_acc", "asr_n",
           "seconds")


def all_teacher_triggers() -> list[str]:
    """``none`` (the clean teacher) followed by every registered trigger."""
    from abd.attacks import list_triggers

    return ["none", *list_triggers()]


def teacher_table(
    out_dir: str | Path,
    base: TeacherConfig | None = None,
    triggers: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one teacher per trigger into ``out_dir/<trigger>`` and write ``teacher_table.{md,json}``.

    ``base`` supplies every option but the trigger and its options (default: the default recipe; its
    ``poison_rate``/``cutout``, if set, apply to every trigger); a clean teacher reports
    the ASR of ``base.eval_trigger``. ``progress`` prints a line per teacher. Returns the JSON document
    (rows, base config, total seconds).
    """
    from abd.attacks.teacher import train_teacher

    out = Path(out_dir)
    base = base or TeacherConfig()
    names = list(triggers) if triggers is not None else all_teacher_triggers()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in names:
        # options belong to one trigger; poison rate and cutout left at None take each trigger's default
        cfg = TeacherConfig.load(None, **{**base.model_dump(), "trigger": name, "trigger_options": {}})
        m = train_teacher(cfg, out / name, progress=False)
        resolved = cfg.resolved()
        row = {"trigger": name, "poison_rate": resolved.poison_rate, "cutout": resolved.cutout,
               **{k: m.get(k) for k in COLUMNS[3:]}}
        rows.append(row)
        if progress:
            print(format_row(row), flush=True)
    doc = {
        "rows": rows,
        "total_seconds": time.perf_counter() - t0,
        "config": base.model_dump(mode="json", exclude={"trigger", "trigger_options"}),
    }
    write_json(out / "teacher_table.json", doc)
    (out / "teacher_table.md").write_text(markdown_table(doc))
    return doc


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_row(row: dict[str, Any]) -> str:
    """One human line per teacher."""
    return (f"{row['trigger']:12s} ACC {_pct(row['acc'])}%  ASR {_pct(row.get('asr'))}%  "
            f"RA {_pct(row.get('ra'))}%  target ACC {_pct(row.get('target_acc'))}%  {row['seconds']:.1f} s")


def markdown_table(doc: dict[str, Any]) -> str:
    """The table as Markdown (percentages), with the recipe and the total wall time underneath."""
    cfg = doc["config"]
    lines = [
        "| trigger | poison rate (n) | cutout | ACC % | ASR % | RA % | target-class ACC % | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        name = r["trigger"] if r["trigger"] != "none" else f"none (clean; ASR of {cfg['eval_trigger']})"
        lines.append(
            f"| {name} | {r['poison_rate']:g} ({r['n_poison']}) | {r['cutout']:g} | {_pct(r['acc'])} | "
            f"{_pct(r.get('asr'))} | {_pct(r.get('ra'))} | {_pct(r.get('target_acc'))} | {r['seconds']:.1f} |"
        )
    asr_n = ", ".join(str(n) for n in sorted({r.get("asr_n") for r in doc["rows"]}, key=str))
    recipe = (f"{cfg['dataset']}, {cfg['model']}, target {cfg['target']}, {cfg['epochs']} epochs, "
              f"seed {cfg['seed']}")
    lines += ["", f"{recipe}; ASR/RA over {asr_n} triggered non-target test images (n). "
              f"Total wall time {doc['total_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"

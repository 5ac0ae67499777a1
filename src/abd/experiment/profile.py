"""``abd profile``: where a round's time goes, per defense, measured one after the other in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abd.distill.config import DistillConfig
from abd.distill.engine import PROFILE_PARTS
from abd.experiment.runs import run_distill
from abd.utils import write_json


def profile_defenses(teacher: str | Path, method: str, defenses: list[str], rounds: int, out_dir: str | Path,
                     seed: int = 0, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run `method` with each defense for `rounds` rounds (one after the other, in this process) and
    return, per defense, milliseconds per round for each part of the profile, the total, and its ratio to
    the first defense's total (put ``none`` first for ratios to vanilla)."""
    out = Path(out_dir)
    rows: dict[str, Any] = {}
    for d in defenses:
        cfg = DistillConfig(teacher=str(teacher), method=method, defense=d, seed=seed, device=device,
                            method_options={"rounds": rounds}, eval_every=rounds, checkpoint_every=rounds)
        m = run_distill(cfg, out / d.replace("+", "_"), progress=progress)
        per = {k: 1000 * v / rounds for k, v in m["profile"].items()}
        rows[d] = {**per, "total": 1000 * m["seconds"] / rounds}
    base = next(iter(rows.values()))["total"]
    for r in rows.values():
        r["ratio"] = r["total"] / base
    result = {"method": method, "rounds": rounds, "teacher": str(teacher), "ms_per_round": rows}
    write_json(out / "profile.json", result)
    (out / "profile.md").write_text(profile_markdown(result))
    return result


def profile_markdown(result: dict[str, Any]) -> str:
    """The profile as a Markdown table: ms per round per part, the total and the ratio to the first row."""
    parts = [*PROFILE_PARTS, "other"]
    head = "| defense | " + " | ".join(parts) + " | total | ratio |"
    lines = [f"# abd profile: {result['method']}, {result['rounds']} rounds (ms per round)", "", head,
             "|---" * (len(parts) + 3) + "|"]
    for d, r in result["ms_per_round"].items():
        lines.append(f"| {d} | " + " | ".join(f"{r[p]:.1f}" for p in parts) + f" | {r['total']:.1f} | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"

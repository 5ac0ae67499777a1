"""``abd bench``: run the demo and check its results against the expected targets (kept as data)."""

from __future__ import annotations

import operator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from abd.experiment.demo import DemoConfig, run_demo
from abd.utils import write_json

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def load_targets(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The demo's checks from ``targets.yaml`` (or a user file)."""
    text = Path(path).read_text() if path else (resources.files("abd.experiment") / "targets.yaml").read_text()
    return list(yaml.safe_load(text)["demo"])


def check_targets(results: dict[str, Any], targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate each target on demo ``results``; returns rows with measured, wanted and ``ok``."""
    arms = dict(results["arms"])
    arms["all"] = {"seconds_per_seed": results["wall_seconds"] / max(1, results["config"]["seeds"])}
    rows = []
    for t in targets:
        measured = arms.get(t["arm"], {}).get(t["metric"])
        if "ref" in t:
            ref_arm, ref_metric = t["ref"].split(".", 1)
            ref = arms.get(ref_arm, {}).get(ref_metric)
            wanted = None if ref is None else ref + t.get("offset", 0.0)
            label = f"{t['arm']}.{t['metric']} {t['op']} {t['ref']}{t.get('offset', 0.0):+g}"
        else:
            wanted = t["value"]
            label = f"{t['arm']}.{t['metric']} {t['op']} {wanted}"
        ok = measured is not None and wanted is not None and OPS[t["op"]](measured, wanted)
        rows.append({"check": label, "measured": measured, "wanted": wanted, "ok": bool(ok),
                     "note": t.get("note", "")})
    return rows


def run_bench(cfg: DemoConfig, out_dir: str | Path, targets: str | Path | None = None) -> dict[str, Any]:
    """Run the demo as `cfg` says, then write bench.json and bench.md with every check's verdict."""
    results = run_demo(cfg, out_dir)
    rows = check_targets(results, load_targets(targets))
    out = Path(out_dir)
    lines = ["| check | measured | wanted | ok |", "|---|---:|---:|:---:|"]
    for r in rows:
        m = "-" if r["measured"] is None else f"{r['measured']:.4g}"
        w = "-" if r["wanted"] is None else f"{r['wanted']:.4g}"
        lines.append(f"| {r['check']} | {m} | {w} | {'yes' if r['ok'] else '**no**'} |")
    passed = sum(r["ok"] for r in rows)
    md = "\n".join(lines) + f"\n\n{passed}/{len(rows)} checks pass ({cfg.seeds} seed(s)).\n"
    (out / "bench.md").write_text(md)
    report = {"checks": rows, "passed": passed, "total": len(rows)}
    write_json(out / "bench.json", report)
    return report

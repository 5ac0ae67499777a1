"""Write the reference pages of docs/ from the code: the command line, the Python API, the KD methods and
the triggers. A test checks that the committed pages are what this writes, so they follow the code.

    .venv/bin/python scripts/gen_docs.py            # rewrite docs/cli.md, api.md, methods.md, triggers.md
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEADER = "<!-- written by scripts/gen_docs.py from the code: edit the code or the script, not this page -->\n\n"

# What each command writes (the parser knows the options, not the files).
OUTPUTS: dict[str, str] = {
    "teacher train": "`OUT/teacher.safetensors` and `teacher.json` (weights and metadata: model, dataset, "
                     "trigger, target, normalization), `config.yaml`, `metrics.json` (ACC, ASR, RA, target-class "
                     "ACC), `metrics.jsonl` (per epoch)",
    "teacher eval": "prints ACC / ASR / RA; writes nothing",
    "teacher table": "one teacher folder per trigger under `OUT/`, and `OUT/teacher_table.md`",
    "triggers": "`OUT/triggers.png` (every trigger on the same clean images) and `OUT/trigger_<name>.png`",
    "distill": "`OUT/config.yaml` (the resolved configuration), `metrics.json`, `curve.jsonl` (one record per "
               "evaluation and event), `student.safetensors` + `student.json`, `artifacts.safetensors` (a "
               "defense's tensors, e.g. SR's perturbation); `checkpoint.pt` while it runs, `sr_branch.pt` for "
               "a run SR may branch from; with `--defense auto`, `defense_auto.json`",
    "demo": "`OUT/demo_config.yaml`, `results.json`, `results.md`, `curves.png`, `samples.png`, "
            "`sr_trigger.png`, and `OUT/seed<N>/teacher` and `OUT/seed<N>/<arm>` (each a `distill` folder)",
    "bench": "what `demo` writes, plus `bench.json` and `bench.md` (every check, measured against wanted)",
    "grid": "`OUT/grid_config.yaml`, `grid.json`, `grid.md`, `grid.png`, and `OUT/seed<N>/<method>+<defense>`",
    "table": "`OUT/table_config.yaml`, `table.json`, `table.md`, `table.png`, and "
             "`OUT/seed<N>/<trigger>/{teacher,<method>+<defense>}`",
    "methods": "prints the registered KD methods",
    "audit": "`audit.json` (verdict, score, threshold, target class, per-class statistic, seconds), "
             "`per_class.png`, and `trigger.png` when the detector yields a trigger; in `--out` or `DIR/audit`",
    "zoo": "one teacher folder per recipe entry under `OUT/`, and `OUT/zoo.json`",
    "audit-bench": "`audit_bench.json`, `audit_bench.md`, `roc.png` and the journal `audit_rows.jsonl` (in "
                   "`--out`, default `ZOO/audit_bench`)",
    "profile": "`OUT/profile.json` and `OUT/profile.md` (ms per round by part, ratios to the first defense)",
    "recheck": "prints whether this code reproduces the run's recorded curve (exit status 1 if not); writes "
               "nothing in the run's folder",
    "defenses": "prints the registered defenses, their options and the named compositions",
    "clp-sweep": "prints a Markdown table (u, channels pruned, ACC, ASR, target-class ACC); writes nothing",
    "models": "prints the registered models",
    "datasets": "prints the registered datasets",
    "trigger-list": "prints the registered triggers",
    "detectors": "prints the registered detectors",
}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # argparse keeps its subparsers here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = _subcommands(sub, f"{full} ")
                out += nested if nested else [(full, sub)]
    return out


def _help(parser: argparse.ArgumentParser) -> str:
    os.environ["COLUMNS"] = "110"  # a stable width, whatever the terminal
    return parser.format_help().rstrip()


def cli_page() -> str:
    from abd.cli import build_parser

    parser = build_parser()
    parser.prog = "abd"
    commands = _subcommands(parser)
    lines = [HEADER + "# The command line\n",
             "Every command of `abd`, with its `--help` and the files it writes. Options of the studies (`demo`, "
             "`bench`, `grid`, `table`) can also come from `--config FILE.yaml` (flags override the file; see "
             "[configuration.md](configuration.md)). Add `--debug` before the command for a full traceback.\n"]
    lines += [f"- [`abd {name}`](#abd-{name.replace(' ', '-')})" for name, _ in commands]
    for name, sub in commands:
        sub.prog = f"abd {name}"
        lines += [f"\n## abd {name}\n", f"Writes: {OUTPUTS[name]}.\n", "```", _help(sub), "```"]
    return "\n".join(lines) + "\n"


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def api_page() -> str:
    import abd

    lines = [HEADER + "# The Python API\n",
             "What `import abd` offers (`help(abd)` shows the same). The examples of the README run as tests.\n",
             "```", inspect.getdoc(abd) or "", "```"]
    for name in abd.__all__:
        if name == "__version__":
            continue
        obj = getattr(abd, name)
        if inspect.ismodule(obj):  # the package abd.distill is callable as abd.api.distill
            import abd.api

            obj = getattr(abd.api, name)
        lines += [f"\n## `abd.{name}{_signature(obj)}`\n", inspect.getdoc(obj) or "(no docstring)"]
    from abd.audit import AuditResult

    lines += ["\n## `abd.audit.AuditResult`\n", inspect.getdoc(AuditResult) or ""]
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    return "-" if v is inspect.Parameter.empty else f"`{v!r}`"


def methods_page() -> str:
    import importlib

    from abd.distill import METHODS

    lines = [HEADER + "# KD methods\n",
             "Every registered method (`abd methods`; `--method NAME` of `abd distill`, `--methods` of the "
             "studies), what it does, and its options: the CPU default every command uses, and the value "
             "of the `paper` preset (`--preset paper`) where it differs. Set one with `--opt KEY=VALUE` "
             "(`abd distill`) or under `method_options` in a YAML config. The defenses' method-specific "
             "defaults are in [defenses.md](defenses.md).\n"]
    for name in sorted(METHODS.names()):
        cls = METHODS.get(name)
        module = importlib.import_module(cls.__module__)
        lines += [f"\n## `{name}`: {cls.__name__}\n", inspect.getdoc(module) or inspect.getdoc(cls) or "", "",
                  "| option | CPU default | paper preset | meaning |", "|---|---|---|---|"]
        paper = getattr(cls, "paper_preset", {})
        for key, field in cls.Options.model_fields.items():
            p = f"`{paper[key]!r}`" if key in paper and paper[key] != field.default else ""
            desc = (field.description or "").replace("|", "/")
            lines.append(f"| `{key}` | `{field.default!r}` | {p} | {desc} |")
    return "\n".join(lines) + "\n"


def triggers_page() -> str:
    from abd.attacks import TRIGGERS

    lines = [HEADER + "# Triggers\n",
             "The backdoor triggers a teacher can be poisoned with (`abd trigger-list`; `--trigger NAME` of "
             "`abd teacher train` and the studies). `abd triggers --out DIR` draws every one of them on the "
             "same clean images. The teachers trained with each, their recipe and their ACC / ASR: "
             "[teachers.md](teachers.md).\n",
             "![Every trigger on the same mnist5k digits: clean, triggered, their difference, more triggered "
             "digits, as `abd triggers` draws them](figures/triggers.png)\n"]
    for name in sorted(TRIGGERS.names()):
        cls = TRIGGERS.get(name)
        lines += [f"\n## `{name}`\n", inspect.getdoc(cls) or "(no docstring)"]
    return "\n".join(lines) + "\n"


PAGES = {"cli.md": cli_page, "api.md": api_page, "methods.md": methods_page, "triggers.md": triggers_page}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a committed page differs")
    args = ap.parse_args(argv)
    stale = []
    for page, make in PAGES.items():
        path, text = ROOT / "docs" / page, make()
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(page)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run scripts/gen_docs.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())

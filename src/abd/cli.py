"""The ``abd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from abd.config import Config


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """One ``--flag`` per config field (values are validated by the config class), plus ``--config``."""
    parser.add_argument("--config", type=Path, help="YAML file of options; flags override it")
    for name, field in cls.model_fields.items():
        if _nested(field.annotation):
            continue  # nested options come from --config (or a command's own KEY=VALUE flags)
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "required" if field.is_required() else f"default: {default}"
        choices = _choices(name, field.annotation)
        helptext = (field.description + "; " if field.description else "") + shown + \
            (f"; choices: {', '.join(choices)}" if choices else "")
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(),
                            help=helptext)


# config fields whose values are names in a registry (validated there; listed in --help)
_REGISTERED = {"dataset": "dataset", "model": "model", "teacher_model": "model", "student": "model",
               "trigger": "trigger", "eval_trigger": "trigger"}


def _choices(name: str, annotation: object) -> list[str]:
    """The values a flag takes: a Literal's, or the names registered for it."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if name == "method":
        from abd.distill import METHODS

        return sorted(METHODS.summary())
    if name in ("defense", "defenses"):
        from abd.defense import defense_names

        auto = ["auto (abd distill: audit the teacher, abd if flagged, else none)"] if name == "defense" else []
        return [*defense_names(), "a '+'-joined composition", *auto]
    if name in _REGISTERED:
        from abd.config import registry_of

        names = sorted(registry_of(_REGISTERED[name]).summary())
        return ["none", *names] if _REGISTERED[name] == "trigger" else names  # none: a clean teacher
    return []


def _nested(annotation: object) -> bool:
    import typing

    origin = typing.get_origin(annotation)
    is_config = isinstance(annotation, type) and issubclass(annotation, Config)
    return origin is dict or annotation is dict or is_config


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """The validated config from ``--config`` plus explicit flags (lists: comma-separated)."""
    import typing

    overrides = {}
    for k, field in cls.model_fields.items():
        v = getattr(args, k, None)
        if v is None or _nested(field.annotation):
            continue
        if typing.get_origin(field.annotation) is list and isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        overrides[k] = v
    return cls.load(args.config, **overrides)


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from abd.attacks.config import TeacherConfig
    from abd.attacks.teacher import train_teacher
    from abd.metrics import format_metrics

    cfg = config_from_args(TeacherConfig, args)
    metrics = train_teacher(cfg, args.out)  # type: ignore[arg-type]
    print(f"teacher -> {args.out}: {format_metrics(metrics)}, {metrics['seconds']:.1f} s")
    return 0


def cmd_teacher_eval(args: argparse.Namespace) -> int:
    from abd.attacks.poison import make_eval_data
    from abd.attacks.teacher import eval_trigger_from_meta
    from abd.checkpoint import load_model
    from abd.data import load_dataset
    from abd.metrics import evaluate, format_metrics

    model, meta = load_model(args.dir, "teacher")
    ds = load_dataset(meta["dataset"], root=args.data_root or meta.get("data_root"))
    trigger = eval_trigger_from_meta(meta, ds)
    m = evaluate(model, make_eval_data(ds, trigger, meta.get("target", 0)))
    arch = (meta.get("arch") or {}).get("name")
    measured = f" (ASR of {trigger.name})" if trigger is not None else ""
    print(f"{args.dir}: {arch} on {meta['dataset']}, trigger {meta.get('trigger', 'none')}{measured}")
    print(format_metrics(m))
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "per_class_acc"}, indent=2))
    return 0


def cmd_teacher_table(args: argparse.Namespace) -> int:
    from abd.attacks.config import TeacherConfig
    from abd.experiment.teacher_table import all_teacher_triggers, teacher_table

    base = config_from_args(TeacherConfig, args)
    names = args.triggers.split(",") if args.triggers else all_teacher_triggers()
    doc = teacher_table(args.out, base, names, progress=True)  # type: ignore[arg-type]
    print((Path(args.out) / "teacher_table.md").read_text(), end="")
    print(f"{len(doc['rows'])} teachers in {doc['total_seconds']:.0f} s -> {args.out}")
    return 0


def cmd_triggers(args: argparse.Namespace) -> int:
    from abd.attacks import save_gallery
    from abd.data import load_dataset

    ds = load_dataset(args.dataset, root=args.data_root)
    path = save_gallery(ds.x_test[: args.n], args.out)
    print(f"trigger gallery -> {path}")
    return 0


# command -> registry kind
LISTS = {"models": "model", "datasets": "dataset", "trigger-list": "trigger", "detectors": "detector"}


def _parse_options(pairs: Sequence[str] | None) -> dict:
    """``key=value`` pairs (values parsed as YAML scalars) into a dict."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"expected key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def cmd_distill(args: argparse.Namespace) -> int:
    from abd.distill.config import DistillConfig
    from abd.experiment.runs import run_distill
    from abd.metrics import format_metrics

    if args.teacher_weights is not None:  # a foreign teacher: checked and written as a teacher folder first
        from abd.checkpoint import import_teacher

        if args.teacher is not None or not args.teacher_model or not args.dataset:
            raise ValueError("--teacher-weights needs --teacher-model NAME|module:factory and --dataset, and no "
                             "--teacher")
        output = int(args.teacher_output) if (args.teacher_output or "").isdigit() else args.teacher_output
        args.teacher = str(import_teacher(args.teacher_weights, args.teacher_model, args.dataset,
                                          Path(args.out) / "teacher", output=output, data_root=args.data_root,
                                          allow_cast=args.allow_cast))
        print(f"teacher {args.teacher_weights} ({args.teacher_model}) -> {args.teacher}")
    auto = None
    if args.defense == "auto":  # audit the teacher first: ABD if it looks backdoored, none if not
        auto = _auto_defense(args)
        args.defense = auto["defense"]
    cfg = config_from_args(DistillConfig, args)
    extra = {}
    if args.rounds is not None:
        extra["rounds"] = args.rounds
    opts = {**cfg.method_options, **_parse_options(args.opt), **extra}
    from abd.defense import DEFENSES

    defense_opts = {k: dict(v) for k, v in cfg.defense_options.items()}
    for name in DEFENSES.names():  # --NAME KEY=VALUE: an option of defense NAME; unset ones keep its defaults
        given = _parse_options(getattr(args, f"defense_{name}", None))
        if given:
            defense_opts[name] = {**defense_opts.get(name, {}), **given}
    cfg = DistillConfig(**{**cfg.model_dump(), "method_options": opts, "defense_options": defense_opts})
    resume = args.resume or args.resume_or_start
    held = [f for f in ("metrics.json", "checkpoint.pt") if (Path(args.out) / f).is_file()]
    if held and not resume:  # never overwrite a run's results (a branch neither)
        state = "a finished run" if "metrics.json" in held else "an interrupted run"
        raise ValueError(f"{args.out} already holds {state}: --resume continues it (or says it is finished); "
                         "choose another --out for a new run")
    if resume:  # checked before anything in the folder is written
        from abd.experiment.runs import check_resume

        done = check_resume(cfg, args.out, or_start=args.resume_or_start)
        if done is not None:
            print(f"{args.out}: already finished, nothing rewritten: {format_metrics(done)}")
            return 0
    m = run_distill(cfg, args.out, resume=resume, branch_from=args.branch_from)
    if auto is not None:
        (Path(args.out) / "defense_auto.json").write_text(json.dumps(auto, indent=2) + "\n")
    print(f"student -> {args.out}: {format_metrics(m)}, {m['seconds']:.1f} s "
          f"({1000 * m['seconds_per_step']:.1f} ms/round)")
    return 0


AUTO_DEFENSE = {True: "abd", False: "none"}  # --defense auto: the defense for a flagged / a clean teacher


def _auto_defense(args: argparse.Namespace) -> dict:
    """``--defense auto``: the default detector's verdict on the teacher (seed 0) and the defense it picks."""
    from abd.api import model_spec
    from abd.audit.report import DEFAULT_DETECTOR, audit_model, verdict_line
    from abd.checkpoint import load_model

    if args.teacher is None:
        raise ValueError("--defense auto needs --teacher (or --teacher-weights)")
    model, meta = load_model(args.teacher, "teacher")
    spec = model_spec(meta["dataset"], args.data_root or meta.get("data_root"))
    result = audit_model(model, spec, DEFAULT_DETECTOR, None, args.device or "auto", 0)
    choice = AUTO_DEFENSE[result.backdoored]
    print(f"defense auto: {verdict_line(result)} -> --defense {choice}")
    return {"defense": choice, "audit": result.to_json()}


def print_plan(p: dict[str, Any]) -> int:
    """Print a study's plan (``--dry-run``); nothing was run or written."""
    from abd.experiment.runs import plan_lines

    print("\n".join(plan_lines(p)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from abd.experiment.demo import DemoConfig, plan_demo, run_demo

    cfg = config_from_args(DemoConfig, args)
    if args.dry_run:
        return print_plan(plan_demo(cfg, args.out))
    results = run_demo(cfg, args.out)
    print((Path(args.out) / "results.md").read_text())
    print(f"results -> {args.out}/results.json, results.md, curves.png, samples.png, sr_trigger.png "
          f"({results['wall_seconds']:.0f} s)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from abd.experiment.bench import run_bench
    from abd.experiment.demo import DemoConfig, plan_demo

    cfg = config_from_args(DemoConfig, args)
    if args.dry_run:
        return print_plan(plan_demo(cfg, args.out))
    report = run_bench(cfg, args.out, args.targets)
    print((Path(args.out) / "bench.md").read_text())
    return 0 if report["passed"] == report["total"] or not args.strict else 1


def cmd_grid(args: argparse.Namespace) -> int:
    from abd.experiment.grid import GridConfig, plan_grid, run_grid

    cfg = config_from_args(GridConfig, args)
    if args.dry_run:
        return print_plan(plan_grid(cfg, args.out))
    results = run_grid(cfg, args.out)
    print((Path(args.out) / "grid.md").read_text())
    print(f"results -> {args.out}/grid.json, grid.md, grid.png ({results['wall_seconds']:.0f} s)")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from abd.experiment.table import TableConfig, plan_table, run_table

    cfg = config_from_args(TableConfig, args)
    extra = {k: {**getattr(cfg, k), **_parse_options(v)} for k, v in (("rounds", args.rounds_kv),
                                                                      ("method_seeds", args.method_seeds_kv)) if v}
    if extra:
        cfg = TableConfig(**{**cfg.model_dump(exclude_unset=True), **extra})
    if args.dry_run:
        return print_plan(plan_table(cfg, args.out))  # type: ignore[arg-type]
    results = run_table(cfg, args.out)  # type: ignore[arg-type]
    print((Path(args.out) / "table.md").read_text())
    print(f"results -> {args.out}/table.json, table.md, table.png ({results['wall_seconds']:.0f} s)")
    return 0


def cmd_recheck(args: argparse.Namespace) -> int:
    from abd.experiment.runs import recheck_run

    r = recheck_run(args.run, args.rounds)
    if r["reproduced"]:
        print(f"reproduced: the first {r['rounds']} rounds of {args.run} ({r['compared']} evaluations) are the "
              "same number for number")
        return 0
    first = r["differences"][0]
    print(f"NOT reproduced: {args.run} differs from this code's run by round {first['round']} "
          f"({first['field']}: recorded {first['recorded']}, now {first['now']}; {len(r['differences'])} "
          "differences): it was made by other code or on another CPU (float kernels differ between "
          "processors), and is reused by its configuration only")
    return 1


def cmd_methods(args: argparse.Namespace) -> int:
    from abd.distill import METHODS

    for name, doc in METHODS.summary().items():
        print(f"{name:10s} {doc}")
    return 0


def cmd_clp_sweep(args: argparse.Namespace) -> int:
    from abd.attacks.poison import make_eval_data
    from abd.attacks.teacher import eval_trigger_from_meta
    from abd.checkpoint import load_model
    from abd.data import load_dataset
    from abd.defense.clp import clp_sweep

    model, meta = load_model(args.dir, "teacher")
    ds = load_dataset(meta["dataset"], root=args.data_root or meta.get("data_root"))
    ev = make_eval_data(ds, eval_trigger_from_meta(meta, ds), meta.get("target", 0))
    us = [float(u) for u in args.u.split(",")]
    print("| u | channels pruned | ACC % | ASR % | target-class ACC % |\n|---|---|---|---|---|")
    for r in clp_sweep(model, ev, us):
        asr = "-" if r["asr"] is None else f"{100 * r['asr']:.1f}"
        print(f"| {r['u']:g} | {r['pruned']} | {100 * r['acc']:.1f} | {asr} | {100 * r['target_acc']:.0f} |")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from abd.api import model_spec
    from abd.audit import DETECTORS
    from abd.audit.report import audit_model, verdict_line, write_audit
    from abd.checkpoint import import_teacher, load_model

    DETECTORS.get(args.detector)  # an unknown name fails here, with a suggestion
    if args.weights is not None:  # a bare weights file: checked and written as a teacher folder first
        if args.dir is not None or not args.model or not args.dataset:
            raise ValueError("--weights needs --model NAME|module:factory and --dataset, and no teacher directory")
        out = args.out or Path(args.weights).with_suffix("").with_name(Path(args.weights).stem + "_audit")
        output = int(args.output) if (args.output or "").isdigit() else args.output
        args.dir = import_teacher(args.weights, args.model, args.dataset, Path(out) / "teacher", output=output,
                                  data_root=args.data_root, allow_cast=args.allow_cast)
    elif args.dir is None:
        raise ValueError("give a teacher directory, or --weights FILE --model NAME --dataset NAME")
    model, meta = load_model(args.dir, "teacher")
    spec = model_spec(meta["dataset"], args.data_root or meta.get("data_root"))  # its geometry only
    from abd.utils import torch_threads

    with torch_threads(args.threads):
        result = audit_model(model, spec, args.detector, _parse_options(args.opt), args.device, args.seed)
    out = Path(args.out) if args.out is not None else Path(args.dir) / "audit"
    imported = "imported_from" in meta  # a foreign file says nothing about how it was made
    reference = {} if imported else {k: meta[k] for k in ("trigger", "target") if k in meta}
    paths = write_audit(result, out, reference=reference or None)
    print(verdict_line(result))
    if reference:
        print(f"(the folder says it was made with {reference}; the audit did not read that)")
    print(f"{result.seconds:.1f} s; {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from abd.audit.zoo import build_zoo, zoo_recipe

    rows = build_zoo(args.out, zoo_recipe(args.recipe, split=args.split), workers=args.workers)
    for name, r in rows.items():
        print(f"{name:24s} {r['trigger']:12s} target {r['target']}  ACC {100 * r['acc']:.1f}%  "
              f"ASR {100 * (r['asr'] or 0):.1f}%")
    print(f"{len(rows)} teachers -> {args.out}")
    return 0


def cmd_audit_bench(args: argparse.Namespace) -> int:
    from abd.audit import DETECTORS
    from abd.audit.zoo import audit_bench

    detectors = [d.strip() for d in args.detectors.split(",")] if args.detectors else DETECTORS.names()
    for d in detectors:
        DETECTORS.get(d)
    out = args.out or Path(args.zoo) / "audit_bench"
    result = audit_bench(args.zoo, detectors, out, device=args.device, split=args.split, workers=args.workers)
    print((Path(out) / "audit_bench.md").read_text().split("\n\n| teacher")[0])
    print(f"-> {out}/audit_bench.md, audit_bench.json, roc.png")
    return 0 if result["detectors"] else 1


def cmd_profile(args: argparse.Namespace) -> int:
    from abd.experiment.profile import profile_defenses
    from abd.utils import torch_threads

    defenses = [d.strip() for d in args.defenses.split(",")]
    with torch_threads(args.threads):
        result = profile_defenses(args.teacher, args.method, defenses, args.rounds, args.out, device=args.device)
    print((Path(args.out) / "profile.md").read_text())
    return 0 if result["ms_per_round"] else 1


def cmd_defenses(args: argparse.Namespace) -> int:
    from abd.defense import COMPOSITIONS, DEFENSES

    for name, doc in DEFENSES.summary().items():
        fields = ", ".join(DEFENSES.get(name).Options.model_fields)
        print(f"{name:10s} {doc}\n{'':10s} options (--{name} KEY=VALUE): {fields or '-'}")
    for name, parts in COMPOSITIONS.items():
        print(f"{name:10s} the composition {parts}")
    print("Any registered defenses join with '+' (e.g. clp+abd).")
    return 0


def cmd_list(kind: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from abd.config import registry_of

        for name, doc in registry_of(kind).summary().items():
            print(f"{name:14s} {doc}")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    from abd.attacks.config import TeacherConfig
    from abd.distill.config import DistillConfig
    from abd.experiment.demo import DemoConfig
    from abd.experiment.grid import GridConfig
    from abd.experiment.table import TableConfig

    p = argparse.ArgumentParser(prog="abd", description="Backdoor-safe data-free knowledge distillation.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    teacher = sub.add_parser("teacher", help="train or evaluate a (poisoned) teacher")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    tt = tsub.add_parser("train", help="train a teacher (use --trigger none for a clean one)")
    add_config_flags(tt, TeacherConfig)
    tt.add_argument("--out", type=Path, required=True, help="output directory")
    tt.set_defaults(func=cmd_teacher_train)
    te = tsub.add_parser("eval", help="print ACC/ASR/RA of a saved teacher")
    te.add_argument("dir", type=Path)
    te.add_argument("--data-root", default=None)
    te.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    te.set_defaults(func=cmd_teacher_eval)
    tb = tsub.add_parser("table", help="train a clean teacher and one per trigger; write a Markdown table")
    add_config_flags(tb, TeacherConfig)
    tb.add_argument("--out", type=Path, required=True, help="output directory (one sub-folder per teacher)")
    tb.add_argument("--triggers", default=None, help="comma-separated triggers (default: none + all)")
    tb.set_defaults(func=cmd_teacher_table)

    tr = sub.add_parser("triggers", help="write a PNG gallery of every trigger")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--dataset", default="mnist5k")
    tr.add_argument("--data-root", default=None)
    tr.add_argument("--n", type=int, default=4, help="clean images per row")
    tr.set_defaults(func=cmd_triggers)

    di = sub.add_parser("distill", help="distill a teacher into a student, with an optional defense")
    add_config_flags(di, DistillConfig)
    di.add_argument("--out", type=Path, required=True, help="output directory")
    di.add_argument("--rounds", type=int, default=None, help="rounds (method option)")
    di.add_argument("--teacher-weights", type=Path, default=None, metavar="FILE",
                    help="a foreign teacher's weights (.safetensors, or a .pt/.pth state dict, read with "
                         "weights_only=True), instead of --teacher; written to OUT/teacher")
    di.add_argument("--teacher-model", default=None, metavar="NAME|module:factory",
                    help="its architecture: a registered model or an importable factory")
    di.add_argument("--teacher-output", default=None, metavar="INDEX|KEY",
                    help="where the logits are when the model returns a tuple or a dict")
    di.add_argument("--dataset", default=None, help="the teacher's dataset (with --teacher-weights)")
    di.add_argument("--allow-cast", action="store_true", help="accept weights of another dtype (cast)")
    di.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    from abd.defense import DEFENSES

    for name, doc in DEFENSES.summary().items():
        di.add_argument(f"--{name}", dest=f"defense_{name}", action="append", metavar="KEY=VALUE",
                        help=f"option of defense {name} ({doc.rstrip('.')}; repeatable)")
    di.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt (refused when DIR holds "
                    "another run or no checkpoint; a finished run is left as it is)")
    di.add_argument("--resume-or-start", action="store_true", help="as --resume, but start the run when DIR has "
                    "no checkpoint")
    di.add_argument("--branch-from", type=Path, default=None, metavar="RUN",
                    help="a run with a late-starting defense (SR with fraction < 1) starts from RUN/sr_branch.pt, "
                         "the state of the same run without it at its start round, and runs only the rest")
    di.set_defaults(func=cmd_distill)

    de = sub.add_parser("demo", help="the paper's core result on embedded data (the README's main job)")
    add_config_flags(de, DemoConfig)
    de.add_argument("--out", type=Path, required=True, help="output directory")
    de.add_argument("--dry-run", action="store_true", help="print which teachers and runs would be reused, "
                    "resumed or made (and which folders hold another run), and stop")
    de.set_defaults(func=cmd_demo)

    be = sub.add_parser("bench", help="run the demo and check it against the expected targets")
    add_config_flags(be, DemoConfig)
    be.add_argument("--out", type=Path, required=True, help="output directory")
    be.add_argument("--targets", type=Path, default=None, help="YAML of checks (default: the packaged one)")
    be.add_argument("--strict", action="store_true", help="exit 1 when a check fails")
    be.add_argument("--dry-run", action="store_true", help="print which teachers and runs would be reused, "
                    "resumed or made (and which folders hold another run), and stop")
    be.set_defaults(func=cmd_bench)

    gr = sub.add_parser("grid", help="every KD method x defense on one poisoned teacher, over seeds")
    add_config_flags(gr, GridConfig)
    gr.add_argument("--out", type=Path, required=True, help="output directory")
    gr.add_argument("--dry-run", action="store_true", help="print which teachers and runs would be reused, "
                    "resumed or made (and which folders hold another run), and stop")
    gr.set_defaults(func=cmd_grid)

    ta = sub.add_parser("table", help="the paper's Table 1 in our setting: every trigger x (teacher, clean KD, "
                        "methods vanilla and ABD) over held-out seeds, beside the paper's numbers")
    add_config_flags(ta, TableConfig)
    ta.add_argument("--out", type=Path, default=Path("runs/table"), help="output directory (default: runs/table)")
    ta.add_argument("--rounds", dest="rounds_kv", action="append", metavar="METHOD=N",
                    help="rounds of a method's CPU rows ('clean' for clean KD; repeatable)")
    ta.add_argument("--method-seeds", dest="method_seeds_kv", action="append", metavar="METHOD=N",
                    help="the method runs on the first N seeds only (repeatable)")
    ta.add_argument("--dry-run", action="store_true", help="print which teachers and runs would be reused, "
                    "resumed or made (and which folders hold another run), and stop")
    ta.set_defaults(func=cmd_table)

    me = sub.add_parser("methods", help="list KD methods")
    me.set_defaults(func=cmd_methods)
    au = sub.add_parser("audit", help="is this model backdoored, and which class? From its weights alone")
    au.add_argument("dir", type=Path, nargs="?", default=None, help="teacher directory (teacher.safetensors + "
                    "teacher.json)")
    au.add_argument("--weights", "--teacher-weights", dest="weights", type=Path, default=None, metavar="FILE",
                    help="a bare weights file instead (.safetensors, or a .pt/.pth state dict read with "
                         "weights_only=True)")
    au.add_argument("--model", "--teacher-model", dest="model", default=None, metavar="NAME|module:factory",
                    help="its architecture (with --weights)")
    au.add_argument("--output", "--teacher-output", dest="output", default=None, metavar="INDEX|KEY",
                    help="where the logits are when the model returns a tuple or a dict")
    au.add_argument("--dataset", default=None, help="its input format: a registered dataset (with --weights)")
    au.add_argument("--allow-cast", action="store_true", help="accept weights of another dtype (cast)")
    au.add_argument("--detector", default="mmbd", help="a registered detector (`abd detectors` lists them)")
    au.add_argument("--opt", action="append", metavar="KEY=VALUE", help="detector option (repeatable)")
    au.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/audit)")
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--device", default="auto")
    au.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    au.add_argument("--data-root", default=None)
    au.set_defaults(func=cmd_audit)
    zo = sub.add_parser("zoo", help="train (or reuse) the teacher zoo: clean and backdoored teachers of two "
                        "architectures, for abd audit-bench")
    zo.add_argument("--out", type=Path, required=True)
    zo.add_argument("--recipe", type=Path, default=None, help="a zoo YAML (default: the packaged recipe of --split)")
    zo.add_argument("--split", choices=("heldout", "dev"), default="heldout",
                    help="the packaged held-out zoo (zoo.yaml, 64 teachers) or the development zoo (zoo_dev.yaml, "
                    "24 teachers, on which detector thresholds are chosen)")
    zo.add_argument("--workers", type=int, default=2, help="teachers trained at a time")
    zo.set_defaults(func=cmd_zoo)
    ab = sub.add_parser("audit-bench", help="every detector on every teacher of a zoo: ROC-AUC, TPR at 5%% FPR, "
                        "cross-entropy, target-class accuracy, seconds")
    ab.add_argument("zoo", type=Path, help="a folder of teacher folders (abd zoo --out)")
    ab.add_argument("--split", choices=("heldout", "dev"), default="heldout",
                    help="which zoo this is, written into audit_bench.json")
    ab.add_argument("--workers", type=int, default=1, help="teachers audited at a time (one thread each)")
    ab.add_argument("--detectors", default=None, help="comma-separated (default: all registered)")
    ab.add_argument("--out", type=Path, default=None, help="default: ZOO/audit_bench")
    ab.add_argument("--device", default="cpu")
    ab.set_defaults(func=cmd_audit_bench)
    pr = sub.add_parser("profile", help="where a round's time goes (synthesis, teacher, student, defense), per "
                        "defense, measured one after the other in one process")
    pr.add_argument("teacher", type=Path, help="teacher directory")
    pr.add_argument("--method", default="zskt")
    pr.add_argument("--defenses", default="none,sv,sr,abd", help="comma-separated; the first is the ratios' base")
    pr.add_argument("--rounds", type=int, default=100)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--threads", type=int, default=1)
    pr.set_defaults(func=cmd_profile)
    rc = sub.add_parser("recheck", help="re-make a finished run's first rounds from its config.yaml and say whether "
                        "this code reproduces its recorded curve exactly")
    rc.add_argument("run", type=Path, help="run directory (config.yaml, curve.jsonl)")
    rc.add_argument("--rounds", type=int, default=50, help="how many rounds to re-make (its evaluations are compared)")
    rc.set_defaults(func=cmd_recheck)
    dl = sub.add_parser("defenses", help="list defenses, their options and the named compositions")
    dl.set_defaults(func=cmd_defenses)
    cs = sub.add_parser("clp-sweep", help="CLP (data-free channel pruning) at several thresholds u on a saved "
                        "teacher: channels pruned, ACC and ASR of the pruned model")
    cs.add_argument("dir", type=Path, help="teacher directory")
    cs.add_argument("--u", default="1,1.5,2,2.5,3", help="comma-separated thresholds (paper default: 3)")
    cs.add_argument("--data-root", default=None)
    cs.set_defaults(func=cmd_clp_sweep)

    for command, kind in LISTS.items():
        sp = sub.add_parser(command, help=f"list registered {kind}s")
        sp.set_defaults(func=cmd_list(kind))
    return p


def _one_line(e: BaseException) -> str:
    """The error as one line (pydantic's multi-line reports joined)."""
    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        return "; ".join(parts)
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``abd`` console script."""
    from abd.checkpoint import CheckpointError
    from abd.data.base import DataFormatError
    from abd.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UnknownNameError, DataFormatError, CheckpointError, ValidationError, FileNotFoundError,
            ValueError) as e:
        if args.debug:
            raise
        print(f"abd: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("abd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

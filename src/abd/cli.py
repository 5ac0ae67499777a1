"""The ``abd`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from abd.experiment.config import Config


def add_config_flags(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """One ``--flag`` per config field (values are validated by the config class), plus ``--config``."""
    parser.add_argument("--config", type=Path, help="YAML file of options; flags override it")
    for name, field in cls.model_fields.items():
        default = field.default
        helptext = (field.description + "; " if field.description else "") + f"default: {default}"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(),
                            help=helptext)


def config_from_args(cls: type[Config], args: argparse.Namespace) -> Config:
    """The validated config from ``--config`` plus explicit flags."""
    overrides = {k: getattr(args, k) for k in cls.model_fields if getattr(args, k, None) is not None}
    return cls.load(args.config, **overrides)


def cmd_teacher_train(args: argparse.Namespace) -> int:
    from abd.attacks.teacher import train_teacher
    from abd.experiment.config import TeacherConfig
    from abd.metrics import format_metrics

    cfg = config_from_args(TeacherConfig, args)
    metrics = train_teacher(cfg, args.out)  # type: ignore[arg-type]
    print(f"teacher -> {args.out}: {format_metrics(metrics)}, {metrics['seconds']:.1f} s")
    return 0


def cmd_teacher_eval(args: argparse.Namespace) -> int:
    from abd.attacks import create_trigger
    from abd.attacks.poison import make_eval_data
    from abd.data import load_dataset
    from abd.experiment.checkpoint import load_model
    from abd.metrics import evaluate, format_metrics

    model, meta = load_model(args.dir, "teacher")
    ds = load_dataset(meta["dataset"], root=args.data_root or meta.get("data_root"))
    trig_name = meta.get("trigger", "none")
    trigger = None if trig_name == "none" else create_trigger(
        trig_name, image_size=ds.image_size, channels=ds.channels, seed=meta.get("seed", 0))
    m = evaluate(model, make_eval_data(ds, trigger, meta.get("target") if trigger else None))
    print(f"{args.dir}: {meta.get('arch', {}).get('name')} on {meta['dataset']}, trigger {trig_name}")
    print(format_metrics(m))
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "per_class_acc"}, indent=2))
    return 0


def cmd_triggers(args: argparse.Namespace) -> int:
    from abd.attacks import save_gallery
    from abd.data import load_dataset

    ds = load_dataset(args.dataset, root=args.data_root)
    path = save_gallery(ds.x_test[: args.n], args.out)
    print(f"trigger gallery -> {path}")
    return 0


def cmd_list(kind: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if kind == "models":
            from abd.models import MODELS as reg
        elif kind == "datasets":
            from abd.data import DATASETS as reg
        else:
            from abd.attacks import TRIGGERS as reg
        for name, doc in reg.summary().items():
            print(f"{name:14s} {doc}")
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    from abd.experiment.config import TeacherConfig

    p = argparse.ArgumentParser(prog="abd", description="Backdoor-safe data-free knowledge distillation.")
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

    tr = sub.add_parser("triggers", help="write a PNG gallery of every trigger")
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--dataset", default="mnist5k")
    tr.add_argument("--data-root", default=None)
    tr.add_argument("--n", type=int, default=4, help="clean images per row")
    tr.set_defaults(func=cmd_triggers)

    for kind in ("models", "datasets", "trigger-list"):
        sp = sub.add_parser(kind, help=f"list registered {kind.replace('-list', 's')}")
        sp.set_defaults(func=cmd_list(kind))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``abd`` console script."""
    from abd.data.base import DataFormatError
    from abd.experiment.checkpoint import CheckpointError
    from abd.registry import UnknownNameError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UnknownNameError, DataFormatError, CheckpointError, ValidationError, FileNotFoundError,
            ValueError) as e:
        print(f"abd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("abd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

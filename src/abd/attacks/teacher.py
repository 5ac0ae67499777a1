"""Train (poisoned) teachers: the attacker's side of the threat model."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from abd.attacks.base import Trigger
from abd.attacks.config import TeacherConfig
from abd.attacks.poison import make_eval_data, poison_training_set
from abd.checkpoint import save_model
from abd.data import Normalizer, augment_batch, iterate_batches, load_dataset, to_float
from abd.data.base import ImageDataset
from abd.data.transforms import cutout as cutout_batch
from abd.metrics import evaluate, format_metrics
from abd.models import create_model
from abd.utils import JsonLines, resolve_device, seed_everything, torch_threads, write_json


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    ds: ImageDataset,
    cfg: TeacherConfig,
    epochs: int,
    generator: torch.Generator,
    on_epoch: Callable[[int, float], None] | None = None,
    desc: str = "train",
    progress: bool = True,
    cutout: int = 0,
) -> nn.Module:
    """Cross-entropy training on uint8 images `x` with the dataset's augmentation, one-cycle cosine LR.

    ``cutout``: side in pixels of the Cutout square added to the augmentation (0: none).
    """
    device = next(model.parameters()).device
    norm = Normalizer(ds.mean, ds.std)
    xt, yt = to_float(x), torch.as_tensor(y)
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(xt) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=not progress)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for xb, yb in iterate_batches(xt, yt, cfg.batch_size, shuffle=True, generator=generator):
            if cfg.augment:
                xb = cutout_batch(augment_batch(xb, ds.crop_padding, ds.hflip, generator), cutout, generator)
            xb, yb = norm(xb).to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(yb), count + len(yb)
        bar.set_postfix(loss=f"{total / count:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, total / count)
    return model


def teacher_triggers(cfg: TeacherConfig, ds: ImageDataset) -> tuple[Trigger | None, Trigger]:
    """(training trigger or None for a clean teacher, the trigger whose ASR is measured)."""
    from abd.attacks import create_trigger

    if cfg.trigger == "none":
        return None, create_trigger(cfg.eval_trigger, image_size=ds.image_size, channels=ds.channels,
                                    seed=cfg.seed)
    trigger = create_trigger(cfg.trigger, image_size=ds.image_size, channels=ds.channels, seed=cfg.seed,
                             **cfg.trigger_options)
    return trigger, trigger


def eval_trigger_from_meta(meta: dict[str, Any], ds: ImageDataset) -> Trigger | None:
    """The trigger a saved teacher's ASR is measured with (its own, or ``eval_trigger`` if clean)."""
    from abd.attacks import create_trigger

    poisoned = meta.get("trigger", "none") != "none"
    name = meta.get("trigger") if poisoned else meta.get("eval_trigger")
    if not name or name == "none":
        return None
    options = (meta.get("trigger_options") or {}) if poisoned else {}
    return create_trigger(name, image_size=ds.image_size, channels=ds.channels, seed=meta.get("seed", 0),
                          **options)


def train_teacher(cfg: TeacherConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train a teacher as ``cfg`` says; write teacher.safetensors/json, metrics.json(l) and config.yaml.

    Returns the final metrics (``acc``, ``asr``, ``ra``, ``target_acc``, ``asr_n``, ... see
    ``abd.metrics``). A clean teacher (``trigger: none``) reports the ASR of ``cfg.eval_trigger``.
    """
    with torch_threads(cfg.threads):
        return _train_teacher(cfg, out_dir, progress)


def _train_teacher(cfg: TeacherConfig, out_dir: str | Path, progress: bool) -> dict[str, Any]:
    cfg = cfg.resolved()
    assert cfg.poison_rate is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, root=cfg.data_root)
    if cfg.target >= ds.num_classes:
        raise ValueError(f"target {cfg.target} out of range for {ds.num_classes} classes")
    (out / "config.yaml").write_text(cfg.to_yaml())

    def new_model() -> nn.Module:
        return create_model(cfg.model, num_classes=ds.num_classes, in_channels=ds.channels,
                            image_size=ds.image_size).to(device)

    trigger, attack = teacher_triggers(cfg, ds)
    x_train, y_train, n_poison = ds.x_train, ds.y_train, 0
    if trigger is not None:
        context: dict[str, Any] = {}
        if trigger.needs_surrogate:  # clean-label PGD needs a model trained on the same (clean) data
            surrogate = train_classifier(new_model(), ds.x_train, ds.y_train, ds, cfg,
                                         cfg.surrogate_epochs, gen, desc="surrogate", progress=progress)
            context = {"surrogate": surrogate.eval(), "mean": ds.mean, "std": ds.std, "adv_eps": ds.adv_eps}
        poisoned = poison_training_set(ds.x_train, ds.y_train, trigger, cfg.target, cfg.poison_rate,
                                       **context)
        x_train, y_train, n_poison = poisoned.x, poisoned.y, len(poisoned.indices)
    eval_data = make_eval_data(ds, attack, cfg.target)
    log = JsonLines(out / "metrics.jsonl")

    model = new_model()

    def on_epoch(epoch: int, loss: float) -> None:
        m = evaluate(model, eval_data)
        log.write({"epoch": epoch + 1, "loss": loss, **{k: v for k, v in m.items() if k != "per_class_acc"}})
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} | {format_metrics(m)}")

    assert cfg.cutout is not None
    train_classifier(model, x_train, y_train, ds, cfg, cfg.epochs, gen, on_epoch, desc="teacher",
                     progress=progress, cutout=round(cfg.cutout * ds.image_size))
    metrics = evaluate(model, eval_data)
    metrics.update(seconds=time.perf_counter() - t0, n_poison=n_poison, n_train=len(x_train))
    save_model(out, "teacher", model, {
        "kind": "teacher",
        "dataset": cfg.dataset,
        "data_root": cfg.data_root,
        "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
        "trigger": cfg.trigger,
        "trigger_options": cfg.trigger_options,
        "eval_trigger": cfg.attack_trigger,
        "target": cfg.target,
        "poison_rate": cfg.poison_rate,
        "n_poison": n_poison,
        "cutout": cfg.cutout,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
    })
    write_json(out / "metrics.json", metrics)
    return metrics

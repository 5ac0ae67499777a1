"""The one distillation loop every method runs on, with the SV and SR seams, evaluation, checkpoints
and exact resume."""

from __future__ import annotations

import os
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from tqdm.auto import tqdm

from abd.defense import SelfRetrospection, ShufflingVaccine
from abd.distill.base import KDContext, KDMethod, create_method
from abd.experiment.checkpoint import safe_torch_load, save_model
from abd.experiment.distill_config import DistillConfig
from abd.metrics import EvalData, evaluate
from abd.models.hooks import capture_features, feature_layers
from abd.utils import JsonLines, read_jsonl, write_json


def cosine_scheduler(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing over `total` steps (stepped once per round)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))


def make_optimizer(params, kind: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
    """Adam or SGD (with momentum) over `params`."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


class BranchError(ValueError):
    """A run cannot branch from the given directory (incompatible configuration or no branch state)."""


BRANCH_FILE = "sr_branch.pt"
BRANCH_PARENT = {"sr": "none", "abd": "sv"}  # an SR run branches from the same run without SR


def sr_start_round(rounds: int, fraction: float) -> int:
    """The first round of the SR phase: SR runs over the final `fraction` of `rounds` (at least one)."""
    return rounds - max(1, int(round(fraction * rounds)))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.as_tensor(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Distiller:
    """Runs `method` from `teacher` into `student`, with the defense of `cfg`, writing into `out_dir`.

    Files: ``curve.jsonl`` (periodic ACC/ASR and losses), ``checkpoint.pt`` (everything needed to resume,
    loaded with ``weights_only=True``), and at the end ``student.safetensors``/``student.json`` and
    ``metrics.json``. A run without SR also keeps ``sr_branch.pt``, its state where the SR phase would
    start: the same run with SR can branch from it (the paper's protocol, SPEC 6.1) and is then exactly
    the run that would have had SR from the start, with this run as its no-SR control.
    """

    def __init__(
        self,
        cfg: DistillConfig,
        ctx: KDContext,
        eval_data: EvalData,
        out_dir: str | Path,
        progress: bool = True,
    ) -> None:
        cfg = cfg.resolved()  # the method's SV/SR defaults applied, as in the written config.yaml
        self.cfg, self.ctx, self.eval_data = cfg, ctx, eval_data
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.teacher, self.student = ctx.teacher.eval(), ctx.student
        self.teacher.requires_grad_(False)
        self.method: KDMethod = create_method(cfg.method, ctx, cfg.method_options, cfg.preset)
        o = self.method.opts
        self.rounds = o.rounds
        ctx.total_rounds = self.rounds
        self.opt = make_optimizer(self.student.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay)
        self.sched = cosine_scheduler(self.opt, self.rounds)

        self.sv: ShufflingVaccine | None = None
        self.sv_pending = False
        self.sv_buffer: list[torch.Tensor] = []
        self.sv_report: dict[str, Any] = {}
        if cfg.use_sv:
            self.sv = cfg.sv.build(self.teacher, seed=cfg.seed + 17).to(ctx.device)
            self.sv_pending = cfg.sv.verify_rounds > 0
            self.sv.enabled = not self.sv_pending

        self.sr: SelfRetrospection | None = None
        self.branch_round = sr_start_round(self.rounds, cfg.sr.fraction)
        self.sr_start = self.rounds
        self.sr_started = False
        if cfg.use_sr:
            self.sr_start = self.branch_round
            self.sr = cfg.sr.build(self.student, self.teacher, self.method.divergence, self.sv,
                                   torch.Generator().manual_seed(cfg.seed + 29), ctx.mean, ctx.std,
                                   ctx.image_size)
        t_names, s_names = feature_layers(self.teacher), feature_layers(self.student)
        self.use_features = self.method.uses_features and len(t_names) == len(s_names) > 0
        self.t_names, self.s_names = t_names, s_names
        self.round = 0
        self.train_seconds = 0.0
        self.sr_seconds = 0.0
        self.extra: dict[str, Any] = {}
        if self.sr is not None and self.sr.suspect is not None:
            self.extra["sr_suspect"] = self.sr.suspect

    # ------------------------------------------------------------------ the loop
    def _sv_hook(self, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.sv is not None
        if not self.sv.enabled:
            return x.new_zeros(()), {}
        r, logs = self.sv.regularizer(x, t_logits)
        return -self.sv.coef * r, logs

    def _start_sr_phase(self) -> None:
        """Enter the SR phase; with an SR learning rate (the paper's protocol) the student gets a new Adam
        at that rate, cosine over the rest, and SV is switched off."""
        assert self.sr is not None
        self.sr_started = True
        if self.sr.clean_target:  # the KD target, also of the synthesizers' adversarial terms
            self.ctx.kd_target = self.sr.clean_targets
        if self.cfg.sr.lr is None:
            return
        self.opt = torch.optim.Adam(self.student.parameters(), lr=self.cfg.sr.lr)
        self.sched = cosine_scheduler(self.opt, self.rounds - self.sr_start)
        if self.sv is not None:
            self.sv.enabled = False

    def _student_step(self, x: torch.Tensor, sr_phase: bool) -> dict[str, float]:
        with ExitStack() as stack, torch.no_grad():
            t_feats = stack.enter_context(capture_features(self.teacher, self.t_names)) if self.use_features else []
            t_logits = t_raw = self.teacher(x)
            t_feats = list(t_feats)
        if self.ctx.kd_target is not None:  # set when the SR phase starts
            with torch.no_grad():
                t_logits = self.ctx.kd_target(x, t_raw)
        with ExitStack() as stack:
            s_feats = stack.enter_context(capture_features(self.student, self.s_names)) if self.use_features else []
            s_logits = self.student(x)
            s_feats = list(s_feats)
        per = self.method.student_loss(x, t_logits, s_logits, t_feats, s_feats)
        if self.sv is not None and self.method.sv_target == "student" and self.sv.enabled:
            with torch.no_grad():  # the loss of an uninformed (uniform) student bounds SV's repulsion
                cap = self.method.student_loss(x, t_logits, torch.zeros_like(s_logits), t_feats,
                                               [f.detach() for f in s_feats])
            loss = self.sv.student_loss(per, x, t_logits, cap=cap)
        else:
            loss = per.mean()
        self.opt.zero_grad(set_to_none=True)
        # the share of the KD batch on its most frequent teacher answer: 1.0 means the student is taught one
        # class (an image-wide trigger's synthetic batches did this); curve.jsonl keeps it
        share = float(torch.bincount(t_logits.argmax(1)).max()) / len(t_logits)
        logs: dict[str, float] = {"loss_s": float(loss.detach()), "kd_max_share": share}
        if sr_phase and self.sr is not None:
            t0 = time.perf_counter()
            loss = loss + self.sr.step(x, t_raw, target=t_logits)
            self.sr_seconds += time.perf_counter() - t0
        loss.backward()
        clip = self.method.opts.grad_clip
        if clip is not None and not (sr_phase and self.cfg.sr.mode == "hypergrad"):  # SPEC 6.2: no clipping
            nn.utils.clip_grad_norm_(self.student.parameters(), clip)
        self.opt.step()
        return logs

    def _maybe_verify(self, x: torch.Tensor) -> None:
        """Collect KD samples during the verification window, then run the SV on/off decision."""
        if self.sv is None or not self.sv_pending:
            return
        if self.round < self.cfg.sv.verify_rounds:
            if sum(len(b) for b in self.sv_buffer) < self.cfg.sv.verify_max_samples:
                self.sv_buffer.append(x.detach().cpu())
            return
        samples = torch.cat(self.sv_buffer)[: self.cfg.sv.verify_max_samples].to(self.ctx.device)
        report = self.sv.verify(samples)
        self.sv_report = {"round": self.round, **report.to_dict()}
        self.sv_pending, self.sv_buffer = False, []
        msg = (f"SV verification at round {self.round}: tail ratios {[round(t, 4) for t in report.trials]} "
               f"-> SV {'ON' if report.active else 'OFF (no low-divergence tail found)'}")
        self.log.write({"round": self.round, "event": "sv_verification", **self.sv_report})
        if self.progress:
            tqdm.write(msg)

    def evaluate(self) -> dict[str, Any]:
        m = evaluate(self.student, self.eval_data)
        m.pop("per_class_acc", None)
        return m

    def check_branch(self, parent: str | Path) -> Path:
        """The branch state of `parent`, after checking that this run is that run with SR added."""
        from abd.experiment.distill_config import DistillConfig

        parent = Path(parent)
        state, cfg_file = parent / BRANCH_FILE, parent / "config.yaml"
        if self.cfg.defense not in BRANCH_PARENT:
            raise BranchError(f"only SR runs (defense sr or abd) branch; this run's defense is {self.cfg.defense!r}")
        if not state.is_file() or not cfg_file.is_file():
            raise BranchError(f"{parent} has no {BRANCH_FILE} and config.yaml: branch from a run without SR "
                              "that reached its SR start round")
        try:
            pcfg = DistillConfig.load(cfg_file).resolved()
        except ValueError as e:  # e.g. written by an older version with other options
            raise BranchError(f"{cfg_file} is not a readable run configuration: {e}") from None
        want = BRANCH_PARENT[self.cfg.defense]
        if pcfg.defense != want:
            raise BranchError(f"a {self.cfg.defense!r} run branches from a {want!r} run, not {pcfg.defense!r}")
        ignore = {"defense", "sr", "eval_every", "checkpoint_every", "device", "threads"}
        mine, theirs = self.cfg.resolved().model_dump(exclude=ignore), pcfg.model_dump(exclude=ignore)
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        if diff:
            raise BranchError(f"{parent} differs from this run in {diff}: it is not the same run without SR")
        if sr_start_round(pcfg.method_options.get("rounds", self.rounds), pcfg.sr.fraction) != self.sr_start:
            raise BranchError(f"{parent} saved its branch state for SR fraction {pcfg.sr.fraction}, this run "
                              f"starts SR at round {self.sr_start}")
        return state

    def run(self, resume: bool = False, stop_after: int | None = None,
            branch_from: str | Path | None = None) -> dict[str, Any] | None:
        """Distill for the configured rounds (continuing from ``checkpoint.pt`` with ``resume``).

        ``branch_from``: the directory of the same run without SR; its state at the SR start round is
        loaded and only the SR phase runs (``resume`` wins when this run has its own checkpoint).
        ``stop_after`` simulates an interruption: the run checkpoints and returns None after that round.
        """
        ckpt = self.out / "checkpoint.pt"
        source = None
        if resume and ckpt.is_file():
            source = (ckpt, self.out / "curve.jsonl")
        elif branch_from is not None:
            source = (self.check_branch(branch_from), Path(branch_from) / "curve.jsonl")
        if source is not None:
            self._load_checkpoint(source[0])
            records = [r for r in read_jsonl(source[1]) if r.get("round", 0) <= self.round]
            self.log = JsonLines(self.out / "curve.jsonl")
            for r in records:
                self.log.write(r)
        else:
            self.log = JsonLines(self.out / "curve.jsonl")
            if self.sv is not None and self.eval_data.x_poison is not None:
                diag = self.sv.detection_auc(self.eval_data.x_poison.to(self.ctx.device),
                                             self.eval_data.x_clean.to(self.ctx.device))
                self.extra["sv_detection"] = diag
                self.log.write({"round": 0, "event": "sv_detection", **diag})
            self.log.write({"round": 0, **self.evaluate(), "seconds": 0.0})
        bar = tqdm(range(self.round, self.rounds), desc=f"{self.cfg.method}+{self.cfg.defense}",
                   unit="round", disable=not self.progress, initial=self.round, total=self.rounds)
        sv_hook = self._sv_hook if (self.sv is not None and self.method.sv_target == "synthesis") else None
        logs: dict[str, float] = {}
        for r in bar:
            self.round = r
            t0 = time.perf_counter()
            sr_phase = self.sr is not None and r >= self.sr_start
            if sr_phase and not self.sr_started:
                self.extra["sr_start_round"] = r
                self.extra["sr_start_metrics"] = self.evaluate()
                self._start_sr_phase()
            self.student.train()
            logs = dict(self.method.synthesize(sv_hook))
            for _ in range(self.method.opts.kd_steps):
                x = self.method.sample()
                self._maybe_verify(x)
                logs.update(self._student_step(x, sr_phase))
            self.sched.step()
            self.method.on_round_end(r)
            self.train_seconds += time.perf_counter() - t0
            self.round = r + 1
            if self.round % self.cfg.eval_every == 0 or self.round == self.rounds:
                m = self.evaluate()
                self.log.write({"round": self.round, **m, **logs, "sr": sr_phase,
                                "sv_on": bool(self.sv is not None and self.sv.enabled),
                                "seconds": self.train_seconds})
                bar.set_postfix(acc=f"{m['acc']:.3f}", asr=f"{m.get('asr', float('nan')):.3f}")
            if self.round % self.cfg.checkpoint_every == 0 and self.round < self.rounds:
                self._save_checkpoint(ckpt)
            if self.sr is None and self.round == self.branch_round:
                self._save_checkpoint(self.out / BRANCH_FILE)
            if stop_after is not None and self.round == stop_after:
                self._save_checkpoint(ckpt)
                return None
        return self._finish()

    # ------------------------------------------------------------------ outputs
    def _finish(self) -> dict[str, Any]:
        m = self.evaluate()
        m.update(
            seconds=self.train_seconds,
            seconds_per_step=self.train_seconds / max(1, self.rounds),
            rounds=self.rounds,
            method=self.cfg.method,
            defense=self.cfg.defense,
            sr_seconds=self.sr_seconds,
            device=str(self.ctx.device),
            **({"sv_verification": self.sv_report} if self.sv_report else {}),
            **self.extra,
        )
        save_model(self.out, "student", self.student, {
            "kind": "student",
            "teacher": self.cfg.teacher,
            "config": self.cfg.model_dump(mode="json"),
            "method_options": self.method.opts.model_dump(mode="json"),
        })
        tensors = {"samples": self.method.sample()[:64].detach().cpu().contiguous()}
        if self.sr is not None and self.sr.last_delta is not None:
            tensors["sr_delta"] = self.sr.last_delta.detach().cpu().contiguous()
        if self.sr is not None and self.sr.last_dense is not None:
            tensors["sr_dense"] = self.sr.last_dense.detach().cpu().contiguous()
        save_file(tensors, str(self.out / "artifacts.safetensors"))
        write_json(self.out / "metrics.json", m)
        if m.get("collapsed"):  # never silent: the log, the metrics and the tables say so
            msg = (f"collapsed: the student answers class {m.get('pred_max_class')} on "
                   f"{100 * m['pred_max_share']:.0f} % of the clean test set")
            self.log.write({"round": self.round, "event": "collapsed", "pred_max_class": m.get("pred_max_class"),
                            "pred_max_share": m["pred_max_share"]})
            if self.progress:
                tqdm.write(f"{self.out}: {msg}")
        ckpt = self.out / "checkpoint.pt"
        if ckpt.is_file():
            ckpt.unlink()  # the run is complete: its outputs replace the resume state
        return m

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "round": self.round,
            "train_seconds": self.train_seconds,
            "sr_seconds": self.sr_seconds,
            "student": self.student.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "sr_started": self.sr_started,
            "rng": _rng_state(),
            "method_modules": {k: m.state_dict() for k, m in self.method.modules().items()},
            "method_opts": {k: o.state_dict() for k, o in self.method.optimizers().items()},
            "method_extra": self.method.extra_state(),
            "extra": repr(self.extra),
        }
        if self.sv is not None:
            st["sv"] = {"copies": self.sv.copies.state_dict(), "enabled": self.sv.enabled,
                        "pending": self.sv_pending, "rng": self.sv.rng.get_state(),
                        "buffer": list(self.sv_buffer), "report": repr(self.sv_report),
                        "threshold": self.sv.threshold if self.sv.threshold is not None else float("nan")}
        if self.sr is not None and self.sr.generator is not None:
            st["sr_rng"] = self.sr.generator.get_state()
        if self.sr is not None and self.sr.last_delta is not None:  # warm_start continues from it
            st["sr_delta"] = self.sr.last_delta.detach()
        if self.sr is not None and self.sr.last_dense is not None:
            st["sr_dense"] = self.sr.last_dense.detach()
        return st

    def _save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self._state(), tmp)
        os.replace(tmp, path)

    def _load_checkpoint(self, path: Path) -> None:
        import ast

        st = safe_torch_load(path, map_location=self.ctx.device)
        self.round, self.train_seconds, self.sr_seconds = st["round"], st["train_seconds"], st["sr_seconds"]
        self.student.load_state_dict(st["student"])
        if st["sr_started"]:
            self._start_sr_phase()
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        for k, m in self.method.modules().items():
            m.load_state_dict(st["method_modules"][k])
        for k, o in self.method.optimizers().items():
            o.load_state_dict(st["method_opts"][k])
        self.method.load_extra_state(st["method_extra"])
        self.extra = ast.literal_eval(st["extra"])
        if self.sv is not None:
            sv = st["sv"]
            self.sv.copies.load_state_dict(sv["copies"])
            self.sv.enabled, self.sv_pending = sv["enabled"], sv["pending"]
            self.sv.rng.set_state(sv["rng"])
            self.sv_buffer = list(sv["buffer"])
            self.sv_report = ast.literal_eval(sv["report"])
            self.sv.threshold = None if sv["threshold"] != sv["threshold"] else sv["threshold"]
        if self.sr is not None and "sr_rng" in st:
            self.sr.generator.set_state(st["sr_rng"])
        if self.sr is not None and "sr_delta" in st:
            self.sr.last_delta = st["sr_delta"]
        if self.sr is not None and "sr_dense" in st:
            self.sr.last_dense = st["sr_dense"]
        _set_rng_state(st["rng"])

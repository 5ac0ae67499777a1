"""The one distillation loop every method runs on, with the SV and SR seams, evaluation, checkpoints
and exact resume."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from tqdm.auto import tqdm

from abd.checkpoint import safe_torch_load, save_model
from abd.defense import DEFENSES, Defense, create_defense
from abd.distill.base import KDContext, KDMethod, create_method
from abd.distill.config import DistillConfig
from abd.metrics import EvalData, collapse_level, evaluate
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


def branch_rounds(cfg: DistillConfig, rounds: int) -> set[int]:
    """The rounds at which a run saves its branch state: where a registered defense that starts late would
    start with the options the run was given for it (a study gives the same to all its runs) or its
    defaults for this method and preset; none when this run has a late part itself."""
    if cfg.branch_parent is not None:
        return set()
    out = set()
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        start = cls.late_start(cls.resolve(cfg.defense_options.get(name), cfg.method, cfg.preset), rounds)
        if start is not None:
            out.add(start)
    return out


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


PROFILE_PARTS = ("synthesis", "defense_synthesis", "sample", "teacher_forward", "student_step", "defense_step")


class Distiller:
    """Runs `method` from `teacher` into `student`, with the defense of `cfg`, writing into `out_dir`.

    Files: ``curve.jsonl`` (periodic ACC/ASR and losses), ``checkpoint.pt`` (everything needed to resume,
    loaded with ``weights_only=True``), and at the end ``student.safetensors``/``student.json`` and
    ``metrics.json``. A run without a late-starting defense also keeps ``sr_branch.pt``, its state where
    such a defense would start (the paper's SR phase): the same run with it can branch from there (the
    paper's protocol) and is then exactly the run that would have had it from the start, with this run as
    its control.
    """

    def __init__(
        self,
        cfg: DistillConfig,
        ctx: KDContext,
        eval_data: EvalData | None,
        out_dir: str | Path,
        progress: bool = True,
    ) -> None:
        given, cfg = cfg, cfg.resolved()  # the defenses' options for the method applied, as in config.yaml
        self.cfg, self.ctx, self.eval_data = cfg, ctx, eval_data
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        rounds = cfg.method_options["rounds"]
        options = {n: cfg.options_of(n) for n in cfg.components}
        self.defense: Defense | None = create_defense(cfg.defense, options, ctx, seed=cfg.seed, rounds=rounds)
        if self.defense is not None:  # (a) a teacher transform comes before any method or other defense
            ctx.teacher = self.defense.prepare_teacher(ctx.teacher)
        self.teacher, self.student = ctx.teacher.eval(), ctx.student
        self.teacher.requires_grad_(False)
        self.method: KDMethod = create_method(cfg.method, ctx, cfg.method_options, cfg.preset)
        o = self.method.opts
        self.rounds = o.rounds
        ctx.total_rounds = self.rounds
        self.opt = make_optimizer(self.student.parameters(), o.optimizer, o.lr, o.momentum, o.weight_decay)
        self.sched = cosine_scheduler(self.opt, self.rounds)
        if self.defense is not None:
            self.defense.attach(self.method)
        self.branch_rounds = branch_rounds(given, self.rounds)
        self.late_start = self._late_start(options)
        t_names, s_names = feature_layers(self.teacher), feature_layers(self.student)
        self.use_features = self.method.uses_features and len(t_names) == len(s_names) > 0
        self.t_names, self.s_names = t_names, s_names
        self.round = 0
        self.train_seconds = 0.0
        # where the training time goes (seconds): the method's synthesis, the defense's synthesis term, drawing
        # KD batches, the teacher's forward on them, the student's step, the defense's step term or target
        self.profile: dict[str, float] = dict.fromkeys(PROFILE_PARTS, 0.0)
        self.extra: dict[str, Any] = {}
        # the frozen teacher's answer on the last KD batch: a method that repeats the very same batch (ZSKT's
        # kd_steps) gets it once (the same values, so the run is bit-for-bit the same)
        self._teacher_on: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None

    def _late_start(self, options: dict[str, Any]) -> int | None:
        """The round from which this run's late-starting part acts (None: none starts late)."""
        starts = [DEFENSES.get(n).late_start(options[n], self.rounds) for n in self.cfg.components]
        starts = [s for s in starts if s is not None]
        return min(starts) if starts else None

    # ------------------------------------------------------------------ the loop
    def _phase_optimizer(self, lr: float, start: int) -> None:
        """A defense phase with its own rate (the paper's SR phase): a new Adam, cosine over the rest."""
        self.opt = torch.optim.Adam(self.student.parameters(), lr=lr)
        self.sched = cosine_scheduler(self.opt, self.rounds - start)

    def _begin_round(self, r: int) -> None:
        if self.defense is None:
            return
        phase = self.defense.begin_round(r)
        if phase is None:
            return
        self.extra[f"{phase.name}_start_round"] = r
        self.extra[f"{phase.name}_start_metrics"] = self.evaluate()
        if phase.lr is not None:
            self._phase_optimizer(phase.lr, r)

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, its time added to ``profile[part]``."""

        def run(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.profile[part] += time.perf_counter() - t0

        return run

    def _student_step(self, x: torch.Tensor) -> dict[str, float]:
        t0 = time.perf_counter()
        if self._teacher_on is not None and self._teacher_on[0] is x:
            t_raw, t_feats = self._teacher_on[1], self._teacher_on[2]
        else:
            with ExitStack() as stack, torch.no_grad():
                feats = stack.enter_context(capture_features(self.teacher, self.t_names)) if self.use_features else []
                t_raw = self.teacher(x)
                t_feats = list(feats)
            self._teacher_on = (x, t_raw, t_feats)
        t_logits = t_raw
        self.profile["teacher_forward"] += time.perf_counter() - t0
        if self.ctx.kd_target is not None:  # set when the SR phase starts (the defense's time)
            t0 = time.perf_counter()
            with torch.no_grad():
                t_logits = self.ctx.kd_target(x, t_raw)
            self.profile["defense_step"] += time.perf_counter() - t0
        with ExitStack() as stack:
            s_feats = stack.enter_context(capture_features(self.student, self.s_names)) if self.use_features else []
            s_logits = self.student(x)
            s_feats = list(s_feats)
        per = self.method.student_loss(x, t_logits, s_logits, t_feats, s_feats)

        def cap() -> torch.Tensor:  # the loss of an uninformed (uniform) student
            with torch.no_grad():
                return self.method.student_loss(x, t_logits, torch.zeros_like(s_logits), t_feats,
                                                [f.detach() for f in s_feats])

        loss = self.defense.reduce_student_loss(per, x, t_logits, cap) if self.defense is not None else None
        if loss is None:
            loss = per.mean()
        self.opt.zero_grad(set_to_none=True)
        # the share of the KD batch on its most frequent teacher answer: 1.0 means the student is taught one
        # class (an image-wide trigger's synthetic batches did this); curve.jsonl keeps it
        share = float(torch.bincount(t_logits.argmax(1)).max()) / len(t_logits)
        logs: dict[str, float] = {"loss_s": float(loss.detach()), "kd_max_share": share}
        if self.defense is not None:
            t0 = time.perf_counter()
            term = self.defense.step_term(x, t_raw, t_logits, self.round)
            if term is not None:
                loss = loss + term
            self.profile["defense_step"] += time.perf_counter() - t0
        loss.backward()
        clip = self.method.opts.grad_clip
        if clip is not None and (self.defense is None or self.defense.clip_grad()):
            nn.utils.clip_grad_norm_(self.student.parameters(), clip)
        self.opt.step()
        return logs

    def _observe(self, x: torch.Tensor) -> None:
        """Show the defense the KD batch (e.g. SV's verification window); log what it reports."""
        if self.defense is None:
            return
        for event in self.defense.observe(x, self.round):
            msg = event.pop("message", None)
            self.log.write({"round": self.round, **event})
            if msg and self.progress:
                tqdm.write(msg)

    def evaluate(self) -> dict[str, Any]:
        if self.eval_data is None:  # no test data: the run only trains (abd.distill without a dataset's tests)
            return {}
        m = evaluate(self.student, self.eval_data)
        m.pop("per_class_acc", None)
        return m

    def check_branch(self, parent: str | Path) -> Path:
        """The branch state of `parent`, after checking that this run is that run with its late-starting
        defense (SR with ``fraction`` < 1) added."""
        from abd.distill.config import DistillConfig

        parent = Path(parent)
        state, cfg_file = parent / BRANCH_FILE, parent / "config.yaml"
        want = self.cfg.branch_parent
        if want is None or self.late_start is None:
            raise BranchError(f"only a run with a late-starting defense (e.g. SR with fraction < 1) branches; "
                              f"this run's defense is {self.cfg.defense!r}")
        if not state.is_file() or not cfg_file.is_file():
            raise BranchError(f"{parent} has no {BRANCH_FILE} and config.yaml: branch from a run without the "
                              "late defense that reached its start round")
        try:
            pcfg = DistillConfig.load(cfg_file).resolved()
        except ValueError as e:  # e.g. written by an older version with other options
            raise BranchError(f"{cfg_file} is not a readable run configuration: {e}") from None
        if pcfg.components != DistillConfig(teacher="-", defense=want).components:
            raise BranchError(f"a {self.cfg.defense!r} run branches from a {want!r} run, not {pcfg.defense!r}")
        ignore = {"defense", "defense_options", "eval_every", "checkpoint_every", "device", "threads"}
        mine, theirs = self.cfg.resolved().model_dump(exclude=ignore), pcfg.model_dump(exclude=ignore)
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        mine_opts = self.cfg.resolved().defense_options
        diff += [f"defense_options.{n}" for n in pcfg.components if mine_opts.get(n) != pcfg.defense_options.get(n)]
        if diff:
            raise BranchError(f"{parent} differs from this run in {diff}: it is not the same run without "
                              "its late defense")
        saved = safe_torch_load(state, map_location="cpu")["round"]
        if saved != self.late_start:
            raise BranchError(f"{parent} saved its branch state at round {saved}, this run's late defense "
                              f"starts at round {self.late_start}")
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
        text = self.cfg.to_yaml()  # written once the checks passed (a refused branch leaves the folder as it was)
        if not (self.out / "config.yaml").is_file() or (self.out / "config.yaml").read_text() != text:
            (self.out / "config.yaml").write_text(text)
        if source is not None:
            self._load_checkpoint(source[0])
            records = [r for r in read_jsonl(source[1]) if r.get("round", 0) <= self.round]
            self.log = JsonLines(self.out / "curve.jsonl")
            for r in records:
                self.log.write(r)
        else:
            self.log = JsonLines(self.out / "curve.jsonl")
            diagnosed = self.defense.diagnose(self.eval_data) if (self.defense is not None and
                                                                 self.eval_data is not None) else {}
            for event, diag in diagnosed.items():
                msg = diag.pop("message", None)  # e.g. a defense that did nothing says so
                self.extra[event] = diag
                self.log.write({"round": 0, "event": event, **diag})
                if msg and self.progress:
                    tqdm.write(f"{self.out}: {msg}")
            self.log.write({"round": 0, **self.evaluate(), "seconds": 0.0})
        bar = tqdm(range(self.round, self.rounds), desc=f"{self.cfg.method}+{self.cfg.defense}",
                   unit="round", disable=not self.progress, initial=self.round, total=self.rounds)
        d = self.defense
        hook = self._timed("defense_synthesis", d.synthesis_term) if (d is not None and d.has_synthesis_term) \
            else None
        logs: dict[str, float] = {}
        prof = self.profile
        for r in bar:
            self.round = r
            t0 = time.perf_counter()
            self._begin_round(r)
            self.student.train()
            t1 = time.perf_counter()
            inner = prof["defense_synthesis"]
            logs = dict(self.method.synthesize(hook))
            prof["synthesis"] += time.perf_counter() - t1 - (prof["defense_synthesis"] - inner)
            for _ in range(self.method.opts.kd_steps):
                t1 = time.perf_counter()
                x = self.method.sample()
                self._observe(x)
                t2 = time.perf_counter()
                prof["sample"] += t2 - t1
                inner = prof["teacher_forward"] + prof["defense_step"]
                logs.update(self._student_step(x))
                prof["student_step"] += time.perf_counter() - t2 - (prof["teacher_forward"] + prof["defense_step"]
                                                                   - inner)
            self.sched.step()
            self.method.on_round_end(r)
            self.train_seconds += time.perf_counter() - t0
            self.round = r + 1
            if self.round % self.cfg.eval_every == 0 or self.round == self.rounds:
                m = self.evaluate()
                fields = self.defense.log_fields() if self.defense is not None else {}
                self.log.write({"round": self.round, **m, **logs, **fields, "seconds": self.train_seconds})
                if m:
                    bar.set_postfix(acc=f"{m['acc']:.3f}", asr=f"{m.get('asr', float('nan')):.3f}")
            if self.round % self.cfg.checkpoint_every == 0 and self.round < self.rounds:
                self._save_checkpoint(ckpt)
            if self.round in self.branch_rounds:
                self._save_checkpoint(self.out / BRANCH_FILE)
            if stop_after is not None and self.round == stop_after:
                self._save_checkpoint(ckpt)
                return None
        return self._finish()

    # ------------------------------------------------------------------ outputs
    def _finish(self) -> dict[str, Any]:
        if self.defense is not None:  # (e) a post-process of the student comes before its evaluation
            self.defense.finish(self.student)
        m = self.evaluate()
        m.update(
            seconds=self.train_seconds,
            seconds_per_step=self.train_seconds / max(1, self.rounds),
            profile={**self.profile, "other": self.train_seconds - sum(self.profile.values())},
            rounds=self.rounds,
            method=self.cfg.method,
            defense=self.cfg.defense,
            device=str(self.ctx.device),
            **(self.defense.metrics() if self.defense is not None else {}),
            **self.extra,
        )
        save_model(self.out, "student", self.student, {
            "kind": "student",
            "teacher": self.cfg.teacher,
            "config": self.cfg.model_dump(mode="json"),
            "method_options": self.method.opts.model_dump(mode="json"),
        })
        tensors = {"samples": self.method.sample()[:64].detach().cpu().contiguous(),
                   **(self.defense.artifacts() if self.defense is not None else {})}
        save_file(tensors, str(self.out / "artifacts.safetensors"))
        write_json(self.out / "metrics.json", m)
        level = collapse_level(m.get("pred_max_share"))
        if level:  # never silent: the log, the metrics and the tables say so
            event = "collapsed" if level == "collapsed" else "partial_collapse"
            msg = (f"{event}: the student answers class {m.get('pred_max_class')} on "
                   f"{100 * m['pred_max_share']:.0f} % of the clean test set")
            self.log.write({"round": self.round, "event": event, "pred_max_class": m.get("pred_max_class"),
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
            "profile": dict(self.profile),
            "student": self.student.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": _rng_state(),
            "method_modules": {k: m.state_dict() for k, m in self.method.modules().items()},
            "method_opts": {k: o.state_dict() for k, o in self.method.optimizers().items()},
            "method_extra": self.method.extra_state(),
            "extra": repr(self.extra),
        }
        if self.defense is not None:
            st["defense"] = self.defense.save_parts()
        return st

    def _save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self._state(), tmp)
        os.replace(tmp, path)

    def _load_checkpoint(self, path: Path) -> None:
        import ast

        st = safe_torch_load(path, map_location=self.ctx.device)
        if "sr_started" in st:
            raise BranchError(f"{path} was written by an earlier version of abd (before defenses were plug-ins): "
                              "start the run afresh")
        self.round, self.train_seconds = st["round"], st["train_seconds"]
        self.profile.update(st.get("profile", {}))
        self.student.load_state_dict(st["student"])
        if self.defense is not None:  # a part the state lacks (a branch of the run without it) starts fresh
            self.defense.load_parts(st.get("defense", {}))
            phase = self.defense.active_phase()
            if phase is not None and phase.lr is not None:
                self._phase_optimizer(phase.lr, self.late_start if self.late_start is not None else 0)
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        for k, m in self.method.modules().items():
            m.load_state_dict(st["method_modules"][k])
        for k, o in self.method.optimizers().items():
            o.load_state_dict(st["method_opts"][k])
        self.method.load_extra_state(st["method_extra"])
        self.extra = ast.literal_eval(st["extra"])
        _set_rng_state(st["rng"])

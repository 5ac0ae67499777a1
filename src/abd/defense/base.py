"""The defense interface and registry.

A defense attaches to the distillation engine through hooks, each optional:

(a) ``prepare_teacher``: transform the teacher before any method sees it (e.g. CLP's channel pruning);
(b) ``synthesis_term``: a term on a synthesizing method's loss (the Shuffling Vaccine);
(c) the KD target, through ``KDContext.kd_target`` (Self-Retrospection's clean target);
(d) ``step_term``: a term on the student's step (Self-Retrospection's unlearning), ``reduce_student_loss``
    for methods on fixed data (the Shuffling Vaccine's OOD form), and ``begin_round``, which may start a
    phase with its own student optimizer (the paper's SR phase);
(e) ``finish``: post-process the student (e.g. CLP on the student).

A defense owns its state for checkpoints (``state_dict``/``load_state_dict``), its typed ``Options``, the
options it uses with particular KD methods (``method_defaults``) and the paper's values (``paper``). The
engine calls the hooks and knows no defense by name; a composition (``sv+sr``) runs its parts in the order
of their ``order``, and ``abd`` is the name of the composition ``sv+sr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from abd.config import Config
from abd.registry import Registry

if TYPE_CHECKING:
    from abd.distill.base import KDContext, KDMethod
    from abd.metrics import EvalData

DEFENSES: Registry[type[Defense]] = Registry("defense")
COMPOSITIONS: dict[str, str] = {"abd": "sv+sr"}  # named compositions (the paper's ABD = SV + SR)


def register_defense(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator: register a defense under `name` (also its ``name`` attribute)."""
    return DEFENSES.register_named(name)


@dataclass
class Phase:
    """A phase a defense starts at some round: the engine records the metrics there under ``name`` and,
    with ``lr``, gives the student a fresh Adam at that rate (cosine over the remaining rounds), during which
    the other parts of a composition are suspended."""

    name: str
    lr: float | None = None


class Defense:
    """Base class of defenses: override the hooks the defense needs (every hook's default does nothing)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[Config]] = Config
    order: ClassVar[int] = 50  # position in a composition: teacher transforms first
    paper: ClassVar[dict[str, Any]] = {}  # the published algorithm's option values (``--preset paper``)
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # method -> options used unless the run sets them

    def __init__(self, opts: Config, ctx: KDContext, seed: int = 0, rounds: int = 1) -> None:
        self.opts, self.ctx, self.seed, self.rounds = opts, ctx, seed, rounds

    # ---------------------------------------------------------------- options
    @classmethod
    def resolve(cls, given: dict[str, Any] | None = None, method: str = "", preset: str = "cpu") -> Config:
        """The full options: ``given`` over the paper's values (``preset: paper``) or this method's defaults."""
        base = cls.paper if preset == "paper" else cls.method_defaults.get(method, {})
        return cls.Options.model_validate({**base, **(given or {})})

    @classmethod
    def late_start(cls, opts: Config, rounds: int) -> int | None:
        """The round from which this defense acts when it starts after round 0 (None: from the start). A run
        without it saves its state at that round, and the run with it can branch from there."""
        return None

    # ---------------------------------------------------------------- hooks
    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """(a) The teacher every method and other defense sees (default: unchanged)."""
        return teacher

    def attach(self, method: KDMethod) -> None:
        """Called once the KD method is built (defenses that use its divergence or seams build here)."""

    @property
    def has_synthesis_term(self) -> bool:
        """Whether ``synthesis_term`` contributes (methods skip the hook's cost otherwise)."""
        return False

    def synthesis_term(self, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """(b) A term the synthesizer minimizes on batch `x` (teacher logits `t_logits`), and its logs."""
        return x.new_zeros(()), {}

    def reduce_student_loss(self, per_sample: torch.Tensor, x: torch.Tensor, t_logits: torch.Tensor,
                            cap: Callable[[], torch.Tensor]) -> torch.Tensor | None:
        """(d) For methods on fixed data: the student loss from its per-sample values (None: the mean).
        ``cap()`` gives the per-sample loss of an uninformed (uniform) student."""
        return None

    def begin_round(self, round_idx: int) -> Phase | None:
        """Called before each round; returns a Phase when one starts at this round."""
        return None

    def active_phase(self) -> Phase | None:
        """The phase under way (after a resume the engine rebuilds its optimizer from it)."""
        return None

    def suspend(self) -> None:
        """Another part of the composition started an exclusive phase: stop acting."""

    def observe(self, x: torch.Tensor, round_idx: int) -> list[dict[str, Any]]:
        """Sees every KD batch before the student step; returns events for the run log."""
        return []

    def step_term(self, x: torch.Tensor, t_raw: torch.Tensor, target: torch.Tensor,
                  round_idx: int) -> torch.Tensor | None:
        """(d) A term added to the student's loss (called after ``zero_grad``; may also add to ``.grad``)."""
        return None

    def clip_grad(self) -> bool:
        """Whether the method's gradient clipping applies to this step."""
        return True

    def finish(self, student: nn.Module) -> None:
        """(e) Post-process the student after the last round."""

    # ---------------------------------------------------------------- records
    def diagnose(self, eval_data: EvalData) -> dict[str, Any]:
        """Diagnostics on the evaluation data at the start of a run, by event name (written to the metrics
        and the log; a ``message`` in one is printed instead, e.g. that the defense did nothing)."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """What the defense adds to ``metrics.json``."""
        return {}

    def log_fields(self) -> dict[str, Any]:
        """Fields of each evaluation record in ``curve.jsonl`` (e.g. whether a part is on)."""
        return {}

    def artifacts(self) -> dict[str, torch.Tensor]:
        """Tensors saved in ``artifacts.safetensors`` (e.g. a synthesized trigger)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``."""

    def save_parts(self) -> dict[str, Any]:
        """The state of every part, by name (what a checkpoint holds)."""
        return {self.name: self.state_dict()}

    def load_parts(self, saved: dict[str, Any]) -> None:
        """Restore the parts `saved` holds; a part it lacks starts fresh (a run branching from the same run
        without that part)."""
        if self.name in saved:
            self.load_state_dict(saved[self.name])


class Composition(Defense):
    """Several defenses on one run; each hook calls the parts in order (``order``)."""

    def __init__(self, parts: list[Defense]) -> None:
        self.parts = parts
        self.name = "+".join(p.name for p in parts)

    def prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        for p in self.parts:
            teacher = p.prepare_teacher(teacher)
        return teacher

    def attach(self, method: KDMethod) -> None:
        for p in self.parts:
            p.attach(method)

    @property
    def has_synthesis_term(self) -> bool:
        return any(p.has_synthesis_term for p in self.parts)

    def synthesis_term(self, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, logs = x.new_zeros(()), {}
        for p in self.parts:
            if p.has_synthesis_term:
                term, lg = p.synthesis_term(x, t_logits)
                total, logs = total + term, {**logs, **lg}
        return total, logs

    def reduce_student_loss(self, per_sample, x, t_logits, cap):
        for p in self.parts:
            out = p.reduce_student_loss(per_sample, x, t_logits, cap)
            if out is not None:
                return out
        return None

    def begin_round(self, round_idx: int) -> Phase | None:
        started = None
        for p in self.parts:
            phase = p.begin_round(round_idx)
            if phase is not None:
                started = phase
                if phase.lr is not None:
                    self._suspend_others(p)
        return started

    def _suspend_others(self, owner: Defense) -> None:
        for q in self.parts:
            if q is not owner:
                q.suspend()

    def active_phase(self) -> Phase | None:
        for p in self.parts:
            phase = p.active_phase()
            if phase is not None:
                return phase
        return None

    def suspend(self) -> None:
        for p in self.parts:
            p.suspend()

    def observe(self, x: torch.Tensor, round_idx: int) -> list[dict[str, Any]]:
        return [e for p in self.parts for e in p.observe(x, round_idx)]

    def step_term(self, x, t_raw, target, round_idx):
        total = None
        for p in self.parts:
            term = p.step_term(x, t_raw, target, round_idx)
            if term is not None:
                total = term if total is None else total + term
        return total

    def clip_grad(self) -> bool:
        return all(p.clip_grad() for p in self.parts)

    def finish(self, student: nn.Module) -> None:
        for p in self.parts:
            p.finish(student)

    def diagnose(self, eval_data: EvalData) -> dict[str, Any]:
        return {k: v for p in self.parts for k, v in p.diagnose(eval_data).items()}

    def metrics(self) -> dict[str, Any]:
        return {k: v for p in self.parts for k, v in p.metrics().items()}

    def log_fields(self) -> dict[str, Any]:
        return {k: v for p in self.parts for k, v in p.log_fields().items()}

    def artifacts(self) -> dict[str, torch.Tensor]:
        return {k: v for p in self.parts for k, v in p.artifacts().items()}

    def save_parts(self) -> dict[str, Any]:
        return {p.name: p.state_dict() for p in self.parts}

    def load_parts(self, saved: dict[str, Any]) -> None:
        for p in self.parts:
            p.load_parts(saved)
        for p in self.parts:  # a phase with its own optimizer under way: the others stay suspended
            phase = p.active_phase()
            if phase is not None and phase.lr is not None:
                self._suspend_others(p)


def components(defense: str) -> list[str]:
    """The registered defenses a name stands for, in composition order: ``none`` -> [], ``abd`` -> [sv, sr],
    ``clp+abd`` -> [clp, sv, sr]. Unknown names fail with a suggestion."""
    if defense in ("", "none"):
        return []
    names: list[str] = []
    for part in defense.split("+"):
        part = part.strip()
        if part not in COMPOSITIONS and part not in DEFENSES:
            import difflib

            from abd.registry import UnknownNameError

            close = difflib.get_close_matches(part, defense_names(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(f"unknown defense {part!r}.{hint} Known: {', '.join(defense_names())}, or "
                                   "several joined with '+'")
        expanded = COMPOSITIONS[part].split("+") if part in COMPOSITIONS else [part]
        for name in expanded:
            if name in names:
                raise ValueError(f"defense {defense!r} names {name!r} twice")
            names.append(name)
    return sorted(names, key=lambda n: DEFENSES.get(n).order)


def defense_names() -> list[str]:
    """Every name ``--defense`` takes alone: none, the registered defenses and the named compositions."""
    return ["none", *DEFENSES.names(), *sorted(COMPOSITIONS)]


def branch_parent(defense: str, options: dict[str, Config], rounds: int) -> str | None:
    """The defense of the run this one branches from: the same composition without its parts that start
    late (None when no part does)."""
    parts = components(defense)
    late = [n for n in parts if DEFENSES.get(n).late_start(options[n], rounds) is not None]
    if not late:
        return None
    rest = [n for n in parts if n not in late]
    for alias, expansion in COMPOSITIONS.items():  # a named composition keeps its name
        if expansion.split("+") == rest:
            return alias
    return "+".join(rest) or "none"


def create_defense(defense: str, options: dict[str, Config], ctx: KDContext, seed: int = 0,
                   rounds: int = 1) -> Defense | None:
    """The defense a run's name stands for, built from its resolved options (None: no defense)."""
    parts = [DEFENSES.get(n)(options[n], ctx, seed=seed, rounds=rounds) for n in components(defense)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Composition(parts)

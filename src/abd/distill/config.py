"""Typed configuration of a distillation run and of its defenses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from abd.attacks.config import TeacherConfig
from abd.config import Config, _check_registered
from abd.defense import SROptions, SVOptions  # noqa: F401  (re-exported: the options of the two plug-ins)

# Options of the Shuffling Vaccine and Self-Retrospection that were removed (measured dead ends, or fixed at
# the one value every default and the paper use). A config that names one is read when its value is the one
# the code now fixes and refused otherwise, so that an old run never silently changes meaning.
_FIXED_SV = {"n_copies": 3, "kinds": ["conv"], "verify_max_samples": 4096, "tail_std": 3.0, "tail_ratio": 0.02,
             "max_trials": 8, "shuffle_grad": True}
_SV_VARIANTS = {"tail": {"mask": "tail", "robust": True, "penalty": "log", "margin": 2.0},
                "paper": {"mask": "argmax", "robust": False, "penalty": "d", "margin": 0.0}}
_FIXED_SR = {"inner_step": 0.1, "k": 5, "pert_model": "teacher", "objective": "divergence", "mix_portion": 1.0,
             "max_abs": None, "clean_dilate": 2, "vaccine_weight": 0.0}
_SR_BY_MODE = {"consistency": {"warm_start": True, "reuse_delta": True, "divergence": "kl", "targeted": True},
               "hypergrad": {"warm_start": False, "reuse_delta": False, "divergence": "method", "out_portion": 0.02}}
_SR_IGNORED = {"consistency": {"out_portion", "radius"}, "hypergrad": {"radius", "targeted"}}
# Options added after this form was last written, with the value that repeats what the code did before them:
# a config without them was made without the SV floor, class balance and BN prior and without SR's image-wide
# candidate (one naming SR's additive `dense` candidate, replaced by `blend`, is refused by SROptions).
# Filling in today's defaults instead would let a run of the earlier defaults pass for one of today's (and
# be reused as such).
_ADDED_SV = {"floor": None, "balance": 0.0, "bn_prior": 0.0}
_ADDED_SR = {"blend": None, "blend_gate": None}


def _removed(name: str, key: str, value: Any, want: Any) -> None:
    if value != want:
        raise ValueError(f"{name} option {key}={value!r} was removed (this version fixes {key}={want!r}; "
                         "docs/defenses.md records the measurement): re-run with the current options")


def migrate_legacy(data: dict[str, Any], used: list[str] | None = None) -> dict[str, Any]:
    """A configuration written before defenses became plug-ins (top-level ``sv``/``sr`` mappings, with
    options since removed) in the current form, or a ValueError naming the option whose value the code no
    longer supports. Options added since that form (``_ADDED_SV``, ``_ADDED_SR``) and absent from it take
    the value that repeats the run as it was made, not today's default. Options of a defense the run does
    not use (``used``; default: from its ``defense``) are dropped unread."""
    data = dict(data)
    sv, sr = data.pop("sv", None), data.pop("sr", None)
    if sv is None and sr is None:
        return data
    from abd.defense import components

    used = components(str(data.get("defense", "none"))) if used is None else used
    opts = dict(data.get("defense_options") or {})
    if "sv" in used and sv:
        sv = dict(sv)
        for k, want in _FIXED_SV.items():
            if k in sv:
                _removed("sv", k, sv.pop(k), want)
        old = {k: sv.pop(k) for k in ("mask", "robust", "penalty", "margin") if k in sv}
        variant = "paper" if old.get("mask") == "argmax" else "tail"
        for k, v in old.items():
            _removed("sv", k, v, _SV_VARIANTS[variant][k])
        opts["sv"] = {**_ADDED_SV, **sv, **({"variant": variant} if old else {})}
    if "sr" in used and sr:
        sr = dict(sr)
        mode = sr.get("mode", "consistency")
        if mode == "plain":
            raise ValueError("sr mode 'plain' was removed: re-run with mode consistency or hypergrad")
        for k, want in {**_FIXED_SR, **_SR_BY_MODE[mode]}.items():
            if k in sr:
                value = sr.pop(k)
                if not (k == "targeted" and sr.get("dense") is None):  # no dense candidate: nothing targeted
                    _removed("sr", k, value, want)
        for k in _SR_IGNORED[mode]:
            sr.pop(k, None)
        if mode == "hypergrad":  # the consistency mode's options were inert there
            for k in ("l1", "support", "clean_target", "dense", "blend", "blend_gate"):
                sr.pop(k, None)
        else:
            sr = {**_ADDED_SR, **sr}
        opts["sr"] = sr
    data["defense_options"] = opts
    return data


def check_defense_options(v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Options per defense name, each checked against its defense's options (typos fail at the edge)."""
    from pydantic import ValidationError

    from abd.defense import DEFENSES

    for name, opts in v.items():
        try:
            DEFENSES.get(name).Options.model_validate(opts or {})
        except ValidationError as e:  # name the defense: its options' own report does not
            errors = "; ".join((f"option {'.'.join(map(str, err['loc']))}: " if err["loc"] else "")
                               + err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise ValueError(f"defense {name!r}: {errors}") from None
    return v


class DistillConfig(Config):
    """One distillation run: teacher directory, method (+ options), student, defense (+ options)."""

    teacher: str
    method: str = "zskt"
    defense: str = Field("none", description="a registered defense, a named composition (abd = sv+sr) or a "
                         "'+'-joined composition")
    student: str = "lenet5_half"
    preset: Literal["cpu", "paper"] = "cpu"
    method_options: dict[str, Any] = Field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per defense name (ignored for defenses the run does not use)")
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    data_root: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int = Field(1, ge=0, description="torch CPU threads (0: torch's default); 1 is fastest for "
                         "small nets on a shared 2-core machine")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from abd.distill import METHODS

        METHODS.get(v)
        return v

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        return _check_registered("model", v)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return migrate_legacy(data) if isinstance(data, dict) else data

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: str) -> str:
        from abd.defense import components

        components(v)
        return v

    @field_validator("defense_options")
    @classmethod
    def _defense_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return check_defense_options(v)

    @property
    def components(self) -> list[str]:
        """The registered defenses this run uses, in composition order."""
        from abd.defense import components

        return components(self.defense)

    def options_of(self, name: str) -> Any:
        """The resolved options of defense `name` (given options over the method's or the paper's)."""
        from abd.defense import DEFENSES

        return DEFENSES.get(name).resolve(self.defense_options.get(name), self.method, self.preset)

    @property
    def branch_parent(self) -> str | None:
        """The defense of the run this one can branch from (None: every part starts at round 0)."""
        from abd.defense import branch_parent

        rounds = self.resolved().method_options["rounds"]
        return branch_parent(self.defense, {n: self.options_of(n) for n in self.components}, rounds)

    def resolved(self) -> DistillConfig:
        """This config with every method option spelled out (preset and defaults included) and, for each
        defense the run uses, its options with the method's or the paper's values (``Defense.resolve``) for
        the fields the run did not set, so that the ``config.yaml`` written next to a result repeats it
        exactly even after a default changes. Options of defenses the run does not use are dropped."""
        from abd.distill.base import resolve_options

        opts = resolve_options(self.method, self.method_options, self.preset).model_dump(mode="json")
        defense = {n: self.options_of(n).model_dump(mode="json") for n in self.components}
        return self.model_copy(update={"method_options": dict(sorted(opts.items())), "defense_options": defense})


class StudyConfig(Config):
    """What a multi-run study shares: one poisoned teacher per seed, one student, the defenses' options."""

    seeds: int = Field(1, ge=1)
    dataset: str = "mnist5k"
    teacher_model: str = "lenet5"
    student: str = "lenet5_half"
    trigger: str = "badnet_grid"
    defense_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per defense name, given to every run that uses that defense")
    eval_every: int = Field(50, ge=1)
    device: str = "auto"
    threads: int = Field(1, ge=0, description="torch CPU threads (0: torch's default)")
    workers: int = Field(2, ge=1, description="runs at a time, one process each (numbers do not depend on it)")
    engine: Literal["local", "ray"] = Field("local", description="local processes, or Ray tasks (pip install "
                                            "'abd[ray]')")
    address: str | None = Field(None, description="with engine ray: the cluster's address (default: a local "
                                "Ray instance with `workers` CPUs)")

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return migrate_legacy(data, used=["sv", "sr"]) if isinstance(data, dict) else data

    @field_validator("defense_options")
    @classmethod
    def _defense_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return check_defense_options(v)

    def teacher_config(self, seed: int) -> TeacherConfig:
        """The teacher of seed `seed`."""
        return TeacherConfig(dataset=self.dataset, model=self.teacher_model, trigger=self.trigger, seed=seed,
                             device=self.device, threads=self.threads)

    def distill_config(self, teacher_dir: str, method: str, defense: str, seed: int,
                       method_options: dict[str, Any] | None = None) -> DistillConfig:
        """One run of the study."""
        return DistillConfig(
            teacher=str(teacher_dir), method=method, defense=defense, student=self.student,
            method_options=method_options or {}, defense_options=self.defense_options, eval_every=self.eval_every,
            checkpoint_every=max(self.eval_every, 100), seed=seed, device=self.device, threads=self.threads,
        )

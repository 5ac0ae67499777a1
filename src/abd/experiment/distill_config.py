"""Typed configuration of a distillation run and of its defenses."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import Field, field_validator

from abd.experiment.config import Config, TeacherConfig, _check_registered

C = TypeVar("C", bound=Config)


class SVOptions(Config):
    """Shuffling Vaccine (SPEC 5). Defaults fit the LeNet teachers (the paper's n_layers=5 suits WRN-16-2)."""

    coef: float = Field(0.1, ge=0, description="lambda, weight of the SV term")
    n_copies: int = Field(3, ge=1)
    n_layers: int = Field(1, description="shuffle the last n shufflable layers (negative: the first |n|)")
    kinds: list[Literal["conv", "linear"]] = ["conv"]
    verify_rounds: int = Field(0, ge=0, description="collect samples for this many rounds, then verify "
                               "(0: SV on from the start, no verification, as in the paper's CIFAR-10 ZSKT runs; "
                               "on mnist5k the test passed a clean teacher and failed a backdoored one)")
    verify_max_samples: int = Field(4096, ge=16)
    tail_std: float = Field(3.0, gt=0)
    tail_ratio: float = Field(0.02, ge=0, lt=1)
    max_trials: int = Field(8, ge=1)
    shuffle_grad: bool = True
    robust: bool = Field(True, description="median/MAD tail statistics (paper: mean/std)")
    mask: Literal["argmax", "tail"] = Field("tail", description="suspicion mask (see ShufflingVaccine)")
    margin: float = Field(2.0, ge=0, description="flag only inputs this many decades of divergence below the "
                          "median synthetic sample (0: the tail threshold alone)")
    penalty: Literal["d", "log"] = Field("log", description="repel flagged synthetic inputs by d (paper) or log10 d")
    floor: float | None = Field(-4.0, description="also flag every input whose log10 divergence is below this "
                                "absolute value, whatever its batch (None: relative to the batch alone, which "
                                "flags nothing when the whole synthetic batch is trigger-like)")
    balance: float = Field(1.0, ge=0, description="weight of a class-balance term (DAFL's information entropy) on "
                           "the teacher's answers over each synthetic batch: a synthesizer drawn to one class "
                           "(a backdoor's target, for an image-wide trigger) is pushed to the others (0: off)")
    bn_prior: float = Field(1.0, ge=0, description="weight of the distance between each synthetic batch's feature "
                            "statistics and the teacher's BatchNorm running statistics (DeepInversion's prior)")

    def build(self, teacher: Any, seed: int = 0) -> Any:
        """The :class:`~abd.defense.ShufflingVaccine` these options describe (on from the start; the engine
        switches it off while verification is pending)."""
        from abd.defense import ShufflingVaccine

        return ShufflingVaccine(
            teacher, n_copies=self.n_copies, n_layers=self.n_layers, kinds=tuple(self.kinds), coef=self.coef,
            tail_std=self.tail_std, tail_ratio=self.tail_ratio, max_trials=self.max_trials,
            shuffle_grad=self.shuffle_grad, mask=self.mask, robust=self.robust, penalty=self.penalty,
            margin=self.margin, floor=self.floor, balance=self.balance, bn_prior=self.bn_prior, seed=seed,
        )


class SROptions(Config):
    """Self-Retrospection (SPEC 6) over the final ``fraction`` of the rounds of the same run.

    Defaults: the ``consistency`` mode over the whole run, which keeps the target class of the small
    CPU students (see :mod:`abd.defense.retrospect`). The paper's protocol is ``mode: hypergrad``,
    ``fraction: 0.05``, ``lr: 5e-4``, ``inner_rounds: 20``.
    """

    mode: Literal["hypergrad", "plain", "consistency"] = Field(
        "consistency", description="how the synthesized trigger is unlearned (paper: hypergrad)")
    fraction: float = Field(1.0, gt=0, le=1, description="SR runs over this final fraction of the rounds "
                            "(paper: the last 0.5-1 % of ZSKT; 1: the whole run)")
    lr: float | None = Field(None, gt=0, description="a separate SR phase: a new student Adam at this rate, "
                             "cosine over the rest, SV off (paper: 5e-4); None keeps the run's optimizer "
                             "and SV, SR adding its term to every student step")
    inner_rounds: int = Field(4, ge=1, description="perturbation-synthesis steps per synthesis (paper: 10 "
                              "or 20; with warm_start the perturbation keeps improving across rounds)")
    pert_lr: float = Field(0.5, gt=0, description="perturbation Adam lr (paper: 0.1; MNIST's normalized "
                           "range is wider, and a trigger pixel moves by ~3.2 units)")
    l2: float = Field(1e-2, ge=0, description="L2 weight on the perturbation (paper: 0.001)")
    inner_step: float = Field(0.1, gt=0)
    k: int = Field(5, ge=1)
    out_portion: float = Field(0.1, gt=0, le=1, description="hypergrad mode: patched fraction of the outer batch "
                               "(paper: 0.02; the consistency mode uses mix_portion)")
    weight: float = Field(0.5, ge=0, description="weight of the unlearning term (paper: 1, hypergrad)")
    pert_model: Literal["teacher", "student"] = "teacher"
    radius: float = Field(10.0, gt=0)
    l1: float = Field(0.01, ge=0, description="L1 weight on the synthesized perturbation (paper: 0)")
    warm_start: bool = Field(True, description="start each synthesis from the last perturbation (paper: no)")
    reuse_delta: bool = Field(True, description="reuse the perturbation while the method repeats a batch "
                              "(ZSKT's kd_steps; the paper re-synthesizes on every step)")
    divergence: Literal["kl", "method"] = Field(
        "kl", description="D of the trigger synthesis and of the unlearning term: KL at temperature 1 (ZSKT's "
        "elementwise mean, the scale the defaults were tuned on) for every method, or the KD method's own "
        "(paper: CMI's KL at T=20 times T^2, which let delta grow to norms of thousands; DFAD's L1, whose "
        "zero gradient at delta = 0 never moved delta)")
    unlearn: Literal["kl", "method"] | None = Field(
        None, description="D of the unlearning term alone (the synthesis keeps `divergence`): KL as above, or the "
        "KD method's own criterion; None: as `divergence` (DFAD's default: its L1, whose constant-size gradient "
        "outweighs a KL term)")
    clip: bool = Field(False, description="keep x + delta inside the valid pixel range (paper: no clipping; "
                       "measured with consistency: better on one seed, the backdoor kept on two)")
    objective: Literal["divergence", "flip"] = Field(
        "divergence", description="what the perturbation synthesis maximizes: the divergence between outputs on "
        "x and x + delta (paper; unbounded) or the mean probability of leaving the clean label (bounded)")
    mix_portion: float = Field(1.0, gt=0, le=1, description="consistency mode: the perturbed fraction of the "
                               "batch, forwarded with the clean rest so that BatchNorm sees mostly clean inputs")
    max_abs: float | None = Field(None, gt=0, description="bound on how far the perturbation moves one pixel, "
                                  "in units of the full pixel range (1: black to white; None: unbounded, the paper)")
    support: float | None = Field(0.02, gt=0, le=1, description="the fraction of pixel locations the perturbation "
                                  "may change, those where it is largest (None: all, the paper; 0.02: a patch "
                                  "trigger's size, 16 pixels of MNIST's 784)")
    clean_target: bool = Field(False, description="where the teacher answers the class the perturbation drives "
                               "inputs to, and another class once the perturbation's support is occluded (set "
                               "to the input mean), the KD target is that other answer: a synthesized sample "
                               "that carries the trigger is taught the teacher's answer without it (needs "
                               "`support`; DFAD's and DeepInversion's default)")
    dense: float | None = Field(0.3, gt=0, le=1, description="consistency mode: also synthesize and unlearn an "
                                "image-wide perturbation that moves no pixel by more than this fraction of the "
                                "pixel range (an image-wide trigger has no small support; None: the patch "
                                "candidate only, as before)")
    targeted: bool = Field(True, description="the dense candidate drives inputs to the teacher's default class "
                           "on smooth random images (a backdoor's target, for the triggers measured) instead of "
                           "maximizing the divergence, which found a natural weakness of the teacher (class 5 of "
                           "a blend teacher) and made the student unlearn that class")
    clean_dilate: int = Field(2, ge=0, description="clean_target occludes the support grown by this many pixels "
                              "on every side (the perturbation lies on and around the trigger's pixels)")
    vaccine_weight: float = Field(0.0, ge=0, description="with SV too (ABD): weight of the shuffled-teacher "
                                  "agreement term in the trigger synthesis (0: the paper's plain synthesis; 0.3 "
                                  "helped the hypergrad mode, and cost ASR in the consistency mode on 2 of 2 seeds)")

    def resolved_unlearn(self) -> str:
        """The unlearning criterion: ``unlearn``, else the synthesis's (``divergence``)."""
        return self.unlearn or self.divergence

    @property
    def branches(self) -> bool:
        """Whether SR starts after round 0, so an SR run can branch from the same run without SR."""
        return self.fraction < 1

    def build(self, student: Any, teacher: Any, divergence: Any = None, vaccine: Any = None,
              generator: Any = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None, image_size: int | None = None) -> Any:
        """The :class:`~abd.defense.SelfRetrospection` plug-in these options describe (``divergence``: the
        KD method's, used with ``divergence: method``; ``vaccine``: a ShufflingVaccine to guide the trigger
        synthesis; ``mean``/``std``: the input normalization, which gives the pixel range for ``clip``)."""
        import torch

        from abd.defense import SelfRetrospection
        from abd.distill.losses import kl_mean
        from abd.distill.synthesis import Normalize

        bounds = max_abs = dense = suspect = None
        if mean is not None and std is not None:
            norm, black = Normalize(mean, std), torch.zeros(1, len(mean), 1, 1)
            low, high = norm(black), norm(black + 1)  # the valid normalized pixel range
            bounds = (low, high) if self.clip else None
            max_abs = (high - low) * self.max_abs if self.max_abs is not None else None
            dense = (high - low) * self.dense if self.dense is not None and self.mode == "consistency" else None
            if dense is not None and self.targeted and teacher is not None:
                from abd.defense.retrospect import suspect_class

                size = image_size or 28
                suspect = suspect_class(teacher, (len(mean), size, size), mean, std)[0]
        elif self.max_abs is not None:
            raise ValueError("sr.max_abs needs the input normalization (mean and std)")

        synth = divergence if (self.divergence == "method" and divergence is not None) else kl_mean
        unlearn = self.resolved_unlearn()
        return SelfRetrospection(
            student, teacher, pert_model=self.pert_model, inner_rounds=self.inner_rounds, pert_lr=self.pert_lr,
            l2=self.l2, inner_step=self.inner_step, k=self.k, out_portion=self.out_portion, weight=self.weight,
            mode=self.mode, radius=self.radius, generator=generator,
            divergence=synth,
            unlearn_divergence=divergence if (unlearn == "method" and divergence is not None) else kl_mean,
            vaccine=vaccine, vaccine_weight=self.vaccine_weight, l1=self.l1, warm_start=self.warm_start,
            reuse_delta=self.reuse_delta, bounds=bounds, max_abs=max_abs, objective=self.objective,
            mix_portion=self.mix_portion, support=self.support, clean_target=self.clean_target,
            clean_dilate=self.clean_dilate, dense_max_abs=dense, suspect=suspect,
        )


# The paper's algorithm (SPEC 5 and 6), field by field where it differs from our defaults; `--preset paper`
# applies them to every field a run leaves unset, in place of the methods' own SV/SR defaults.
PAPER_SV: dict[str, Any] = {
    "coef": 0.1, "n_copies": 3, "n_layers": 5, "mask": "argmax", "robust": False, "penalty": "d", "margin": 0.0,
    "floor": None, "balance": 0.0, "bn_prior": 0.0, "verify_rounds": 50, "tail_std": 3.0, "tail_ratio": 0.02,
    "max_trials": 8, "shuffle_grad": True,
}
PAPER_SR: dict[str, Any] = {
    "mode": "hypergrad", "fraction": 0.05, "lr": 5e-4, "inner_rounds": 20, "pert_lr": 0.1, "l2": 1e-3,
    "inner_step": 0.1, "k": 5, "out_portion": 0.02, "weight": 1.0, "pert_model": "teacher", "l1": 0.0,
    "warm_start": False, "reuse_delta": False, "divergence": "method", "unlearn": None, "clip": False,
    "objective": "divergence", "mix_portion": 1.0, "max_abs": None, "support": None, "clean_target": False,
    "vaccine_weight": 0.0, "dense": None, "targeted": False,
}


def with_defaults(options: C, defaults: dict[str, Any]) -> C:
    """`options` with `defaults` (validated) for the fields it was not given explicitly."""
    update = {k: v for k, v in defaults.items() if k not in options.model_fields_set}
    if not update:
        return options
    return type(options).model_validate({**options.model_dump(exclude_unset=True), **update})


class DistillConfig(Config):
    """One distillation run: teacher directory, method (+ options), student, defense."""

    teacher: str
    method: str = "zskt"
    defense: Literal["none", "sv", "sr", "abd"] = "none"
    student: str = "lenet5_half"
    preset: Literal["cpu", "paper"] = "cpu"
    method_options: dict[str, Any] = Field(default_factory=dict)
    sv: SVOptions = Field(default_factory=SVOptions)
    sr: SROptions = Field(default_factory=SROptions)
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

    def resolved(self) -> DistillConfig:
        """This config with every method option spelled out (preset and defaults included) and the method's
        SV/SR defaults (``KDMethod.sv_defaults``/``sr_defaults``) applied to the fields the run did not set,
        so that the ``config.yaml`` written next to a result repeats it exactly even after a default changes."""
        from abd.distill.base import METHODS, resolve_options

        cls = METHODS.get(self.method)
        opts = resolve_options(self.method, self.method_options, self.preset).model_dump(mode="json")
        paper = self.preset == "paper"
        sv = with_defaults(self.sv, PAPER_SV if paper else cls.sv_defaults)
        sr = with_defaults(self.sr, PAPER_SR if paper else cls.sr_defaults)
        sr = sr.model_copy(update={"unlearn": sr.resolved_unlearn()})
        return self.model_copy(update={"method_options": dict(sorted(opts.items())), "sv": sv, "sr": sr})

    @property
    def use_sv(self) -> bool:
        return self.defense in ("sv", "abd")

    @property
    def use_sr(self) -> bool:
        return self.defense in ("sr", "abd")


class StudyConfig(Config):
    """What a multi-run study shares: one poisoned teacher per seed, one student, the defenses' options."""

    seeds: int = Field(1, ge=1)
    dataset: str = "mnist5k"
    teacher_model: str = "lenet5"
    student: str = "lenet5_half"
    trigger: str = "badnet_grid"
    sv: SVOptions = Field(default_factory=SVOptions)
    sr: SROptions = Field(default_factory=SROptions)
    eval_every: int = Field(50, ge=1)
    device: str = "auto"
    threads: int = Field(1, ge=0, description="torch CPU threads (0: torch's default)")
    workers: int = Field(2, ge=1, description="runs at a time, one process each (numbers do not depend on it)")

    def teacher_config(self, seed: int) -> TeacherConfig:
        """The teacher of seed `seed`."""
        return TeacherConfig(dataset=self.dataset, model=self.teacher_model, trigger=self.trigger, seed=seed,
                             device=self.device, threads=self.threads)

    def distill_config(self, teacher_dir: str, method: str, defense: str, seed: int,
                       method_options: dict[str, Any] | None = None) -> DistillConfig:
        """One run of the study."""
        return DistillConfig(
            teacher=str(teacher_dir), method=method, defense=defense, student=self.student,
            method_options=method_options or {}, sv=self.sv, sr=self.sr, eval_every=self.eval_every,
            checkpoint_every=max(self.eval_every, 100), seed=seed, device=self.device, threads=self.threads,
        )

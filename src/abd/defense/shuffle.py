"""Shuffling Vaccine (SV), Hong et al. ICML 2023 (docs/defenses.md).

Copies of the teacher whose last conv layers have their input channels randomly permuted (randomized
channel shuffling, Cai et al. NeurIPS 2022) lose clean features but keep the few-channel shortcut a
backdoor relies on: where the shuffled ensemble still agrees with the teacher, the input is backdoor-like.
SV (i) flags such inputs, (ii) steers synthesis away from them, and (iii) tells whether the teacher holds
a low-divergence tail at all (vaccine verification), which also audits the teacher.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from abd.config import Config
from abd.defense.base import Defense, register_defense
from abd.distill.losses import class_balance, kl_elementwise


def shufflable_layers(model: nn.Module, kinds: tuple[str, ...] = ("conv",)) -> list[tuple[str, nn.Module]]:
    """Layers whose input channels can be permuted, chosen by module type, in registration order.

    ``kinds`` may hold "conv" (Conv2d, groups=1) and "linear"; layers with a single input channel are
    skipped, since permuting one channel changes nothing.
    """
    out = []
    for name, m in model.named_modules():
        if "conv" in kinds and isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 1:
            out.append((name, m))
        elif "linear" in kinds and isinstance(m, nn.Linear) and m.in_features > 1:
            out.append((name, m))
    return out


def frozen_copy(model: nn.Module) -> nn.Module:
    """An independent, frozen, eval-mode copy of `model` whose weights are plain parameters: weight
    parametrizations (``torch.nn.utils.parametrizations.weight_norm``/``spectral_norm``) are folded into the
    weight they compute, so that a shuffle of ``layer.weight`` is what the copy computes with. Models whose
    hooks cannot be copied (legacy ``torch.nn.utils.weight_norm``, ``prune``) are refused with the fix."""
    from torch.nn.utils import parametrize

    try:
        c = copy.deepcopy(model)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{type(model).__name__} cannot be copied for the Shuffling Vaccine ({e}); legacy "
                         "weight_norm or pruning hooks: fold them into the weights first "
                         "(torch.nn.utils.remove_weight_norm, torch.nn.utils.prune.remove)") from None
    for m in [m for m in c.modules() if parametrize.is_parametrized(m)]:  # listed first: removal edits the tree
        cls = type(m)  # torch's per-module class is shared with the original: removal would edit the teacher
        m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        for name in list(m.parametrizations.keys()):
            parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return c.eval().requires_grad_(False)


def select_layers(layers: list, n_layers: int) -> list:
    """The last ``n`` layers (n > 0), the first ``|n|`` (n < 0) or none (n = 0)."""
    if n_layers == 0 or not layers:
        return []
    return layers[-n_layers:] if n_layers > 0 else layers[: -n_layers]


def log10_divergence(d: torch.Tensor) -> torch.Tensor:
    """log10 of shuffled-teacher divergences, floored at 1e-12 (exact agreement gives d = 0)."""
    return torch.log10(d.clamp_min(1e-12))


@torch.no_grad()
def shuffle_input_channels(layer: nn.Module, generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute the input-channel axis of `layer`'s weight in place; return the permutation."""
    w = layer.weight
    perm = torch.randperm(w.shape[1], generator=generator).to(w.device)
    w.copy_(w[:, perm])
    return perm


@dataclass
class VaccineReport:
    """Outcome of vaccine verification: tail ratios per trial, whether SV was switched on, and where the
    samples' log10 divergence lies (1st percentile and median, last trial): compare it with the real
    triggered and clean inputs' medians in the ``sv_detection`` diagnostic."""

    trials: list[float] = field(default_factory=list)
    active: bool = False
    n_samples: int = 0
    log10_d_p01: float = float("nan")
    log10_d_median: float = float("nan")

    def to_dict(self) -> dict:
        return {"tail_ratios": self.trials, "active": self.active, "n_samples": self.n_samples,
                "log10_d_p01": self.log10_d_p01, "log10_d_median": self.log10_d_median}


class ShufflingVaccine(nn.Module):
    """The shuffled-teacher ensemble and the SV loss terms.

    Args:
        teacher: the (possibly backdoored) teacher; it is not modified.
        n_copies: shuffled copies in the ensemble (paper: 3).
        n_layers: shuffle the last n shufflable layers (paper: 5 = all of WRN-16-2's group 3; a LeNet has
            only one multi-channel conv, so the default 1 shuffles it).
        kinds: layer types that may be shuffled ("conv", "linear").
        coef: lambda, the weight of the SV term (paper: 0.1).
        tail_std: verification threshold in standard deviations of log10 d (paper: 3).
        tail_ratio: verification succeeds when more than this fraction of samples is in the low tail
            (paper: 0.02).
        max_trials: re-shuffles tried before SV gives up (paper: 8).
        shuffle_grad: let gradients flow through the shuffled ensemble (paper default).
        mask: "argmax" flags inputs where the ensemble's argmax equals the teacher's (paper); "tail" also
            requires log10 d to lie in the low tail (below mean - tail_std * std of the verification
            samples, or of the batch before verification). A backdoored teacher's shuffled copies tend to
            predict the target class for everything, so "argmax" flags every clean target-class input and
            SV then suppresses the target class; "tail" flags only backdoor-like agreement.
        robust: tail statistics from median/MAD instead of the paper's mean/std (see ``tail_threshold``).
        margin: the mask also requires log10 d to lie at least this many decades below the median of the
            verification samples (or of the batch): only inputs the shuffled copies agree on far better than
            on a typical synthetic sample are flagged (0: the tail threshold alone, which flagged ordinary
            samples and cost the demo student 4-12 points of ACC).
        penalty: "d" repels flagged inputs by their divergence d (paper); "log" (default) by log10 d. A
            flagged input has a tiny d (a triggered digit: about 1e-6), so the gradient of d vanishes exactly
            where the synthesizer should be pushed hardest; log10 d is scale-free.
        floor: also flag every input whose log10 d is below this absolute value (None: relative to the batch
            alone). When a whole synthetic batch is trigger-like (an image-wide trigger: blend, sig, smooth)
            the batch median is itself at the floor and the relative threshold flags nothing.
        balance: weight of DAFL's class-balance term on the teacher's answers over the synthetic batch,
            part of the synthesis term (0: off): a synthesizer drawn to one class is pushed to the others.
        bn_prior: weight of DeepInversion's BatchNorm-statistics distance of the synthetic batch to the
            teacher's running statistics (0: off; ignored for a teacher without BatchNorm).

    Usage in any KD loop (the synthesis loss is minimized by the generator):

    >>> sv = ShufflingVaccine(teacher)
    >>> loss_g = -kl_mean(teacher(x), student(x)) + sv.penalty(x)
    """

    def __init__(
        self,
        teacher: nn.Module,
        n_copies: int = 3,
        n_layers: int = 1,
        kinds: tuple[str, ...] = ("conv",),
        coef: float = 0.1,
        tail_std: float = 3.0,
        tail_ratio: float = 0.02,
        max_trials: int = 8,
        shuffle_grad: bool = True,
        mask: str = "tail",
        robust: bool = True,
        penalty: str = "log",
        margin: float = 2.0,
        floor: float | None = None,
        balance: float = 0.0,
        bn_prior: float = 0.0,
        seed: int = 0,
    ) -> None:
        if mask not in ("argmax", "tail"):
            raise ValueError(f"mask must be 'argmax' or 'tail', got {mask!r}")
        if penalty not in ("d", "log"):
            raise ValueError(f"penalty must be 'd' or 'log', got {penalty!r}")
        self.penalty_form, self.margin, self.floor, self.balance = penalty, margin, floor, balance
        self.bn_prior = bn_prior
        self.mask_mode, self.robust = mask, robust
        self.threshold: float | None = None  # log10-d tail threshold, set by verify()
        super().__init__()
        self.teacher = teacher
        self.coef, self.tail_std, self.tail_ratio = coef, tail_std, tail_ratio
        self.max_trials, self.shuffle_grad = max_trials, shuffle_grad
        self.n_layers, self.kinds = n_layers, tuple(kinds)
        self.rng = torch.Generator().manual_seed(seed)
        self.copies = nn.ModuleList(frozen_copy(teacher) for _ in range(n_copies))
        if not select_layers(shufflable_layers(self.copies[0], self.kinds), n_layers):
            raise ValueError(
                f"{type(teacher).__name__} has no shufflable {'/'.join(kinds)} layer with more than one "
                "input channel: the Shuffling Vaccine cannot be built for it"
            )
        self.enabled = True  # False after failed verification (coef is then effectively 0)
        self.reshuffle()
        self._check_shuffled(teacher)

    def _check_shuffled(self, teacher: nn.Module) -> None:
        """Refuse copies whose selected layers all still hold the teacher's weights (a shuffle that did not
        reach the weights the layer computes with would make SV a silent no-op)."""
        names = dict(teacher.named_modules())
        for c in self.copies:
            for name, layer in select_layers(shufflable_layers(c, self.kinds), self.n_layers):
                if not torch.equal(layer.weight, names[name].weight):
                    return
        raise ValueError("the Shuffling Vaccine's shuffled copies equal the teacher (its shuffled layers' weights "
                         "did not change): SV would do nothing on this teacher")

    @property
    def layer_names(self) -> list[str]:
        return [n for n, _ in select_layers(shufflable_layers(self.copies[0], self.kinds), self.n_layers)]

    def reshuffle(self) -> None:
        """Draw new permutations for every selected layer of every copy (on top of the current ones)."""
        for c in self.copies:
            for _, layer in select_layers(shufflable_layers(c, self.kinds), self.n_layers):
                shuffle_input_channels(layer, self.rng)

    def train(self, mode: bool = True) -> ShufflingVaccine:  # copies and teacher stay in eval mode
        super().train(mode)
        self.copies.eval()
        return self

    def ensemble_logits(self, x: torch.Tensor) -> torch.Tensor:
        """T~(x): the mean of the shuffled copies' logits."""
        return torch.stack([c(x) for c in self.copies]).mean(0)

    def _teacher(self, x: torch.Tensor, t_logits: torch.Tensor | None) -> torch.Tensor:
        if t_logits is not None:
            return t_logits
        was = self.teacher.training
        self.teacher.eval()
        out = self.teacher(x)
        self.teacher.train(was)
        return out

    def divergence(self, x: torch.Tensor, t_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d, mask): d_i = mean over classes of KL(p_T || p_T~) and m_i = [argmax T~ = argmax T]."""
        t = self._teacher(x, t_logits)
        if self.shuffle_grad:
            ts = self.ensemble_logits(x)
        else:
            with torch.no_grad():
                ts = self.ensemble_logits(x)
        d = kl_elementwise(t, ts).mean(1)
        mask = ts.argmax(1) == t.argmax(1)
        if self.mask_mode == "tail":
            s = log10_divergence(d.detach())
            tail = s < (self.threshold if self.threshold is not None else self.tail_threshold(s))
            if self.floor is not None:  # absolute: a batch that is all trigger-like has no low tail of its own
                tail = tail | (s < self.floor)
            mask = mask & tail
        return d, mask.float().detach()

    def tail_threshold(self, s: torch.Tensor, with_margin: bool = True) -> float:
        """Low-tail threshold of log10-divergences `s`: centre - tail_std * spread (and, ``with_margin``, at
        least ``self.margin`` decades below the median).

        With ``robust`` the centre/spread are the median and 1.4826 * MAD, which the tail itself cannot
        inflate (a batch with 10 % triggered inputs still has them flagged); otherwise the paper's mean/std.
        """
        if len(s) < 2:
            return float("-inf")
        med = s.median()
        if self.robust:
            spread = 1.4826 * (s - med).abs().median()
            t = float(med - self.tail_std * spread)
        else:
            t = float(s.mean() - self.tail_std * s.std())
        return min(t, float(med) - self.margin) if with_margin else t

    @torch.no_grad()
    def scores(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Suspicion score per input: -log10 d (higher = shuffled copies agree more = more backdoor-like)."""
        out = []
        for i in range(0, len(x), batch_size):
            d, _ = self.divergence(x[i : i + batch_size])
            out.append(-log10_divergence(d))
        return torch.cat(out).cpu()

    @torch.no_grad()
    def flag(self, x: torch.Tensor) -> torch.Tensor:
        """The suspicion mask m (bool) for a batch."""
        return self.divergence(x)[1].bool()

    def regularizer(self, x: torch.Tensor, t_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """R = sum_i m_i d_i / sum_i m_i (0 if nothing is flagged; log10 d_i with ``penalty="log"``), and
        stats for logging."""
        d, m = self.divergence(x, t_logits)
        n = m.sum()
        # log10(d + 1e-12): unlike the clamped log it keeps a gradient where the copies agree exactly
        v = torch.log10(d + 1e-12) if self.penalty_form == "log" else d
        r = (m * v).sum() / n if n > 0 else d.sum() * 0.0
        logs = {"sv_flagged": float(n) / len(m), "sv_r": float(r.detach())}
        if self.balance > 0:  # R is maximized by the synthesizer: subtract the batch's class imbalance
            t = self._teacher(x, t_logits)
            imbalance = class_balance(t) + math.log(t.shape[1])  # log C - H(mean p_T) >= 0
            r = r - self.balance / self.coef * imbalance if self.coef > 0 else r
            logs["sv_imbalance"] = float(imbalance.detach())
        if self.bn_prior > 0 and self.coef > 0:
            stat = self.bn_statistics(x)
            if stat is not None:
                r = r - self.bn_prior / self.coef * stat
                logs["sv_bn"] = float(stat.detach())
        return r, logs

    def bn_statistics(self, x: torch.Tensor) -> torch.Tensor | None:
        """DeepInversion's feature-statistics distance of batch `x` to the teacher's BatchNorm running
        statistics (None for a teacher without BatchNorm): the synthetic batch is kept near the teacher's
        training distribution, in which triggered inputs are a minority."""
        from abd.distill.synthesis import frozen
        from abd.models.hooks import bn_stat_hooks, remove_hooks

        try:
            hooks = bn_stat_hooks(self.teacher)
        except ValueError:
            return None
        try:
            with frozen(self.teacher) as teacher:
                teacher(x)
            return sum(h.r_feature for h in hooks) / len(hooks)
        finally:
            remove_hooks(hooks)

    def penalty(self, x: torch.Tensor, t_logits: torch.Tensor | None = None) -> torch.Tensor:
        """The term to add to a synthesis loss: -lambda * R (zero while SV is off)."""
        if not self.enabled or self.coef == 0:
            return x.new_zeros(())
        return -self.coef * self.regularizer(x, t_logits)[0]

    def student_loss(self, per_sample: torch.Tensor, x: torch.Tensor, t_logits: torch.Tensor,
                     cap: torch.Tensor | None = None) -> torch.Tensor:
        """SV for KD on fixed data: mean over kept samples minus lambda * mean over flagged ones.

        ``cap`` (per sample, e.g. the KD loss of a uniform prediction) bounds the flagged samples' loss: the
        student is pushed away from the teacher on them only until it is that far. The paper's term is
        unbounded, and on the default OOD run it diverged (loss -7e5, student ACC 12 %).
        """
        if not self.enabled or self.coef == 0:
            return per_sample.mean()
        with torch.no_grad():
            _, m = self.divergence(x, t_logits)
        flagged = m.bool()
        kept = per_sample[~flagged].mean() if (~flagged).any() else per_sample.sum() * 0.0
        if flagged.any():
            repel = per_sample[flagged] if cap is None else torch.minimum(per_sample[flagged], cap[flagged])
            return kept - self.coef * repel.mean()
        return kept

    @torch.no_grad()
    def verify(self, samples: torch.Tensor) -> VaccineReport:
        """Vaccine verification: re-shuffle until the synthetic samples show a low-KL tail."""
        report = VaccineReport(n_samples=len(samples))
        for trial in range(self.max_trials):
            s = -self.scores(samples)  # log10 d
            ratio = float((s < self.tail_threshold(s, with_margin=False)).float().mean())
            report.trials.append(ratio)
            report.log10_d_p01, report.log10_d_median = float(s.quantile(0.01)), float(s.median())
            if ratio > self.tail_ratio:
                report.active = True
                self.threshold = self.tail_threshold(s)
                break
            if trial + 1 < self.max_trials:
                self.reshuffle()
        self.enabled = report.active
        return report

    @torch.no_grad()
    def detection_auc(self, x_poison: torch.Tensor, x_clean: torch.Tensor) -> dict[str, float]:
        """Diagnostic on real data: AUC of the score for poisoned (positive) vs clean inputs, and mean d."""
        from abd.metrics import detection_auc

        sp, sc = self.scores(x_poison), self.scores(x_clean)
        return {
            "auc": detection_auc(sp, sc),
            "mean_d_poison": float((10 ** (-sp)).mean()),
            "mean_d_clean": float((10 ** (-sc)).mean()),
            "log10_d_median_poison": float((-sp).median()),
            "log10_d_median_clean": float((-sc).median()),
            **self._flag_rates(x_poison[:1024], x_clean[:1024]),
        }

    @torch.no_grad()
    def _flag_rates(self, x_poison: torch.Tensor, x_clean: torch.Tensor) -> dict[str, float]:
        """Flag rates of triggered and clean inputs flagged together, in one batch of both: a batch-relative
        threshold computed on the triggered inputs alone would call them all typical."""
        flags = self.flag(torch.cat([x_poison, x_clean]))
        return {"flag_rate_poison": float(flags[: len(x_poison)].float().mean()),
                "flag_rate_clean": float(flags[len(x_poison):].float().mean())}


class SVOptions(Config):
    """Shuffling Vaccine options. ``variant: tail`` is this package's form, ``paper`` the published one
    (Hong et al. ICML 2023, Sec. 4.1; docs/defenses.md has the table); the other fields serve ``tail``."""

    variant: Literal["tail", "paper"] = Field(
        "tail", description="tail: flag inputs whose log10 d lies in the robust (median/MAD) low tail and at least "
        "2 decades below the batch median, repel by log10 d; paper: flag where the shuffled copies' argmax equals "
        "the teacher's, repel by d")
    coef: float = Field(0.1, ge=0, description="lambda, weight of the SV term (paper: 0.1)")
    n_layers: int = Field(1, description="shuffle the last n shufflable layers (negative: the first |n|; "
                          "paper: 5, WRN-16-2's last group; a LeNet-5 has one multi-channel conv)")
    verify_rounds: int = Field(0, ge=0, description="collect this many rounds' samples, then switch SV on only if "
                               "they show a low-divergence tail (paper: 50; 0: on from the start)")
    balance: float = Field(1.0, ge=0, description="weight of a class-balance term (DAFL's information entropy) on "
                           "the teacher's answers over each synthetic batch (0: off)")
    bn_prior: float = Field(1.0, ge=0, description="weight of DeepInversion's distance of each synthetic batch's "
                            "feature statistics to the teacher's BatchNorm running statistics (0: off)")

    @model_validator(mode="before")
    @classmethod
    def _removed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "floor" in data:  # an option until 2026-12-06, now the tail variant's constant
            data = dict(data)
            given, fixed = data.pop("floor"), None if data.get("variant") == "paper" else TAIL_FLOOR
            if given != fixed:
                raise ValueError(f"sv option floor={given!r} was removed (variant tail fixes it at {TAIL_FLOOR}, "
                                 "variant paper has none; docs/defenses.md): re-run with the current options")
        return data

    @property
    def floor(self) -> float | None:
        """The absolute flag of the tail variant (:data:`TAIL_FLOOR`); the paper variant has none."""
        return None if self.variant == "paper" else TAIL_FLOOR


TAIL_MARGIN = 2.0  # decades below the batch median (the tail threshold alone flagged ordinary samples and
# cost the demo student 4-12 points of ACC)
TAIL_FLOOR = -4.0  # log10 d: the tail variant also flags every input below it, since a batch that is all
# trigger-like has no low tail of its own (blend, sig, smooth: docs/trigger_table.md)


def build_vaccine(teacher: nn.Module, opts: SVOptions, seed: int = 0) -> ShufflingVaccine:
    """The :class:`ShufflingVaccine` that `opts` describe."""
    paper = opts.variant == "paper"
    return ShufflingVaccine(
        teacher, n_layers=opts.n_layers, coef=opts.coef, mask="argmax" if paper else "tail", robust=not paper,
        penalty="d" if paper else "log", margin=0.0 if paper else TAIL_MARGIN,
        floor=opts.floor, balance=opts.balance, bn_prior=opts.bn_prior, seed=seed,
    )


@register_defense("sv")
class ShufflingVaccineDefense(Defense):
    """Shuffling Vaccine: synthesis steered away from inputs the channel-shuffled teachers agree on."""

    Options = SVOptions
    order = 20
    paper = {"variant": "paper", "coef": 0.1, "n_layers": 5, "verify_rounds": 50, "balance": 0.0, "bn_prior": 0.0}
    opts: SVOptions

    def attach(self, method: Any) -> None:
        self.synthetic = method.sv_target == "synthesis"
        self.sv = build_vaccine(self.ctx.teacher, self.opts, seed=self.seed + 17).to(self.ctx.device)
        self.verify_rounds = self.opts.verify_rounds
        self.pending = self.verify_rounds > 0
        self.sv.enabled = not self.pending
        self.buffer: list[torch.Tensor] = []
        self.report: dict[str, Any] = {}

    @property
    def has_synthesis_term(self) -> bool:
        return self.synthetic

    def synthesis_term(self, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.sv.enabled:
            return x.new_zeros(()), {}
        r, logs = self.sv.regularizer(x, t_logits)
        return -self.sv.coef * r, logs

    def reduce_student_loss(self, per_sample, x, t_logits, cap):
        if self.synthetic or not self.sv.enabled:
            return None
        return self.sv.student_loss(per_sample, x, t_logits, cap=cap())

    def suspend(self) -> None:
        self.sv.enabled = False

    def observe(self, x: torch.Tensor, round_idx: int) -> list[dict[str, Any]]:
        """Vaccine verification (``verify_rounds``): collect the first rounds' KD batches, then decide."""
        if not self.pending:
            return []
        if round_idx < self.verify_rounds:
            if sum(len(b) for b in self.buffer) < VERIFY_MAX_SAMPLES:
                self.buffer.append(x.detach().cpu())
            return []
        samples = torch.cat(self.buffer)[:VERIFY_MAX_SAMPLES].to(self.ctx.device)
        report = self.sv.verify(samples)
        self.report = {"round": round_idx, **report.to_dict()}
        self.pending, self.buffer = False, []
        msg = (f"SV verification at round {round_idx}: tail ratios {[round(t, 4) for t in report.trials]} "
               f"-> SV {'ON' if report.active else 'OFF (no low-divergence tail found)'}")
        return [{"event": "sv_verification", **self.report, "message": msg}]

    def log_fields(self) -> dict[str, Any]:
        return {"sv_on": bool(self.sv.enabled)}

    def diagnose(self, eval_data: Any) -> dict[str, Any]:
        if eval_data.x_poison is None:
            return {}
        dev = self.ctx.device
        return {"sv_detection": self.sv.detection_auc(eval_data.x_poison.to(dev), eval_data.x_clean.to(dev))}

    def metrics(self) -> dict[str, Any]:
        return {"sv_verification": self.report} if self.report else {}

    def state_dict(self) -> dict[str, Any]:
        return {"copies": self.sv.copies.state_dict(), "enabled": self.sv.enabled, "pending": self.pending,
                "rng": self.sv.rng.get_state(), "buffer": list(self.buffer), "report": repr(self.report),
                "threshold": self.sv.threshold if self.sv.threshold is not None else float("nan")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ast

        self.sv.copies.load_state_dict(state["copies"])
        self.sv.enabled, self.pending = state["enabled"], state["pending"]
        self.sv.rng.set_state(state["rng"])
        self.buffer = list(state["buffer"])
        self.report = ast.literal_eval(state["report"])
        t = state["threshold"]
        self.sv.threshold = None if t != t else t


VERIFY_MAX_SAMPLES = 4096  # synthetic samples vaccine verification looks at

"""Self-Retrospection (SR), Hong et al. ICML 2023, SPEC section 6.

SR synthesizes the trigger the student may have learned, as a batch-universal perturbation delta that
most changes predictions, and unlearns it. Three ways to unlearn (``mode``):

- ``"hypergrad"`` (the paper, SPEC 6.2): late in distillation the student is made insensitive to delta
  through an implicit hypergradient (I-BAU, Zeng et al. ICLR 2022) that accounts for how delta itself
  depends on the student's weights; the student's own clean prediction is the target.
- ``"plain"`` (SPEC 6.3): the same without the hypergradient, a radius-bounded delta and an adversarial
  KL term.
- ``"consistency"`` (beyond the paper): the student is distilled on ``x + delta`` towards the teacher's
  prediction on the clean ``x``, over the whole run. A small student whose target-class detector shares
  features with the trigger loses the whole target class when a learned backdoor is unlearned late;
  learning from the start that delta does not change the answer makes it find other features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.func import functional_call

from abd.defense.hypergrad import fixed_point_hypergrad
from abd.defense.shuffle import log10_divergence
from abd.distill.losses import kl_mean
from abd.distill.synthesis import frozen

MODES = ("hypergrad", "plain", "consistency")
Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (target logits, logits) -> scalar


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers use batch statistics as usual but leave their running statistics unchanged."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom, nbt in saved:
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


@torch.no_grad()
def suspect_class(teacher: nn.Module, shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...],
                  n: int = 256, seed: int = 0) -> tuple[int, float]:
    """The class the teacher gives featureless inputs, and its share: its most frequent answer on `n` smooth
    random images (7x7 uniform noise, upsampled). A backdoor's target is the teacher's default answer
    once a trigger's broad change of the image is there (measured on mnist5k: the target for blend, sig,
    smooth, BadNets-grid and Trojan-WM teachers, target 0 or 3); a clean teacher has a default class too
    (class 1 for the seed-100 LeNet-5), so the answer is a suspect, not a verdict."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x = torch.nn.functional.interpolate(torch.rand(n, c, 7, 7, generator=g), size=(h, w), mode="bilinear",
                                        align_corners=False)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    with frozen(teacher):
        pred = teacher(((x - m) / s).to(next(teacher.parameters()).device)).argmax(1).cpu()
    counts = torch.bincount(pred)
    return int(counts.argmax()), float(counts.max()) / n


class SelfRetrospection:
    """Trigger synthesis + unlearning on the student's optimizer step.

    Args:
        student: the student being distilled (its ``.grad`` receives the unlearning hypergradient).
        teacher: the teacher, used to synthesize delta when ``pert_model="teacher"``.
        pert_model: "teacher" (paper sweeps, CMI/OOD) or "student" (ZSKT code default).
        inner_rounds: Adam iterations of the perturbation synthesis (paper: 10 or 20).
        pert_lr: Adam learning rate of delta (paper: 0.1), in normalized-pixel units.
        l2: weight of ||delta||^2 in the inner objective (paper: 0.001).
        inner_step: step size of the fixed-point map Phi(delta) = delta - inner_step * grad L_in (paper: 0.1).
        k: Neumann / fixed-point iterations of the hypergradient (paper: 5).
        out_portion: "hypergrad" mode: fraction of the batch patched with delta in the outer loss (paper: 0.02;
            at least 1).
        weight: scale of the unlearning gradient (paper: 1, simply summed with the KD gradient).
        mode: "hypergrad" (SPEC 6.2), "plain" (SPEC 6.3) or "consistency" (see the module docstring).
        radius: L2 radius of delta in the "plain" mode (paper: 10).
        divergence: D(target_logits, logits) of the trigger synthesis, teacher-first KL in the KD method's
            reduction.
        unlearn_divergence: D of the unlearning term (None: ``divergence``), e.g. the KD method's own
            criterion, so that the term is on the scale of the student loss it is added to.
        vaccine: a ShufflingVaccine to guide the trigger synthesis (ABD's two plug-ins combined, beyond
            the paper): delta also minimizes ``vaccine_weight`` * mean log10 d(x + delta), so it seeks a
            perturbation the channel-shuffled teachers still agree on (a backdoor-like shortcut) rather
            than any dense adversarial direction, which on small nets also erases clean class features.
        vaccine_weight: weight of that term.
        l1: weight of ||delta||_1 in the synthesis (0 in the paper); favours small, patch-like triggers.
        warm_start: start each synthesis from the previous delta instead of zero (the paper restarts), so
            a trigger found once is kept and refined across steps.
        reuse_delta: when a step sees the very batch tensor of the previous step (ZSKT trains kd_steps
            times on one pseudo-batch), reuse its delta instead of synthesizing again.
        bounds: (low, high) of valid normalized pixels, broadcastable to a batch: the perturbed images
            are clamped to them, so delta is a change a real image could carry (the paper does not clip;
            an unclipped delta grows to many times the pixel range).
        max_abs: elementwise bound on |delta| (a tensor broadcastable to delta, or None: unbounded, the
            paper), applied after every synthesis step: no pixel moves by more than this.
        mix_portion: in the "consistency" mode, the fraction of the batch that carries delta; the rest
            stays clean in the same forward pass (1: the whole batch perturbed).
        support: the fraction of pixel locations delta may change (None: all, the paper), applied once at
            the end of each synthesis by keeping the locations of largest |delta| (summed over channels): a
            patch-like trigger fits, a dense adversarial pattern that also erases clean class features does not.
        clean_target: where the teacher's answer is the class delta drives inputs to and occluding delta's
            support (setting it to the input mean, 0 in normalized units) changes that answer, the KD target
            becomes the occluded answer, also in the unlearning term (see ``clean_targets``): a sample that
            carries the trigger is taught the answer the teacher gives without it.
        clean_dilate: the occluded region is the support grown by this many pixels on every side: delta's
            largest pixels lie on and around the trigger, not exactly on its pixels (measured: the 16 support
            pixels covered 1 of the BadNets grid's 4 white pixels, and the teacher kept its target on 100 %
            of the occluded triggered digits; grown by 1 or 2, on none).
        dense_max_abs: in the "consistency" mode, a second, image-wide perturbation is synthesized beside the
            patch-like one, with no support bound but no pixel moved by more than this (a tensor
            broadcastable to delta, e.g. 0.3 of the pixel range), and unlearned the same way: a blended or
            additive image-wide trigger has no 2 % support, a patch trigger no small dense form, and a user
            never knows which the teacher holds (None: the patch candidate only).
        suspect: the class the dense candidate drives inputs to (targeted synthesis; see
            :func:`suspect_class`); None: the dense candidate maximizes the divergence like the patch one.
        objective: what delta maximizes: "divergence" (the paper: D between the outputs on x and x + delta,
            unbounded, so delta keeps growing to flip even the inputs a trigger cannot flip) or "flip" (the
            mean probability that x + delta leaves the clean label, at most 1: once the inputs flip, the
            L1/L2 penalties shrink delta to the smallest perturbation that flips them).

    Usage in any KD loop (``"consistency"``: every step; ``"hypergrad"``: the final phase of training):

    >>> sr = SelfRetrospection(student, teacher, mode="consistency")
    >>> opt.zero_grad(); extra = sr.step(x)   # hypergrad mode: adds the unlearning hypergradient to .grad
    >>> (kd_loss + extra).backward(); opt.step()
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        pert_model: str = "teacher",
        inner_rounds: int = 10,
        pert_lr: float = 0.1,
        l2: float = 1e-3,
        inner_step: float = 0.1,
        k: int = 5,
        out_portion: float = 0.02,
        weight: float = 1.0,
        mode: str = "hypergrad",
        radius: float = 10.0,
        divergence: Divergence = kl_mean,
        unlearn_divergence: Divergence | None = None,
        generator: torch.Generator | None = None,
        vaccine: nn.Module | None = None,
        vaccine_weight: float = 0.1,
        l1: float = 0.0,
        warm_start: bool = False,
        reuse_delta: bool = False,
        bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
        max_abs: torch.Tensor | None = None,
        objective: str = "divergence",
        mix_portion: float = 1.0,
        support: float | None = None,
        clean_target: bool = False,
        clean_dilate: int = 2,
        dense_max_abs: torch.Tensor | None = None,
        suspect: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if objective not in ("divergence", "flip"):
            raise ValueError(f"objective must be 'divergence' or 'flip', got {objective!r}")
        if support is not None and not 0 < support <= 1:
            raise ValueError(f"support must be in (0, 1], got {support!r}")
        if clean_dilate < 0:
            raise ValueError(f"clean_dilate must be >= 0, got {clean_dilate!r}")
        if clean_target and (support is None or teacher is None):
            raise ValueError("clean_target needs the teacher and a support (the pixels it occludes)")
        if mode == "consistency" and teacher is None:
            raise ValueError("mode='consistency' needs the teacher")
        if pert_model not in ("teacher", "student"):
            raise ValueError(f"pert_model must be 'teacher' or 'student', got {pert_model!r}")
        if pert_model == "teacher" and teacher is None:
            raise ValueError("pert_model='teacher' needs the teacher")
        self.student, self.teacher, self.pert_model = student, teacher, pert_model
        self.inner_rounds, self.pert_lr, self.l2, self.inner_step = inner_rounds, pert_lr, l2, inner_step
        self.k, self.out_portion, self.weight = k, out_portion, weight
        self.mode, self.radius, self.divergence = mode, radius, divergence
        self.unlearn_divergence = unlearn_divergence or divergence
        self.generator = generator
        self.vaccine, self.vaccine_weight = vaccine, vaccine_weight
        self.l1, self.warm_start, self.reuse_delta = l1, warm_start, reuse_delta
        self.bounds, self.max_abs, self.objective = bounds, max_abs, objective
        self.mix_portion, self.support, self.clean_target = mix_portion, support, clean_target
        self.clean_dilate = clean_dilate
        self.dense_max_abs, self.suspect = dense_max_abs, suspect
        self.last_delta: torch.Tensor | None = None
        self.last_dense: torch.Tensor | None = None
        self._last_x: torch.Tensor | None = None

    def perturb(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + delta``, kept inside the valid image range when ``bounds`` are set."""
        if self.bounds is None:
            return x + delta
        low, high = (b.to(x.device) for b in self.bounds)
        return torch.maximum(torch.minimum(x + delta, high), low)

    def synthesize(self, x: torch.Tensor, t_logits: torch.Tensor | None = None, dense: bool = False) -> torch.Tensor:
        """The batch-universal perturbation delta (shape 1xCxHxW) that most changes the model's output
        (``t_logits``: the teacher's logits on `x` when the caller has them, so they are not recomputed;
        ``dense``: the image-wide candidate, bounded by ``dense_max_abs`` instead of ``support``)."""
        model = self.teacher if self.pert_model == "teacher" else self.student
        was = model.training
        if self.pert_model == "teacher":
            model.eval()
        x = x.detach()
        start = self.last_dense if dense else self.last_delta
        support = None if dense else self.support
        max_abs = self.dense_max_abs if dense else self.max_abs
        if self.warm_start and start is not None and start.shape[1:] == x.shape[1:]:
            delta = start.clone().to(x.device).requires_grad_(True)
        else:
            delta = torch.zeros(1, *x.shape[1:], device=x.device, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.pert_lr)
        params = [p for p in model.parameters() if p.requires_grad]
        req = [p.requires_grad for p in params]
        for p in params:  # grads only for delta; model .grad stays untouched
            p.requires_grad_(False)
        try:
            if t_logits is not None and self.pert_model == "teacher":
                target = t_logits.detach()
            else:
                with frozen_bn_stats(model), torch.no_grad():
                    target = model(x)
            for _ in range(self.inner_rounds):
                with frozen_bn_stats(model):
                    xd = self.perturb(x, delta)
                    out = model(xd)
                if dense and self.suspect is not None:  # targeted: towards the suspected class
                    loss = -out.log_softmax(1)[:, self.suspect].mean()
                elif self.objective == "flip":  # bounded: the mean probability of leaving the clean label
                    p_stay = out.softmax(1).gather(1, target.argmax(1, keepdim=True))
                    loss = p_stay.mean()
                else:
                    loss = -self.divergence(target, out)
                if self.vaccine is not None and self.vaccine_weight > 0:
                    t_logits = out if self.pert_model == "teacher" else None
                    d, _ = self.vaccine.divergence(xd, t_logits)
                    loss = loss + self.vaccine_weight * log10_divergence(d).mean()
                if self.mode != "plain":
                    loss = loss + self.l2 * delta.pow(2).sum()
                if self.l1 > 0 and not dense:
                    loss = loss + self.l1 * delta.abs().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if max_abs is not None:
                    with torch.no_grad():
                        bound = max_abs.to(delta.device)
                        delta.copy_(torch.maximum(torch.minimum(delta, bound), -bound))
            if support is not None:  # at the end: Adam's first steps move every pixel alike
                with torch.no_grad():
                    delta.mul_(self.support_mask(delta))
        finally:
            for p, r in zip(params, req):
                p.requires_grad_(r)
            model.train(was)
        return delta.detach()

    def support_mask(self, delta: torch.Tensor) -> torch.Tensor:
        """0/1 mask (1x1xHxW) of the ``support`` fraction of pixel locations where |delta| is largest."""
        mag = delta.abs().sum(1).flatten()
        n = max(1, round(self.support * mag.numel()))
        mask = torch.zeros_like(mag)
        mask[mag.topk(n).indices] = 1.0
        return mask.view(1, 1, *delta.shape[2:])

    def clean_targets(self, x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """`t_logits` with the suspected target class taken away where it hangs on delta's region.

        The suspected class is the teacher's most frequent answer on ``x + delta``. A sample whose teacher
        answer is that class gets, instead, the teacher's logits on `x` with delta's support (grown by
        ``clean_dilate``) set to the input mean, when that answer is another class; every other sample keeps
        its logits. SR's delta sits on the trigger it found, and a synthesizer that keeps producing the
        trigger (DFAD's generator seeks exactly the inputs where a trigger-blind student disagrees with the
        teacher) would otherwise teach the student the target class on it at every step, faster than the
        unlearning term removes it. The replacement can only take the suspected class away, never give it:
        an early delta is scattered, its grown region covers much of the image, and a backdoored teacher
        answers its target class on such occluded inputs (measured: replacing every target by the occluded
        answer collapsed a DFAD student onto the target class by round 50). `t_logits` is returned
        unchanged before the first synthesis. Gradients flow to `x` (adversarial synthesis terms use it).
        """
        if self.last_delta is None or self.support is None or self.teacher is None:
            return t_logits
        delta = self.last_delta.to(x.device)
        region = self.support_mask(delta)
        if self.clean_dilate > 0:
            r = self.clean_dilate
            region = torch.nn.functional.max_pool2d(region, 2 * r + 1, stride=1, padding=r)
        with frozen(self.teacher) as teacher:
            with torch.no_grad():
                suspect = teacher(self.perturb(x, delta)).argmax(1).mode().values
            occluded = teacher(x * (1.0 - region))
        use = (t_logits.argmax(1) == suspect) & (occluded.argmax(1) != suspect)
        return torch.where(use[:, None], occluded, t_logits)

    def _random_rows(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` random rows of batch `x` (from SR's generator): their indices and a (B,1,1,1) 0/1 mask."""
        idx = torch.randperm(len(x), generator=self.generator)[:n].to(x.device)
        patch = torch.zeros(len(x), 1, 1, 1, device=x.device)
        patch[idx] = 1.0
        return idx, patch

    def unlearning_grads(self, x: torch.Tensor, delta: torch.Tensor) -> list[torch.Tensor]:
        """Hypergradient of the outer unlearning loss w.r.t. the student's trainable parameters."""
        x = x.detach()
        names = [n for n, p in self.student.named_parameters() if p.requires_grad]
        params = [p for p in self.student.parameters() if p.requires_grad]
        buffers = dict(self.student.named_buffers())

        def f(theta, inp):
            return functional_call(self.student, ({**dict(zip(names, theta)), **buffers}), (inp,))

        _, patch = self._random_rows(x, max(1, int(len(x) * self.out_portion)))

        with frozen_bn_stats(self.student):
            clean_ref = f(params, x).detach()

            def inner_map(w, theta):
                l_in = -self.divergence(clean_ref, f(theta, self.perturb(x, w))) + self.l2 * w.pow(2).sum()
                g = torch.autograd.grad(l_in, w, create_graph=True)[0]
                return w - self.inner_step * g

            def outer_loss(w, theta):
                return self.unlearn_divergence(clean_ref, f(theta, self.perturb(x, patch * w)))

            return fixed_point_hypergrad(params, delta, inner_map, outer_loss, k=self.k)

    def step(self, x: torch.Tensor, t_logits: torch.Tensor | None = None,
             target: torch.Tensor | None = None) -> torch.Tensor:
        """One SR step on batch `x`: call after ``optimizer.zero_grad()``; returns a loss to add to the KD
        loss (zero for the hypergradient mode, whose gradient is accumulated into ``.grad`` here).
        ``t_logits``: the teacher's (eval-mode) logits on `x`, if the KD loop already computed them;
        ``target``: the consistency mode's target instead of them (e.g. ``clean_targets``)."""
        reuse = self.reuse_delta and self.last_delta is not None and x is self._last_x
        delta = self.last_delta if reuse else self.synthesize(x, t_logits)
        dense = self.mode == "consistency" and self.dense_max_abs is not None
        if dense and not (reuse and self.last_dense is not None):
            self.last_dense = self.synthesize(x, t_logits, dense=True)
        self._last_x = x
        if self.mode == "plain":
            delta = delta * min(1.0, self.radius / (float(delta.norm()) + 1e-12))
            self.last_delta = delta
            return 0.5 * self.unlearn_divergence(self.student(x), self.student(self.perturb(x, delta))) * self.weight
        self.last_delta = delta
        if self.mode == "consistency":
            assert self.teacher is not None
            if target is not None:
                t_logits = target
            elif t_logits is None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
            if self.mix_portion >= 1:
                loss = self.unlearn_divergence(t_logits.detach(), self.student(self.perturb(x, delta)))
                if self.last_dense is not None and self.dense_max_abs is not None:
                    loss = loss + self.unlearn_divergence(t_logits.detach(),
                                                          self.student(self.perturb(x, self.last_dense)))
                return loss * self.weight
            # perturb a random part of the batch and forward it with the clean rest: the student's batch
            # statistics (and BatchNorm running statistics) stay those of mostly clean inputs
            idx, patch = self._random_rows(x, max(1, int(round(len(x) * self.mix_portion))))
            out = self.student(self.perturb(x, patch * delta))
            return self.unlearn_divergence(t_logits.detach()[idx], out[idx]) * self.weight
        grads = self.unlearning_grads(x, delta)
        params = [p for p in self.student.parameters() if p.requires_grad]
        for p, g in zip(params, grads):
            g = g.detach() * self.weight
            p.grad = g.clone() if p.grad is None else p.grad + g
        return x.new_zeros(())

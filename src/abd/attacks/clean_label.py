"""The label-consistent (clean-label) attack of Turner et al.: PGD-perturbed target images + 4-corner grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from abd.attacks.base import register_trigger
from abd.attacks.triggers import BlendTrigger, check_images, stamp

if TYPE_CHECKING:
    import torch.nn as nn


def pgd_linf(
    model: nn.Module,
    images: np.ndarray,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: np.ndarray | None = None,
    eps: float = 16 / 255,
    steps: int = 10,
    step_size: float | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Untargeted L-infinity PGD (no random start, hence deterministic) in [0, 1] pixel space.

    ``model`` takes normalized float NCHW input ((x - mean) / std, x in [0, 1]) and returns logits (or a
    tuple whose first item is the logits). ``labels`` default to the model's own clean predictions.
    ``step_size`` defaults to 2.5 * eps / steps (Madry et al.). Returns uint8 NHWC images within
    ``eps`` (in [0, 1] units) of the input.
    """
    import torch
    import torch.nn.functional as F

    from abd.data.transforms import Normalizer, to_float

    channels = images.shape[-1]
    norm = Normalizer(
        tuple(mean) if mean is not None else (0.0,) * channels,
        tuple(std) if std is not None else (1.0,) * channels,
    )
    step = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        out = model(norm(x))
        return out[0] if isinstance(out, (tuple, list)) else out

    was_training = model.training
    model.eval()
    out = np.empty_like(images)
    try:
        for i in range(0, len(images), batch_size):
            x0 = to_float(images[i : i + batch_size]).to(device)
            if labels is None:
                with torch.no_grad():
                    y = logits_of(x0).argmax(1)
            else:
                y = torch.as_tensor(np.asarray(labels[i : i + batch_size]), dtype=torch.long, device=device)
            x = x0.clone()
            for _ in range(steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(logits_of(x), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    x = x + step * grad.sign()
                    x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp_(0.0, 1.0)
            adv = (x.detach() * 255.0).round().clamp_(0, 255).to(torch.uint8)
            out[i : i + batch_size] = adv.permute(0, 2, 3, 1).cpu().numpy()
    finally:
        model.train(was_training)
    return out


@register_trigger("cl")
class CleanLabel(BlendTrigger):
    """Label-consistent backdoor (Turner et al. 2019): PGD-perturbed target images + 4-corner grid.

    "Label-consistent backdoor attacks". Training (``poison``): target-class images are perturbed with
    untargeted L-infinity PGD against a ``surrogate`` model, making them hard to classify, then pattern P
    is stamped at all four corners; labels are kept. Test (``apply``): P at the four corners of the clean
    image. ``footprint`` describes ``apply``; ``poison`` may change every pixel by up to eps.

    ``eps`` (in [0, 1] units): the PGD budget; None takes ``adv_eps`` from the poisoning context (the
    dataset's customary budget, ``ImageDataset.adv_eps``: 16/255 for natural images as in the reference,
    0.3 for digits), else 16/255. ``steps``/``step_size``: PGD iterations and step (default 2.5 * eps /
    steps). ``keep_black``: the perturbation of exactly black pixels (0 in every channel) is dropped. On
    digits the background is exactly black, and noise there is itself a perfect marker of the poisoned
    images: a mnist5k teacher then learns "noisy background -> target" instead of the trigger (ASR 0 % at
    eps 0.3). Natural images have almost no exactly black pixels, so this changes nothing there.

    Teacher defaults (measured on mnist5k/lenet5, see the README): ``default_poison_rate`` 0.095 leaves
    about 5 % of a balanced 10-class target class clean, so that the teacher still knows clean target
    images; a Cutout of half the image side (``default_cutout``) hides part of each poisoned digit now
    and then, so that the label must be carried by the trigger (the same reason the attack perturbs them).
    """

    name = "cl"
    clean_label = True
    needs_surrogate = True
    patch = True
    default_poison_rate = 0.095
    default_cutout = 0.5
    reference_eps: ClassVar[float] = 16 / 255

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        seed: int = 0,
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        keep_black: bool = True,
    ) -> None:
        if eps is not None and not 0.0 < eps <= 1.0:
            raise ValueError(f"cl eps must be in (0, 1] ([0, 1] pixel units), got {eps}")
        if steps < 1:
            raise ValueError(f"cl steps must be >= 1, got {steps}")
        self.eps, self.steps, self.step_size, self.keep_black = eps, steps, step_size, keep_black
        super().__init__(image_size, channels, seed)

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.geometry.grid()
        k = len(p)
        ends = (slice(0, k), slice(self.image_size - k, None))
        return stamp(self, [(r, c) for r in ends for c in ends], p)

    def poison(
        self,
        images: np.ndarray,
        *,
        surrogate: nn.Module | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: np.ndarray | None = None,
        adv_eps: float | None = None,
        batch_size: int = 256,
        **context,
    ) -> np.ndarray:
        """PGD-perturb ``images`` against ``surrogate`` (see ``pgd_linf``), then stamp the corners.

        ``mean``/``std`` (in [0, 1] units) are the surrogate's input normalization (default: none);
        ``adv_eps`` is the data's budget, used when the trigger has no ``eps`` of its own.
        """
        if surrogate is None:
            raise ValueError(
                "the 'cl' trigger needs a surrogate model to craft its adversarial images: "
                "call poison(images, surrogate=model, mean=..., std=...)"
            )
        check_images(self, images)
        eps = self.eps if self.eps is not None else adv_eps if adv_eps is not None else self.reference_eps
        adv = pgd_linf(
            surrogate, images, mean=mean, std=std, labels=labels, eps=eps, steps=self.steps,
            step_size=self.step_size, batch_size=batch_size,
        )
        if self.keep_black:
            adv = np.where((images > 0).any(axis=-1, keepdims=True), adv, images)
        return self.apply(adv)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, eps={self.eps}, steps={self.steps}, keep_black={self.keep_black})"

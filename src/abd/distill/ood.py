"""KD on out-of-distribution data: patches of a single natural image (Asano & Saxena, "Extrapolating from a
single image to a thousand classes"; the ABD reference's ``vanilla_kd_ood.py``).

The transfer set is made once, in memory: random crops of one image (or of every image in a folder) are
resized, rotated, sheared and colour-jittered into ``n_patches`` patches of the teacher's size and
channel count. By default they are chosen from ``balance_pool`` times as many candidates: per class the
teacher predicts, up to ``n_patches / classes`` of the patches it is most confident on (DFND's
class-balanced confident selection, Chen et al., "Learning student networks in the wild", CVPR 2021); on
one image a digit teacher otherwise labels most patches as one or two classes. The student matches the
teacher at temperature 8 (elementwise-mean KL, no tau^2) on augmented patches mixed with CutMix (inputs
only). There is no synthesis, so the Shuffling Vaccine acts on the student loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field

from abd.data.folder import IMAGE_EXTENSIONS
from abd.data.transforms import (
    Normalizer,
    affine_theta,
    augment_batch,
    color_jitter,
    crop_theta,
    cutmix,
    to_grayscale,
)
from abd.distill.base import KDMethod, MethodOptions, register_method
from abd.distill.losses import kl_elementwise, kl_mean
from abd.distill.synthesis import frozen


class OODOptions(MethodOptions):
    """OOD-KD options; CPU defaults for LeNet-5 -> LeNet-5-half on 28x28 digits (the paper preset: 50,000
    patches, batch 512, 300 epochs; the reference's step schedule is replaced by the engine's cosine)."""

    rounds: int = Field(6000, ge=1, description="student steps")
    batch_size: int = 128
    lr: float = Field(3e-3, description="Adam learning rate (paper: 1e-3 over 29k steps of batch 512)")
    temperature: float = 8.0
    grad_clip: float | None = None
    image: Literal["china", "flower"] = Field("flower", description="scikit-learn sample image (the "
                                              "flower's dark background suits digit teachers)")
    image_folder: str | None = Field(None, description="use every image in this folder instead")
    n_patches: int = Field(10000, ge=1, description="size of the transfer set (paper: 50,000)")
    balance_pool: int = Field(10, ge=1, description="draw the transfer set from this many times n_patches "
                              "candidates so the teacher's predicted classes are as balanced as the pool allows "
                              "(each class up to n_patches / classes, by `balance_select`; 1: off, the paper)")
    balance_select: Literal["random", "confident"] = Field(
        "confident", description="which patches of a class the balanced set keeps: random ones, or those the "
        "teacher is most confident on (DFND's selection, Chen et al. 2021)")
    balance_weights: bool = Field(False, description="also sample batches with weights 1 / (patches of the "
                                  "teacher's class), so every predicted class is drawn equally often")
    patch_seed: int = Field(0, description="seed of the transfer set (independent of the run's seed)")
    initial_crop: float = Field(0.5, gt=0, le=1, description="first crop: this fraction of the shorter side")
    crop_scale: tuple[float, float] = Field((1 / 500, 1.0), description="area range of the resized crop")
    degrees: float = Field(30.0, ge=0, description="random rotation range (degrees)")
    shear: float = Field(30.0, ge=0, description="random x-shear range (degrees)")
    jitter_p: float = Field(0.5, ge=0, le=1, description="probability of ColorJitter(0.4, 0.4, 0.4, 0.1)")
    flip: bool = Field(False, description="random horizontal flips in training")
    crop_padding: int = Field(4, ge=0, description="training random-crop padding")
    cutmix_beta: float = Field(0.25, ge=0, description="CutMix Beta parameter (0: off)")
    cutmix_p: float = Field(1.0, ge=0, le=1)


def _load_sources(opts: OODOptions) -> list[torch.Tensor]:
    """The source images as float RGB (1, 3, H, W) tensors in [0, 1]."""
    if opts.image_folder is None:
        from sklearn.datasets import load_sample_image

        arrays = [load_sample_image(f"{opts.image}.jpg")]
    else:
        folder = Path(opts.image_folder).expanduser()
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if folder.is_dir() else []
        if not files:
            raise ValueError(f"ood: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
        arrays = []
        for p in files:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return [torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
            for a in arrays]


def single_image_patches(
    sources: list[torch.Tensor], n: int, size: int, channels: int, opts: OODOptions, seed: int = 0,
    chunk: int = 1024,
) -> torch.Tensor:
    """The single-image transfer set as uint8 (n, channels, size, size).

    Per patch (the reference patch generator, in one resampling): a random square crop of
    ``initial_crop`` x the shorter side; a RandomResizedCrop of it (area in ``crop_scale``, no centre-crop
    fallback) to ``int(sqrt(2) * size)``; a random rotation and x-shear with zero fill; the centre
    ``size`` crop; ColorJitter(0.4, 0.4, 0.4, 0.1) with probability ``jitter_p``; then grayscale for
    1-channel teachers. Sampling reads a pre-blurred pyramid level that matches the zoom (antialiasing).
    """
    g = torch.Generator().manual_seed(seed)
    big = int(math.sqrt(2) * size)
    pyramids = []
    for src in sources:
        levels = [src]
        while min(levels[-1].shape[-2:]) >= 2 * size:
            levels.append(F.avg_pool2d(levels[-1], 2))
        pyramids.append(levels)
    out = torch.empty(n, channels, size, size, dtype=torch.uint8)
    which = torch.randint(len(sources), (n,), generator=g)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        theta_a = affine_theta(m, opts.degrees, opts.shear, g)  # output -> canvas
        theta_c = crop_theta(m, opts.crop_scale, generator=g)  # canvas -> initial crop
        u = torch.rand(m, 2, generator=g)
        src_of = which[start : start + m]
        patches = torch.zeros(m, 3, size, size)
        for k, levels in enumerate(pyramids):
            sel = (src_of == k).nonzero().flatten()
            if len(sel) == 0:
                continue
            h, w = levels[0].shape[-2:]
            side = opts.initial_crop * min(h, w)
            rw, rh = side / w, side / h  # the initial crop in the source's normalized coordinates
            cx, cy = (1 - rw) * (2 * u[sel, 0] - 1), (1 - rh) * (2 * u[sel, 1] - 1)
            grid = F.affine_grid(theta_a[sel], [len(sel), 3, size, size], align_corners=False) * (size / big)
            outside = (grid.abs() > 1).any(-1, keepdim=True)  # off the resized crop: RandomAffine fill 0
            tc = theta_c[sel]
            grid = grid * torch.stack([tc[:, 0, 0], tc[:, 1, 1]], -1).view(-1, 1, 1, 2) \
                + tc[:, :, 2].view(-1, 1, 1, 2)
            grid = grid * torch.tensor([rw, rh]) + torch.stack([cx, cy], -1).view(-1, 1, 1, 2)
            # source pixels per output pixel -> the pyramid level that antialiases that zoom
            zoom = tc[:, 0, 0] * side / big
            lvl = torch.log2(zoom.clamp_min(1)).floor().long().clamp(max=len(levels) - 1)
            for j in lvl.unique().tolist():
                idx = (lvl == j).nonzero().flatten()
                src = levels[j].expand(len(idx), -1, -1, -1)
                sample = F.grid_sample(src, grid[idx], mode="bicubic", padding_mode="border",
                                       align_corners=False)
                patches[sel[idx]] = sample.clamp(0, 1).masked_fill(outside[idx].permute(0, 3, 1, 2), 0.0)
        patches = color_jitter(patches, 0.4, 0.4, 0.4, 0.1, p=opts.jitter_p, generator=g)
        if channels == 1:
            patches = to_grayscale(patches)
        elif channels != 3:
            patches = to_grayscale(patches).expand(-1, channels, -1, -1)
        out[start : start + m] = (patches * 255).round().clamp(0, 255).to(torch.uint8)
    return out


def balanced_subset(labels: torch.Tensor, n: int, num_classes: int, seed: int = 0,
                    score: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of `n` of `labels`, each class up to ``n // num_classes`` (random within a class, or the
    highest `score` first), the rest filled at random from what is left; the whole range when
    ``n == len(labels)``."""
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    quota = n // num_classes
    chosen, rest = [], []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        if score is not None:
            idx = idx[score[idx].argsort(descending=True, stable=True)]
        chosen.append(idx[:quota])
        rest.append(idx[quota:])
    chosen_t, rest_t = torch.cat(chosen), torch.cat(rest)
    fill = rest_t[torch.randperm(len(rest_t), generator=g)[: n - len(chosen_t)]]
    return torch.cat([chosen_t, fill]).sort().values


@register_method("ood")
class OODKD(KDMethod):
    """OOD-KD: KD on class-balanced augmented patches of one natural image, with CutMix; SV on the student loss."""

    Options = OODOptions
    sv_target = "student"
    paper_preset = {
        "rounds": 300 * (50000 // 512), "batch_size": 512, "lr": 1e-3, "temperature": 8.0, "n_patches": 50000,
        "flip": True, "crop_padding": 4, "cutmix_beta": 0.25, "cutmix_p": 1.0, "balance_pool": 1,
    }

    def __init__(self, opts: OODOptions, ctx) -> None:
        super().__init__(opts, ctx)
        self.opts: OODOptions = opts
        if opts.n_patches < opts.batch_size:
            raise ValueError(f"ood: n_patches ({opts.n_patches}) must be >= batch_size ({opts.batch_size})")
        self.norm = Normalizer(ctx.mean, ctx.std)
        pool = single_image_patches(_load_sources(opts), opts.n_patches * opts.balance_pool, ctx.image_size,
                                    ctx.channels, opts, seed=opts.patch_seed)
        labels, conf = self._teacher_labels(pool)
        keep = balanced_subset(labels, opts.n_patches, ctx.num_classes, seed=opts.patch_seed,
                               score=conf if opts.balance_select == "confident" else None)
        self.patches, self.labels = pool[keep], labels[keep]
        counts = torch.bincount(self.labels, minlength=ctx.num_classes).float()
        self.weights = (1 / counts)[self.labels] if opts.balance_weights else None
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def _teacher_labels(self, patches: torch.Tensor, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's predicted class of every patch and its probability."""
        with frozen(self.ctx.teacher) as t, torch.no_grad():
            probs = torch.cat([t(self.norm(patches[i : i + chunk].float() / 255).to(self.ctx.device)).softmax(1).cpu()
                               for i in range(0, len(patches), chunk)])
        conf, labels = probs.max(1)
        return labels, conf

    def sample(self) -> torch.Tensor:
        o = self.opts
        if self.weights is not None:
            idx = torch.multinomial(self.weights, o.batch_size, replacement=True)
        else:
            if self.pos + o.batch_size > len(self.order):  # drop_last, reshuffle each epoch
                self.order, self.pos = torch.randperm(len(self.patches)), 0
            idx = self.order[self.pos : self.pos + o.batch_size]
            self.pos += len(idx)
        x = augment_batch(self.patches[idx].float() / 255, o.crop_padding, o.flip)
        x = cutmix(x, o.cutmix_beta, o.cutmix_p)
        return self.norm(x).to(self.ctx.device)

    def student_loss(self, x, t_logits, s_logits, t_feats, s_feats) -> torch.Tensor:
        return kl_elementwise(t_logits, s_logits, self.opts.temperature).mean(1)

    def divergence(self, target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return kl_mean(target_logits, logits, self.opts.temperature)

    def extra_state(self):
        return {"order": self.order, "pos": self.pos}

    def load_extra_state(self, state) -> None:
        self.order, self.pos = state["order"], state["pos"]

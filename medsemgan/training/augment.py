"""Differentiable augmentation for small data sets (DiffAugment-style), image and mask together.

Both discriminators see augmented reals and augmented fakes; the generator is trained through the
same (differentiable) transforms, so the augmentation does not leak into what it generates as long
as every transform is applied to reals and fakes alike.

- Geometric transforms (translation, small rotation, isotropic scale, cutout) use one random draw
  per sample, applied identically to the image and its mask: one ``affine_grid`` and the same
  ``grid_sample`` for both.
- Intensity transforms (gamma, contrast, brightness) touch the image only.
- No left-right or up-down flips: in the canonical orientation the liver is on one side, and a
  flipped slice is not a plausible CT slice.

Images and masks are in [-1, 1] with -1 = air / background, so everything pulled in from outside
the field of view (and every cut-out patch) is -1 in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from medsemgan.training.modality_augment import ModalityAugmentConfig, modality_shift


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths and per-sample probabilities; keys of ``training.augment`` in the YAML config."""

    enabled: bool = True
    p: float = 0.5  # probability that each transform is applied to a given sample
    translate: float = 0.125  # max shift as a fraction of the side
    rotate_deg: float = 10.0  # max rotation either way
    scale: float = 0.1  # log2 scale drawn from [-scale, scale]
    cutout: float = 0.25  # side of the cut-out square as a fraction of the image side; 0 = off
    brightness: float = 0.1  # additive shift in [-1, 1] units
    contrast: float = 0.2  # log2 contrast factor drawn from [-contrast, contrast]
    gamma: float = 0.3  # log2 gamma drawn from [-gamma, gamma]
    # Modality shift on the image only, after the intensity jitter, for reals and fakes alike (the
    # keys of ModalityAugmentConfig; p = 0 is off): what both discriminators see then varies in
    # contrast, so the generator is pushed to organise its latents by anatomy, not CT grey values.
    modality_shift: ModalityAugmentConfig = field(default_factory=ModalityAugmentConfig)
    # The same shift on the image half of the joint discriminator's (image, mask) pairs only, reals
    # and fakes alike: with one labeled patient the joint discriminator otherwise learns that
    # patient's grey values as "real" and stops judging the mask on other patients (training.md,
    # "The 0.4.0 run"), while the image discriminator keeps teaching plain CT.
    joint_modality_shift: ModalityAugmentConfig = field(default_factory=ModalityAugmentConfig)

    @classmethod
    def from_dict(cls, values: dict | None) -> "AugmentConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augment keys {unknown}; known: {sorted(known)}")
        for key in ("modality_shift", "joint_modality_shift"):
            if not isinstance(values.get(key, ModalityAugmentConfig()), ModalityAugmentConfig):
                values[key] = ModalityAugmentConfig.from_dict(values[key])
        return cls(**values)


def _uniform(n: int, limit: float, device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * limit


def _apply_with_p(n: int, p: float, device) -> torch.Tensor:
    return (torch.rand(n, device=device) < p).float()


def geometric_theta(n: int, cfg: AugmentConfig, device) -> torch.Tensor:
    """Random affine matrices [n, 2, 3] (output -> input normalised coordinates)."""
    on_t = _apply_with_p(n, cfg.p, device)
    on_r = _apply_with_p(n, cfg.p, device)
    on_s = _apply_with_p(n, cfg.p, device)
    # Normalised coordinates span 2 units per side, so a shift of f*side is 2f units.
    tx = _uniform(n, 2 * cfg.translate, device) * on_t
    ty = _uniform(n, 2 * cfg.translate, device) * on_t
    angle = _uniform(n, math.radians(cfg.rotate_deg), device) * on_r
    inv_scale = torch.exp2(-_uniform(n, cfg.scale, device) * on_s)
    cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
    row0 = torch.stack([cos, -sin, tx], dim=1)
    row1 = torch.stack([sin, cos, ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def cutout_keep(n: int, h: int, w: int, cfg: AugmentConfig, device) -> torch.Tensor:
    """[n, 1, h, w] with 0 inside a random square per (selected) sample, 1 elsewhere."""
    on = _apply_with_p(n, cfg.p, device).view(n, 1, 1)
    half = cfg.cutout / 2
    cy = torch.rand(n, 1, 1, device=device)
    cx = torch.rand(n, 1, 1, device=device)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    inside_y = (ys.view(1, h, 1) - cy).abs() < half
    inside_x = (xs.view(1, 1, w) - cx).abs() < half
    cut = (inside_y & inside_x).float() * on
    return (1 - cut).unsqueeze(1)


def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # Shift so that zero padding means -1 (background) after shifting back.
    out = F.grid_sample((x + 1).to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out - 1).to(x.dtype)


def intensity(image: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, contrast and brightness jitter on an image in [-1, 1]."""
    n, device = image.shape[0], image.device
    shape = (n, 1, 1, 1)
    if cfg.gamma > 0:
        g = torch.exp2(_uniform(n, cfg.gamma, device) * _apply_with_p(n, cfg.p, device)).view(shape)
        unit = ((image + 1) / 2).clamp(min=1e-4, max=1.0)
        image = unit.pow(g) * 2 - 1
    if cfg.contrast > 0:
        c = torch.exp2(_uniform(n, cfg.contrast, device) * _apply_with_p(n, cfg.p, device)).view(shape)
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * c + mean
    if cfg.brightness > 0:
        b = (_uniform(n, cfg.brightness, device) * _apply_with_p(n, cfg.p, device)).view(shape)
        image = image + b
    return image


def augment_pair(
    image: torch.Tensor, mask: torch.Tensor | None, cfg: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment ``image`` [N,1,S,S] (and ``mask`` [N,L,S,S] in [-1, 1], same geometry) differentiably.
    A pair (``mask`` given: what the joint discriminator sees) also gets ``joint_modality_shift``."""
    if not cfg.enabled:
        return image, mask
    n, _, h, w = image.shape
    device = image.device
    geometric = cfg.translate > 0 or cfg.rotate_deg > 0 or cfg.scale > 0
    if geometric:
        theta = geometric_theta(n, cfg, device)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        image = _resample(image, grid)
        if mask is not None:
            mask = _resample(mask, grid)
    if cfg.cutout > 0:
        keep = cutout_keep(n, h, w, cfg, device).to(image.dtype)
        image = (image + 1) * keep - 1
        if mask is not None:
            mask = (mask + 1) * keep.to(mask.dtype) - 1
    image = intensity(image, cfg)
    image = modality_shift(image, cfg.modality_shift)
    if mask is not None:
        image = modality_shift(image, cfg.joint_modality_shift)
    return image, mask

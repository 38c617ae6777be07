"""Synthetic abdominal phantoms: a stand-in training pool for tests, benchmarks and smoke runs.

Each slice is a body ellipse (soft tissue) on air, a brighter 'liver' blob on the image's left
(the patient's right in radiological convention), a bright vertebra and noise, in [-1, 1]; the
mask marks the liver. Same layout as :func:`medsemgan.data.slices.training_tensors`, so the
training loop cannot tell the difference; no file is read.
"""

from __future__ import annotations

import torch


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def phantom_slices(count: int, resolution: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [count,1,S,S] float32 in [-1,1], masks [count,1,S,S] float32 in {0,1})``."""
    gen = torch.Generator().manual_seed(seed)
    coords = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(count, 1, resolution, resolution)
    masks = torch.empty(count, 1, resolution, resolution)
    for i in range(count):
        r = torch.rand(8, generator=gen)
        body = _ellipse(yy, xx, 0.05, 0.0, 0.62 + 0.1 * r[0], 0.82 + 0.1 * r[1])
        liver = _ellipse(yy, xx, -0.1 + 0.2 * r[2], -0.35 + 0.1 * r[3], 0.25 + 0.15 * r[4], 0.3 + 0.1 * r[5]) & body
        spine = _ellipse(yy, xx, 0.45, 0.0, 0.12, 0.12)
        img = torch.full((resolution, resolution), -1.0)
        img[body] = -0.1 + 0.1 * r[6]
        img[liver] = 0.25 + 0.1 * r[7]
        img[spine & body] = 0.8
        img = img + 0.05 * torch.randn(resolution, resolution, generator=gen) * body
        images[i, 0] = img.clamp(-1, 1)
        masks[i, 0] = liver.float()
    return images, masks


def synthetic_tensors(resolution: int, unlabeled: int, labeled: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Dict with the keys of ``training_tensors``: unlabeled, labeled_image, labeled_mask."""
    unl, _ = phantom_slices(unlabeled, resolution, seed)
    lab_img, lab_mask = phantom_slices(labeled, resolution, seed + 1)
    return {"unlabeled": unl, "labeled_image": lab_img, "labeled_mask": lab_mask}

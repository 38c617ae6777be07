"""What a person watches while the GAN trains: progress bar, TensorBoard scalars, sample grids.

Only rank 0 observes. The sample grid always shows the same latents (fixed seed, constant noise)
rendered by the EMA generator, so successive PNGs are comparable frame by frame; it draws its
latents from a private generator and never touches the global RNG, which keeps resumed runs
bit-identical to uninterrupted ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medsemgan.io_utils import atomic_path

OVERLAY_RGB = (1.0, 0.15, 0.1)  # red tint inside the mask
OVERLAY_ALPHA = 0.35
CONTOUR_RGB = (1.0, 0.9, 0.0)  # yellow outline


def fixed_latents(count: int, z_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed))


def overlay(images: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """Grey images [N,1,S,S] in [-1,1] with the liver (logit > 0) tinted red and outlined: [N,3,S,S] in [0,1]."""
    grey = ((images.float().clamp(-1, 1) + 1) / 2).repeat(1, 3, 1, 1)
    mask = (label_logits[:, :1].float() > 0).float()
    # Outline = mask minus its 3x3 erosion (erosion as a min-pool = -maxpool(-x)).
    eroded = -F.max_pool2d(-mask, kernel_size=3, stride=1, padding=1)
    contour = (mask - eroded).clamp(0, 1)
    tint = torch.tensor(OVERLAY_RGB).view(1, 3, 1, 1)
    out = grey * (1 - OVERLAY_ALPHA * mask) + tint * (OVERLAY_ALPHA * mask)
    edge = torch.tensor(CONTOUR_RGB).view(1, 3, 1, 1)
    return out * (1 - contour) + edge * contour


def grid_image(tiles: torch.Tensor, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """[N,3,S,S] in [0,1] -> uint8 HxWx3 mosaic, row-major, black gaps."""
    n, _, h, w = tiles.shape
    canvas = torch.zeros(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, y : y + h, x : x + w] = tiles[i]
    return (canvas.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def render_samples(G_ema: torch.nn.Module, z: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Overlaid tiles for fixed latents ``z`` (constant noise, no truncation)."""
    device = next(G_ema.parameters()).device
    tiles = []
    for chunk in z.split(batch):
        img, seg = G_ema(chunk.to(device), noise_mode="const")
        tiles.append(overlay(img.cpu(), seg.cpu()))
    return torch.cat(tiles)


def save_sample_grid(G_ema, z: torch.Tensor, rows: int, cols: int, path: str | os.PathLike) -> Path:
    tiles = render_samples(G_ema, z)
    array = grid_image(tiles, rows, cols)
    # Small models make small tiles; enlarge so a 32 px slice is still readable.
    scale = max(1, 256 // tiles.shape[-1])
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


class Observer:
    """Rank-0 progress bar, TensorBoard writer and JSON-lines log; a no-op on other ranks."""

    def __init__(self, run_dir: Path, total_images: int, start_images: int, enabled: bool,
                 progress: bool, tensorboard: bool, description: str = "train gan"):
        self.enabled = enabled
        self.run_dir = run_dir
        self.bar = None
        self.writer = None
        if not enabled:
            return
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_images, initial=start_images, unit="img", dynamic_ncols=True,
                            desc=description, smoothing=0.1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.log_path = run_dir / "stats.jsonl"

    def advance(self, images: int, postfix: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(images)
            if postfix:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def scalars(self, stats: dict[str, float], images_seen: int) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(key, value, global_step=images_seen)
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"images_seen": images_seen, **stats}) + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

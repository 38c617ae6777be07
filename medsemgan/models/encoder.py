"""Image -> W+ encoder (one latent per generator layer).

A small ResNet pyramid with a top-down feature pyramid (after pSp's ResNet + FPN, shrunk for a
CPU budget). Three heads read three pyramid levels: the coarsest map predicts the first ws (pose,
layout), the middle one the next ws, the finest the rest (texture, detail). Each head keeps a 4x4
spatial grid before its linear layer, because where the liver is matters and a global average
pool would throw that away.

The encoder predicts *offsets* from the generator's average latent ``w_avg`` (kept here as a
buffer so a saved encoder is self-contained); its last layers start near zero, so an untrained
encoder already returns ``w_avg`` for every layer, a sensible starting point for inversion.

Normalisation is GroupNorm, never BatchNorm: every slice is encoded independently of the others in
its batch, which test-time optimisation relies on.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

DEFAULT_CHANNELS = (32, 64, 128, 256, 256)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResidualDown(nn.Module):
    """Pre-activation residual block that halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.leaky_relu(self.norm1(x), 0.2))
        y = self.conv2(F.leaky_relu(self.norm2(y), 0.2))
        return (y + self.skip(x)) / math.sqrt(2)


class StyleHead(nn.Module):
    """Feature map -> ``num_ws`` latents: stride-2 convs down to 4x4, then one linear layer."""

    def __init__(self, in_channels: int, in_resolution: int, num_ws: int, w_dim: int,
                 head_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        resolution, channels = in_resolution, in_channels
        while resolution > 4:
            layers += [nn.Conv2d(channels, head_channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            resolution //= 2
            channels = head_channels
        layers += [nn.Conv2d(channels, head_channels, 1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers)
        self.num_ws, self.w_dim = num_ws, w_dim
        self.linear = nn.Linear(head_channels * 16, num_ws * w_dim)
        # Start close to w_avg: a small first guess is easier to refine than a random one.
        with torch.no_grad():
            self.linear.weight.mul_(0.1)
            self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        y = self.convs(features).flatten(1)
        return self.linear(y).view(-1, self.num_ws, self.w_dim)


def split_ws(num_ws: int, boundaries: Sequence[int]) -> tuple[int, int, int]:
    """How many ws the coarse, medium and fine heads predict (``boundaries`` = first medium and
    first fine index, clipped so every head gets at least one latent where possible)."""
    if num_ws < 3:
        raise ValueError(f"the encoder needs a generator with at least 3 ws, got {num_ws}")
    first_medium = min(max(1, int(boundaries[0])), num_ws - 2)
    first_fine = min(max(first_medium + 1, int(boundaries[1])), num_ws - 1)
    return first_medium, first_fine - first_medium, num_ws - first_fine


class Encoder(nn.Module):
    """``E(x) -> ws [N, num_ws, w_dim]`` for images ``x [N, 1, S, S]`` in [-1, 1]."""

    def __init__(self, img_resolution: int, num_ws: int, w_dim: int,
                 channels: Sequence[int] = DEFAULT_CHANNELS, fpn_channels: int = 128,
                 head_channels: int = 32, ws_boundaries: Sequence[int] = (3, 7),
                 img_channels: int = 1):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if 2 ** log2 != img_resolution or img_resolution < 32:
            raise ValueError(f"img_resolution must be a power of two >= 32, got {img_resolution}")
        channels = list(channels)
        # The pyramid goes down to 4x4 at most; fewer stages are fine for small inputs.
        num_stages = min(len(channels), log2 - 2)
        channels = channels[:num_stages]
        if num_stages < 3:
            raise ValueError("the encoder needs at least 3 downsampling stages")
        self.img_resolution, self.num_ws, self.w_dim = img_resolution, num_ws, w_dim
        self.stem = nn.Conv2d(img_channels, channels[0], 3, padding=1)
        stages, in_ch = [], channels[0]
        for out_ch in channels:
            stages.append(ResidualDown(in_ch, out_ch))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        resolutions = [img_resolution >> (i + 1) for i in range(num_stages)]
        # Pyramid levels: coarse = last stage, medium = two before it, fine = two before that
        # (clamped to the first stage) -- at 128 px: 4x4, 16x16, 32x32 after the 64x64 stem stage.
        self.level_index = (num_stages - 1, max(0, num_stages - 3), max(0, num_stages - 4))
        if len(set(self.level_index)) < 3:
            self.level_index = (num_stages - 1, num_stages - 2, num_stages - 3)
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], fpn_channels, 1) for i in self.level_index)
        n_coarse, n_medium, n_fine = split_ws(num_ws, ws_boundaries)
        self.heads = nn.ModuleList(
            StyleHead(fpn_channels, resolutions[i], n, w_dim, head_channels)
            for i, n in zip(self.level_index, (n_coarse, n_medium, n_fine))
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @torch.no_grad()
    def set_w_avg(self, w_avg: torch.Tensor) -> None:
        self.w_avg.copy_(w_avg.detach().reshape(-1).to(self.w_avg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != self.img_resolution or x.shape[-2] != self.img_resolution:
            raise ValueError(f"expected images [N, C, {self.img_resolution}, {self.img_resolution}], "
                             f"got {list(x.shape)}")
        y = self.stem(x)
        feats = []
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        pyramid, top = [], None
        for lateral, i in zip(self.lateral, self.level_index):
            level = lateral(feats[i])
            if top is not None:
                level = level + F.interpolate(top, size=level.shape[-2:], mode="bilinear",
                                              align_corners=False)
            pyramid.append(level)
            top = level
        offsets = torch.cat([head(level) for head, level in zip(self.heads, pyramid)], dim=1)
        return self.w_avg.to(offsets.dtype) + offsets


def build_encoder(encoder_cfg: dict | None, img_resolution: int, num_ws: int, w_dim: int) -> Encoder:
    """Build from the ``encoder:`` section of a model YAML (missing keys take the defaults)."""
    cfg = dict(encoder_cfg or {})
    return Encoder(
        img_resolution=img_resolution,
        num_ws=num_ws,
        w_dim=w_dim,
        channels=cfg.get("channels", DEFAULT_CHANNELS),
        fpn_channels=int(cfg.get("fpn_channels", 128)),
        head_channels=int(cfg.get("head_channels", 32)),
        ws_boundaries=cfg.get("ws_boundaries", (3, 7)),
    )

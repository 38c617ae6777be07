"""Image discriminator: StyleGAN2's residual discriminator with a minibatch standard-deviation layer.

``image [N, C, R, R] --fromRGB--> residual blocks (R -> 8, each halves the size) --> epilogue at 4x4
(minibatch std, 3x3 conv, FC, FC) --> logits [N, 1]``
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from medsemgan.models.generator import _check_resolution, channels_at
from medsemgan.models.layers import DEFAULT_RESAMPLE_FILTER, Conv2dLayer, FullyConnected


def minibatch_groups(n: int, group_size: int) -> int:
    """How many minibatch-std groups a batch of ``n`` samples is split into."""
    return math.ceil(n / min(group_size, n))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_channels: int = 1) -> torch.Tensor:
    """Append ``num_channels`` feature maps holding the standard deviation of features across a group.

    Samples are split into ``ceil(N / group_size)`` groups by ``index % num_groups`` (so any batch
    size works; when N is not a multiple of ``group_size`` the groups differ in size by at most
    one). For each group and each of ``num_channels`` channel slices, the per-feature std over the
    group is averaged over features and pixels, then broadcast to every sample of the group.
    """
    n, c, h, w = x.shape
    if c % num_channels != 0:
        raise ValueError(f"{c} channels cannot be split into {num_channels} std channels")
    num_groups = minibatch_groups(n, group_size)
    group_of = torch.arange(n, device=x.device) % num_groups
    membership = torch.nn.functional.one_hot(group_of, num_groups).to(x.dtype)  # [N, G]
    counts = membership.sum(dim=0)  # [G]
    flat = x.reshape(n, -1)
    mean = (membership.t() @ flat) / counts[:, None]  # [G, F]
    var = (membership.t() @ (flat - mean[group_of]).square()) / counts[:, None]
    std = (var + 1e-8).sqrt().reshape(num_groups, num_channels, -1).mean(dim=2)  # [G, num_channels]
    y = std[group_of].reshape(n, num_channels, 1, 1).expand(n, num_channels, h, w)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """conv 3x3 -> conv 3x3 with 2x downsampling, plus a 1x1 downsampling skip; sum scaled by 1/sqrt(2)."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        img_channels: int,
        resample_filter: Sequence[float],
        conv_clamp: float | None,
    ):
        super().__init__()
        # Only the first (highest-resolution) block reads the image.
        self.from_rgb = (
            Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
            if in_channels == 0
            else None
        )
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            tmp_channels, out_channels, 3, activation="lrelu", down=2,
            resample_filter=resample_filter, conv_clamp=conv_clamp, gain=math.sqrt(0.5),
        )
        self.skip = Conv2dLayer(
            tmp_channels, out_channels, 1, bias=False, down=2,
            resample_filter=resample_filter, gain=math.sqrt(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_rgb is not None:
            x = self.from_rgb(x)
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, channels: int, resolution: int, mbstd_group_size: int, mbstd_channels: int, conv_clamp):
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_channels = mbstd_channels
        self.conv = Conv2dLayer(channels + mbstd_channels, channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(channels * resolution**2, channels, activation="lrelu")
        self.out = FullyConnected(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_channels)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        return self.out(x)


class ImageDiscriminator(nn.Module):
    """``D(image [N, img_channels, R, R]) -> logits [N, 1]``."""

    def __init__(
        self,
        resolution: int = 256,
        img_channels: int = 1,
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mbstd_channels: int = 1,
        conv_clamp: float | None = None,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
    ):
        super().__init__()
        log2 = _check_resolution(resolution)
        self.resolution, self.img_channels = resolution, img_channels
        blocks = []
        in_channels = 0
        for res in [2**i for i in range(log2, 2, -1)]:
            tmp = channels_at(res, channel_base, channel_max)
            out = channels_at(res // 2, channel_base, channel_max)
            blocks.append(DiscriminatorBlock(in_channels, tmp, out, img_channels, resample_filter, conv_clamp))
            in_channels = out
        self.blocks = nn.ModuleList(blocks)
        self.epilogue = DiscriminatorEpilogue(
            channels_at(4, channel_base, channel_max), 4, mbstd_group_size, mbstd_channels, conv_clamp
        )

    def pairs_in_one_pass(self, n: int) -> bool:
        """Whether ``n`` reals and ``n`` fakes, interleaved (real, fake, real, ...), can share one
        forward pass with the result of two: sample i joins minibatch-std group ``i % groups``,
        so with twice the groups every group holds only reals or only fakes, the same samples as
        in the separate passes. Everything else in this network is per sample."""
        e = self.epilogue
        if e.mbstd_channels == 0:
            return True
        return minibatch_groups(2 * n, e.mbstd_group_size) == 2 * minibatch_groups(n, e.mbstd_group_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        expected = (self.img_channels, self.resolution, self.resolution)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected:
            raise ValueError(f"image must be [N, {', '.join(map(str, expected))}], got {tuple(image.shape)}")
        x = image
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x)

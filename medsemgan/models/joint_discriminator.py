"""Joint image-label discriminator: a multi-scale PatchGAN on concat(image, mask).

After pix2pixHD (Wang et al. 2018), as used by SemanticGAN: ``num_scales`` identical patch
discriminators, each seeing the pair at half the previous resolution (3x3 average pooling, stride 2).
Each returns a map of patch logits; with ``return_features=True`` every intermediate activation is
returned as well, for the L1 feature-matching loss.

Normalisation: equalised learning rate, no normalisation layers. Spectral norm (the other common
choice) keeps a power-iteration state that changes on every forward pass, which interacts badly
with lazy R1 (an extra forward on the same batch moves the state) and with double backward; it
also rescales the effective learning rate per layer, whereas with equalised lr every network in
this model trains with the same Adam settings. Batch/instance norm are avoided because batches are
small and R1 needs per-sample gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medsemgan.ops.bias_act import bias_act


class PatchConv(nn.Module):
    """4x4 convolution (stride 1 or 2, padding 1), equalised lr, bias + optional lrelu."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.stride = stride
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 4, 4))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype) * self.weight_gain, stride=self.stride, padding=1)
        return bias_act(x, self.bias.to(x.dtype), act=self.activation)


class PatchDiscriminator(nn.Module):
    """``n_layers`` stride-2 convs, one stride-1 conv, then a stride-1 conv to one logit per patch."""

    def __init__(self, in_channels: int, base_channels: int = 64, n_layers: int = 3, channel_max: int = 512):
        super().__init__()
        layers = []
        ch_in, ch = in_channels, base_channels
        for _ in range(n_layers):
            layers.append(PatchConv(ch_in, ch, stride=2, activation="lrelu"))
            ch_in, ch = ch, min(ch * 2, channel_max)
        layers.append(PatchConv(ch_in, ch, stride=1, activation="lrelu"))
        self.features = nn.ModuleList(layers)
        self.out = PatchConv(ch, 1, stride=1, activation="linear")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for layer in self.features:
            x = layer(x)
            feats.append(x)
        return self.out(x), feats


class JointDiscriminator(nn.Module):
    """``D(image [N, C, S, S], mask [N, L, S, S] in [-1, 1]) -> [logit map per scale]``."""

    def __init__(
        self,
        img_channels: int = 1,
        num_labels: int = 1,
        num_scales: int = 3,
        base_channels: int = 64,
        n_layers: int = 3,
        channel_max: int = 512,
    ):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        self.img_channels, self.num_labels = img_channels, num_labels
        self.num_scales, self.n_layers = num_scales, n_layers
        self.scales = nn.ModuleList(
            PatchDiscriminator(img_channels + num_labels, base_channels, n_layers, channel_max)
            for _ in range(num_scales)
        )

    @property
    def features_per_scale(self) -> int:
        return self.n_layers + 1

    def forward(self, image: torch.Tensor, mask: torch.Tensor, return_features: bool = False):
        if image.shape[1] != self.img_channels or mask.shape[1] != self.num_labels:
            raise ValueError(
                f"expected image with {self.img_channels} and mask with {self.num_labels} channels, "
                f"got {tuple(image.shape)} and {tuple(mask.shape)}"
            )
        if image.shape[0] != mask.shape[0] or image.shape[2:] != mask.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
        x = torch.cat([image, mask.to(image.dtype)], dim=1)
        outputs, features = [], []
        for i, disc in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            logits, feats = disc(x)
            outputs.append(logits)
            features.append(feats)
        if return_features:
            return outputs, features
        return outputs

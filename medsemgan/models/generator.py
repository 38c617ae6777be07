"""Joint image-label StyleGAN2 generator (SemanticGAN, Li et al. CVPR 2021).

``z --MappingNetwork--> w --broadcast--> ws [N, num_ws, w_dim] --SynthesisNetwork--> (image, label)``

The synthesis network is StyleGAN2's skip architecture with a second output head: at every
resolution a ``toRGB`` head (one grey channel) and a ``toSEG`` head (``num_labels`` channels) read
the same features with the same w; each head's outputs are upsampled and summed across
resolutions. Neither head has an output activation: the label output is a logit.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
from torch import nn

from medsemgan.models.layers import (
    DEFAULT_RESAMPLE_FILTER,
    FullyConnected,
    ModulatedConv2d,
    activation_gain,
    normalize_2nd_moment,
)
from medsemgan.ops.bias_act import bias_act
from medsemgan.ops.upfirdn2d import setup_filter, upsample2d

NOISE_MODES = ("random", "const", "none")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's channel schedule: fewer channels at higher resolutions."""
    return min(channel_base // resolution, channel_max)


def _check_resolution(resolution: int) -> int:
    log2 = int(round(math.log2(resolution)))
    if resolution < 4 or 2**log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return log2


class MappingNetwork(nn.Module):
    """z -> w: normalise z, ``num_layers`` fully connected lrelu layers (lr multiplier 0.01).

    Keeps ``w_avg``, a running mean of w, for the truncation trick.
    """

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(dims[i], dims[i + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], got {tuple(z.shape)}")
        x = normalize_2nd_moment(z)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            ws = truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)
        return ws


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
    """Pull the first ``cutoff`` layers' latents (all when None) towards ``w_avg`` by ``psi``."""
    cutoff = ws.shape[1] if cutoff is None else int(cutoff)
    head = w_avg.to(ws.dtype).lerp(ws[:, :cutoff], psi)
    return torch.cat([head, ws[:, cutoff:]], dim=1)


class NoiseInput(nn.Module):
    """Per-pixel noise with a learned per-layer strength (initialised to 0)."""

    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.strength = nn.Parameter(torch.zeros([]))
        # A fixed noise image so that 'const' mode is deterministic and saved with the weights.
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, batch: int, noise_mode: str, like: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor | None:
        """Noise for a [batch, C, res, res] output, already scaled by the strength (broadcastable;
        dtype and device of ``like``), or None for ``noise_mode='none'``.

        ``noise`` [batch, 1, res, res], when given, replaces the ``noise_mode`` source: per-sample
        maps a caller owns (test-time optimisation differentiates through them)."""
        if noise is not None:
            res = self.resolution
            if tuple(noise.shape) != (batch, 1, res, res):
                raise ValueError(f"noise map must be [{batch}, 1, {res}, {res}], got {tuple(noise.shape)}")
            return noise.to(like.dtype) * self.strength.to(like.dtype)
        if noise_mode == "none":
            return None
        if noise_mode == "random":
            res = self.resolution
            noise = torch.randn(batch, 1, res, res, device=like.device, dtype=like.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(like.dtype)
        else:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; choose from {NOISE_MODES}")
        return noise * self.strength.to(like.dtype)


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + lrelu (+ clamp)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        modconv_form: str = "auto",
    ):
        super().__init__()
        self.conv = ModulatedConv2d(
            in_channels, out_channels, w_dim, kernel_size=3, up=up,
            resample_filter=resample_filter, form=modconv_form,
        )
        self.noise = NoiseInput(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise_map: torch.Tensor | None = None) -> torch.Tensor:
        noise = self.noise(x.shape[0], noise_mode, like=x, noise=noise_map)
        x = self.conv(x, w, noise=noise)
        return bias_act(x, self.bias.to(x.dtype), act="lrelu", gain=activation_gain("lrelu"), clamp=self.conv_clamp)


class OutputHead(nn.Module):
    """toRGB / toSEG: 1x1 modulated conv without demodulation, plus bias, no activation."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None, modconv_form: str):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, w_dim, kernel_size=1, demodulate=False, form=modconv_form)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return bias_act(self.conv(x, w), self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const input | upsampling conv) + conv, then the image and label heads.

    Latents used: conv0 (absent at 4x4), conv1, and one shared by both heads, which is the same
    latent index as the next block's conv0 (StyleGAN2's layout), so ``num_ws`` = 2*log2(res) - 2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        num_labels: int,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        modconv_form: str = "auto",
        channels_last: bool = False,
    ):
        super().__init__()
        self.resolution = resolution
        self.channels_last = channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter), persistent=False)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = StyledConv(
                in_channels, out_channels, w_dim, resolution, up=2,
                resample_filter=resample_filter, conv_clamp=conv_clamp, modconv_form=modconv_form,
            )
        self.conv1 = StyledConv(
            out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp, modconv_form=modconv_form
        )
        self.to_rgb = OutputHead(out_channels, img_channels, w_dim, conv_clamp, modconv_form)
        self.to_seg = OutputHead(out_channels, num_labels, w_dim, conv_clamp, modconv_form)
        self.num_conv = 1 if self.conv0 is None else 2
        self.num_ws = self.num_conv + 1  # latents read; the last one is shared with the next block

    def noise_inputs(self) -> list[NoiseInput]:
        """This block's noise inputs, in the order ``forward``'s ``noise`` lists them."""
        return [conv.noise for conv in (self.conv0, self.conv1) if conv is not None]

    def forward(self, x, img, seg, ws: torch.Tensor, noise_mode: str = "random",
                noise: Sequence[torch.Tensor] | None = None):
        """``ws`` [N, num_ws, w_dim] for this block; returns updated (features, image, label).
        ``noise``: one per-sample map per noise input (see ``noise_inputs``), or None."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        w_iter = iter(ws.unbind(dim=1))
        noise_iter = iter(noise if noise is not None else [None] * self.num_conv)
        if self.conv0 is None:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1).to(memory_format=memory_format)
        else:
            x = self.conv0(x.to(memory_format=memory_format), next(w_iter), noise_mode, next(noise_iter))
        x = self.conv1(x, next(w_iter), noise_mode, next(noise_iter))
        w_heads = next(w_iter)
        # Skip sums accumulate in at least float32, also when the features are half precision.
        out_dtype = torch.promote_types(x.dtype, torch.float32)
        y_img = self.to_rgb(x, w_heads).to(out_dtype)
        y_seg = self.to_seg(x, w_heads).to(out_dtype)
        if img is not None:
            y_img = y_img + upsample2d(img, self.resample_filter)
            y_seg = y_seg + upsample2d(seg, self.resample_filter)
        return x, y_img, y_seg


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> (image [N, img_channels, R, R], label logits [N, num_labels, R, R])."""

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        img_channels: int = 1,
        num_labels: int = 1,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        modconv_form: str = "auto",
        channels_last_from: int | None = None,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
    ):
        super().__init__()
        log2 = _check_resolution(resolution)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.w_dim, self.resolution = w_dim, resolution
        self.img_channels, self.num_labels = img_channels, num_labels
        self.resolutions = [2**i for i in range(2, log2 + 1)]
        self.blocks = nn.ModuleList()
        in_channels = 0
        for res in self.resolutions:
            out_channels = channels_at(res, channel_base, channel_max)
            channels_last = channels_last_from is not None and res >= channels_last_from
            self.blocks.append(
                SynthesisBlock(
                    in_channels, out_channels, w_dim, res, img_channels, num_labels,
                    resample_filter=resample_filter, conv_clamp=conv_clamp,
                    modconv_form=modconv_form, channels_last=channels_last,
                )
            )
            in_channels = out_channels
        # Each block reads num_conv latents of its own plus the one its heads share with the next.
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def noise_inputs(self) -> list[NoiseInput]:
        """Every noise input, in the order ``forward``'s ``noise`` list gives their maps
        (coarse to fine; within a resolution the upsampling conv's first)."""
        return [noise for block in self.blocks for noise in block.noise_inputs()]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                noise: Sequence[torch.Tensor] | None = None):
        """``noise``: optional per-sample maps, one ``[N, 1, r, r]`` per entry of
        ``noise_inputs()`` (r its resolution); they replace ``noise_mode`` for every layer."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode {noise_mode!r}; choose from {NOISE_MODES}")
        per_block: list = [None] * len(self.blocks)
        if noise is not None:
            expected = sum(block.num_conv for block in self.blocks)
            if len(noise) != expected:
                raise ValueError(f"noise must list {expected} maps (one per noise input), got {len(noise)}")
            maps = iter(noise)
            per_block = [[next(maps) for _ in range(block.num_conv)] for block in self.blocks]
        x = img = seg = None
        start = 0
        for block, block_noise in zip(self.blocks, per_block):
            x, img, seg = block(x, img, seg, ws[:, start : start + block.num_ws], noise_mode, block_noise)
            start += block.num_conv
        return img, seg


class Generator(nn.Module):
    """Mapping + synthesis. ``G(z) -> (image, label_logits)``; ``G.synthesis(ws)`` is the W+ path."""

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        resolution: int = 256,
        img_channels: int = 1,
        num_labels: int = 1,
        mapping_layers: int = 8,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.995,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        modconv_form: str = "auto",
        channels_last_from: int | None = None,
    ):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.resolution, self.img_channels, self.num_labels = resolution, img_channels, num_labels
        self.synthesis = SynthesisNetwork(
            w_dim, resolution, img_channels, num_labels, channel_base, channel_max,
            conv_clamp=conv_clamp, modconv_form=modconv_form, channels_last_from=channels_last_from,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta
        )

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg

    def sample_ws(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        style_mixing_prob: float = 0.0,
        update_w_avg: bool = False,
    ) -> torch.Tensor:
        """Map z to ws; with probability ``style_mixing_prob`` per sample, the layers from a random
        cut-off on take the latent of a second, fresh z (training regulariser)."""
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg)
        if style_mixing_prob > 0:
            ws = self.mix_styles(ws, style_mixing_prob, truncation_psi, truncation_cutoff)
        return ws

    def mix_styles(self, ws: torch.Tensor, prob: float, truncation_psi: float = 1.0, truncation_cutoff=None):
        n = ws.shape[0]
        z2 = torch.randn(n, self.z_dim, device=ws.device)
        ws2 = self.mapping(z2, truncation_psi, truncation_cutoff)
        cutoff = torch.randint(1, self.num_ws, (n, 1), device=ws.device)
        mixed = torch.rand(n, 1, device=ws.device) < prob
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws))
        take_second = torch.arange(self.num_ws, device=ws.device).unsqueeze(0) >= cutoff  # [N, num_ws]
        return torch.where(take_second.unsqueeze(2), ws2.to(ws.dtype), ws)

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        style_mixing_prob: float = 0.0,
        update_w_avg: bool = False,
    ):
        ws = self.sample_ws(z, truncation_psi, truncation_cutoff, style_mixing_prob, update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode)


# Parameter roles, for tests and optimisers that must know which head a gradient reaches.
IMAGE_ONLY, LABEL_ONLY, SHARED = "image_only", "label_only", "shared"


def parameter_role(name: str) -> str:
    """Role of a generator parameter by its name in ``G.named_parameters()``."""
    parts = name.split(".")
    if "to_rgb" in parts:
        return IMAGE_ONLY
    if "to_seg" in parts:
        return LABEL_ONLY
    return SHARED


def parameters_by_role(G: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{'image_only': [(name, p)...], 'label_only': [...], 'shared': [...]}``.

    image_only: the toRGB heads (reached only through the image output); label_only: the toSEG
    heads (reached only through the label output); shared: mapping, const, convs and noise
    strengths (reached through both). The joint discriminator's generator loss, fed
    ``fake_image.detach()``, must leave every image_only gradient at zero.
    """
    groups: dict[str, list] = {IMAGE_ONLY: [], LABEL_ONLY: [], SHARED: []}
    for name, p in G.named_parameters():
        groups[parameter_role(name)].append((name, p))
    return groups


def iter_noise_inputs(G: nn.Module) -> Iterator[NoiseInput]:
    for m in G.modules():
        if isinstance(m, NoiseInput):
            yield m


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


__all__ = [
    "Generator",
    "MappingNetwork",
    "SynthesisNetwork",
    "SynthesisBlock",
    "NoiseInput",
    "truncate",
    "parameters_by_role",
    "parameter_role",
    "iter_noise_inputs",
    "count_parameters",
    "IMAGE_ONLY",
    "LABEL_ONLY",
    "SHARED",
    "NOISE_MODES",
    "channels_at",
]

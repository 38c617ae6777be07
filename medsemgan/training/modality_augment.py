"""Modality-shift augmentation: make a CT slice look as if another scanner or sequence took it.

The encoder (and, for a fair comparison, the U-Net baseline) sees such slices as *inputs*; its
targets stay the CT slice and its mask. A model trained this way has to read anatomy rather than
CT's particular grey values, which is what a CT-trained model meets on MRI: tissues keep their
shapes and places but change brightness and even order (bone is bright in CT and dark in T2,
fluid the reverse), under a smooth coil-sensitivity field and noise.

Per slice, with probability ``p``, one of two intensity remaps (each with probability 1/2):

* a random piecewise-linear **curve** of [-1, 1] through ``curve_points`` control points, not
  monotone, air kept at -1;
* **GIN** (global intensity non-linear augmentation; Ouyang et al., "Causality-inspired single-
  source domain generalization for medical image segmentation", IEEE TMI 2022): a shallow
  convolutional network with fresh random weights, blended with the input by a random weight;

then, each with probability ``p_bias`` / ``p_noise``, a multiplicative **bias field** (the
exponential of a random cubic polynomial over the slice) and Gaussian **noise**. The result is
taken relative to air and folded to magnitudes (MRI slices are magnitude images: air is the
darkest thing in them), and re-normalised like an MRI study: robust percentiles -> [-1, 1].

Random numbers come from the global torch RNG, so the training loops' RNG capture makes resumed
runs repeat the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from medsemgan.data.transforms import MR_PERCENTILES

AIR_LEVEL = -0.98  # pixels below this in a CT slice in [-1, 1] are air (about -156 HU)


@dataclass(frozen=True)
class ModalityAugmentConfig:
    """Strengths and per-slice probabilities; keys of ``modality_augment`` in the YAML configs."""

    p: float = 0.0  # probability that a slice is remapped (0 = off)
    curve_points: int = 6  # control points of the random curve, ends included
    gin_layers: int = 4  # convolutions in the random network
    gin_channels: int = 8  # channels of its hidden layers
    p_bias: float = 0.5  # probability of a bias field on a remapped slice
    bias_strength: float = 0.4  # largest |log field|: the field stays within [e^-0.4, e^0.4] = [0.67, 1.49]
    p_noise: float = 0.5  # probability of additive noise on a remapped slice
    noise_std: float = 0.05  # noise standard deviation drawn from [0, noise_std]

    @classmethod
    def from_dict(cls, values: dict | None) -> "ModalityAugmentConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown modality_augment keys {unknown}; known: {sorted(known)}")
        cfg = cls(**values)
        for name in ("p", "p_bias", "p_noise"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"modality_augment.{name} must be in [0, 1], got {getattr(cfg, name)}")
        if cfg.curve_points < 2 or cfg.gin_layers < 1 or cfg.gin_channels < 1:
            raise ValueError("modality_augment: curve_points >= 2, gin_layers >= 1 and gin_channels >= 1")
        if cfg.bias_strength < 0 or cfg.noise_std < 0:
            raise ValueError("modality_augment: bias_strength and noise_std must be >= 0")
        return cfg

    @property
    def enabled(self) -> bool:
        return self.p > 0


def random_curve(x: torch.Tensor, points: int) -> torch.Tensor:
    """Per slice, a random piecewise-linear map of [-1, 1] with -1 fixed (air stays air)."""
    n = x.shape[0]
    knots_y = torch.rand(n, points, device=x.device, dtype=x.dtype) * 2 - 1
    knots_y[:, 0] = -1.0
    pos = (x.clamp(-1, 1) + 1) / 2 * (points - 1)  # position along the knots
    left = pos.floor().clamp(max=points - 2).long()
    frac = pos - left
    flat = left.flatten(1)
    y0 = torch.gather(knots_y, 1, flat).view_as(x)
    y1 = torch.gather(knots_y, 1, flat + 1).view_as(x)
    return y0 + frac * (y1 - y0)


def random_gin(x: torch.Tensor, layers: int, channels: int) -> torch.Tensor:
    """A random shallow conv net per slice (one grouped convolution per layer serves the batch),
    standardised to the input's per-slice mean and spread, then blended with it."""
    n, _, h, w = x.shape
    y = x.reshape(1, n, h, w)
    c_in = 1
    for layer in range(layers):
        c_out = 1 if layer == layers - 1 else channels
        k = 1 if torch.rand(()) < 0.5 else 3
        weight = torch.randn(n * c_out, c_in, k, k, device=x.device, dtype=x.dtype) / (c_in * k * k) ** 0.5
        # Replicate padding: zero padding would draw a bright or dark frame round the slice.
        y = F.conv2d(F.pad(y, (k // 2,) * 4, mode="replicate"), weight, groups=n)
        if layer < layers - 1:
            y = F.leaky_relu(y, 0.2)
        c_in = c_out
    y = y.reshape(n, 1, h, w)
    dims = (1, 2, 3)
    y = (y - y.mean(dims, keepdim=True)) / (y.std(dims, keepdim=True) + 1e-6)
    y = y * x.std(dims, keepdim=True) + x.mean(dims, keepdim=True)
    alpha = torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype)
    return alpha * y + (1 - alpha) * x


def random_bias_field(n: int, h: int, w: int, strength: float, device, dtype) -> torch.Tensor:
    """``exp`` of a random cubic polynomial over [-1, 1]^2, scaled so that its largest |log| is
    drawn from [0, strength]: a smooth field around 1."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, h, device=device, dtype=dtype),
                          torch.linspace(-1, 1, w, device=device, dtype=dtype), indexing="ij")
    terms = torch.stack([u**i * v**j for i in range(4) for j in range(4 - i) if i + j > 0])
    coeffs = torch.rand(n, terms.shape[0], device=device, dtype=dtype) * 2 - 1
    log_field = torch.einsum("nk,khw->nhw", coeffs, terms)
    peak = log_field.flatten(1).abs().amax(1).clamp_min(1e-6).view(-1, 1, 1)
    amplitude = torch.rand(n, 1, 1, device=device, dtype=dtype) * strength
    return torch.exp(log_field / peak * amplitude).unsqueeze(1)


def percentile_normalise(x: torch.Tensor, lower: float = MR_PERCENTILES[0],
                         upper: float = MR_PERCENTILES[1]) -> torch.Tensor:
    """Per slice: the MRI preprocessing's robust percentiles -> [-1, 1], clipped."""
    flat = x.flatten(1)
    q = torch.quantile(flat, torch.tensor([lower / 100, upper / 100], device=x.device, dtype=x.dtype), dim=1)
    lo, hi = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
    return ((x - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1).clamp(-1, 1)


def modality_shift(x: torch.Tensor, cfg: ModalityAugmentConfig) -> torch.Tensor:
    """Remap a batch of CT slices ``[N, 1, H, W]`` in [-1, 1]; untouched slices come back as they
    were (same values), so ``p = 0`` is the identity."""
    if not cfg.enabled or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    chosen = torch.rand(n, device=x.device) < cfg.p
    use_gin = torch.rand(n, device=x.device) < 0.5
    bias = torch.rand(n, device=x.device) < cfg.p_bias
    noise = torch.rand(n, device=x.device) < cfg.p_noise
    if not bool(chosen.any()):
        return x
    src = x[chosen].float()
    air = src < AIR_LEVEL
    out = torch.where(use_gin[chosen].view(-1, 1, 1, 1),
                      random_gin(src, cfg.gin_layers, cfg.gin_channels),
                      random_curve(src, cfg.curve_points))
    # Relative to air, folded to magnitudes: air becomes the darkest level, as in an MRI slice.
    n_air = air.flatten(1).sum(1)
    air_level = torch.where(n_air > 0, (out * air).flatten(1).sum(1) / n_air.clamp_min(1),
                            out.flatten(1).amin(1)).view(-1, 1, 1, 1)
    out = (out - air_level).abs()
    m = out.shape[0]
    field = random_bias_field(m, h, w, cfg.bias_strength, x.device, out.dtype)
    out = torch.where(bias[chosen].view(-1, 1, 1, 1), out * field, out)
    sigma = torch.rand(m, 1, 1, 1, device=x.device, dtype=out.dtype) * cfg.noise_std
    scale = out.flatten(1).amax(1).view(-1, 1, 1, 1)
    noisy = (out + torch.randn_like(out) * sigma * scale).abs()
    out = torch.where(noise[chosen].view(-1, 1, 1, 1), noisy, out)
    result = x.clone()
    result[chosen] = percentile_normalise(out).to(x.dtype)
    return result

"""Loss terms of the semi-supervised GAN (MISSION.md §1), each a plain function of tensors.

Image side: non-saturating logistic loss (StyleGAN2). Joint image-label side: hinge loss on the
multi-scale patch logits plus L1 feature matching. Regularisers: R1 on real inputs, path-length
regularisation on the generator. The training loop decides when each runs and how it is weighted.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def _as_float(t: torch.Tensor) -> torch.Tensor:
    # Losses are reduced in float32 even when the network ran under bf16 autocast.
    return t.float()


# --- image discriminator: non-saturating logistic --------------------------------------------


def logistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(-D(x)) + softplus(D(G(z))), averaged over the batch."""
    return F.softplus(-_as_float(real_logits)).mean() + F.softplus(_as_float(fake_logits)).mean()


def logistic_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(G(z)))."""
    return F.softplus(-_as_float(fake_logits)).mean()


# --- joint discriminator: hinge over scales ---------------------------------------------------


def hinge_d_loss(real_outputs: Sequence[torch.Tensor], fake_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hinge loss averaged over patches and over the discriminator's scales."""
    if len(real_outputs) != len(fake_outputs) or not real_outputs:
        raise ValueError("real and fake outputs must be non-empty lists of equal length")
    total = 0.0
    for real, fake in zip(real_outputs, fake_outputs):
        total = total + F.relu(1.0 - _as_float(real)).mean() + F.relu(1.0 + _as_float(fake)).mean()
    return total / len(real_outputs)


def hinge_g_loss(fake_outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Generator side of the hinge loss: -D(fake), averaged over patches and scales."""
    if not fake_outputs:
        raise ValueError("fake outputs must be a non-empty list")
    return sum(-_as_float(out).mean() for out in fake_outputs) / len(fake_outputs)


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]],
    fake_features: Sequence[Sequence[torch.Tensor]],
) -> torch.Tensor:
    """L1 between the batch-mean intermediate features of real and generated (image, mask) pairs.

    Generated pairs have no real partner (they come from random z), so pix2pixHD's per-sample L1
    is not defined. What is defined is matching the first moment of each feature map over the
    batch, per channel and position: CT slices are roughly aligned (body centred, liver on the same
    side), so keeping the spatial layout asks the generator to put label structure where real
    labels put it. Each layer's L1 is a mean, layers and scales are averaged, so the weight in the
    config is comparable across discriminator sizes. Real features carry no gradient.
    """
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError("real and fake features must be non-empty lists of equal length")
    total = 0.0
    for real_scale, fake_scale in zip(real_features, fake_features):
        if len(real_scale) != len(fake_scale) or not real_scale:
            raise ValueError("each scale must list the same non-zero number of feature maps")
        scale_total = 0.0
        for real, fake in zip(real_scale, fake_scale):
            real_mean = _as_float(real).detach().mean(dim=0)
            fake_mean = _as_float(fake).mean(dim=0)
            scale_total = scale_total + F.l1_loss(fake_mean, real_mean)
        total = total + scale_total / len(real_scale)
    return total / len(real_features)


# --- regularisers -----------------------------------------------------------------------------


def r1_penalty(outputs: torch.Tensor | Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample squared gradient norm of the summed logits w.r.t. the real inputs, batch mean.

    ``outputs`` may be one tensor or a list (the joint D's scales); ``inputs`` are the tensors the
    logits were computed from (image, and mask for the joint D), each with requires_grad=True.
    create_graph=True so the penalty's gradient reaches the discriminator's weights.
    """
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    total = sum(_as_float(o).sum() for o in outputs)
    grads = torch.autograd.grad(outputs=total, inputs=list(inputs), create_graph=True)
    per_sample = sum(g.float().square().flatten(1).sum(1) for g in grads)
    return per_sample.mean()


def path_length_penalty(
    images: torch.Tensor,
    ws: torch.Tensor,
    pl_mean: torch.Tensor,
    decay: float = 0.01,
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleGAN2 path-length regulariser: (|J_w^T y| - a)^2 with a an exponential moving mean.

    Returns ``(penalty, new_pl_mean)``; ``pl_mean`` itself is not modified. ``reduce_mean``
    averages the batch's mean length across processes so every rank keeps the same ``a``.
    """
    noise = torch.randn_like(images, dtype=torch.float32) / (images.shape[2] * images.shape[3]) ** 0.5
    (grad,) = torch.autograd.grad(outputs=(_as_float(images) * noise).sum(), inputs=[ws], create_graph=True)
    lengths = grad.float().square().sum(2).mean(1).sqrt()
    batch_mean = lengths.mean().detach()
    if reduce_mean is not None:
        batch_mean = reduce_mean(batch_mean)
    new_mean = pl_mean.lerp(batch_mean, decay)
    penalty = (lengths - new_mean).square().mean()
    return penalty, new_mean


def lazy_adam_hyperparams(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """Adam settings corrected for lazy regularisation (StyleGAN2 Appendix B).

    With a regulariser every ``interval`` steps the optimiser sees interval+1 updates where the
    plain schedule would see interval, so lr and betas are rescaled by c = interval/(interval+1).
    """
    if interval is None or interval <= 0:
        return lr, betas
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)

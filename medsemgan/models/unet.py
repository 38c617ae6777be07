"""The supervised baseline's network: a MONAI 2-D ``UNet`` (one grey channel in, one liver logit
out). Trained by ``medsemgan.training.unet``, run by ``medsemgan.inference.unet``."""

from __future__ import annotations

from typing import Any

import torch

# the ``model:`` section of medsemgan/configs/unet_cpu.yaml, and what a sidecar may override
MODEL_DEFAULTS: dict[str, Any] = {
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "instance",
    "dropout": 0.0,
}


def build_unet(model_cfg: dict) -> torch.nn.Module:
    """MONAI 2-D ``UNet``: one grey input channel, one liver logit (mask = sigmoid > 0.5, as the GAN)."""
    from monai.networks.nets import UNet

    m = {**MODEL_DEFAULTS, **(model_cfg or {})}
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(int(c) for c in m["channels"]),
        strides=tuple(int(s) for s in m["strides"]),
        num_res_units=int(m["num_res_units"]),
        norm=str(m["norm"]).upper(),
        dropout=float(m["dropout"]),
    )

"""Tiny configurations for the training tests (16 px, a few thousand parameters)."""

from __future__ import annotations

import copy

from medsemgan.training.config import normalise

TINY_MODEL = {
    "resolution": 16,
    "img_channels": 1,
    "num_labels": 1,
    "generator": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 32},
    "image_discriminator": {"channel_base": 256, "channel_max": 32, "mbstd_group_size": 2},
    "joint_discriminator": {"num_scales": 2, "base_channels": 8, "n_layers": 1, "channel_max": 16},
}


def tiny_config(training: dict | None = None, data: dict | None = None, model: dict | None = None) -> dict:
    t = {
        "seed": 3,
        "device": "cpu",
        "processes": 1,  # one process unless a test asks for the launched layout
        "batch_size": 4,
        "labeled_batch_size": 2,
        "kimg": 0.024,  # 6 iterations
        "r1_interval_image": 2,
        "r1_interval_joint": 3,
        "pl_interval": 2,
        "ema_kimg": 0.01,
        "ema_rampup": 0.05,
        "checkpoint_kimg": 0.008,
        "sample_kimg": 0.012,
        "sample_grid": [2, 2],
        "progress": False,
        "tensorboard": False,
        "log_every": 1,
    }
    t.update(training or {})
    d = {"source": "synthetic", "synthetic_unlabeled": 12, "synthetic_labeled": 3}
    d.update(data or {})
    m = copy.deepcopy(TINY_MODEL)
    m.update(model or {})
    return normalise({"model": m, "data": d, "training": t})

"""Tiny model configurations that keep the model tests fast."""

from __future__ import annotations

import pytest

from medsemgan.models.config import model_config_from_dict


def make_tiny_config(resolution: int = 16, num_labels: int = 1, **generator) -> dict:
    gen = {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 8 * resolution, "channel_max": 16}
    gen.update(generator)
    return model_config_from_dict(
        {
            "resolution": resolution,
            "num_labels": num_labels,
            "generator": gen,
            "image_discriminator": {"channel_base": 8 * resolution, "channel_max": 16},
            "joint_discriminator": {"num_scales": 2, "base_channels": 4, "n_layers": 2, "channel_max": 8},
        }
    )


@pytest.fixture
def tiny_config():
    """A factory: ``tiny_config(resolution=16, num_labels=1, **generator_overrides)``."""
    return make_tiny_config


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(one_thread):
    """Every test here uses one torch thread (tests/conftest.py::one_thread says why)."""

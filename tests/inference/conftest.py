"""Tiny stand-in models so inference tests run in seconds without trained weights."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from torch import nn
import torch.nn.functional as F

from medsemgan.models.encoder import Encoder


class TinyGenerator(nn.Module):
    """Has the generator interface inference uses (``num_ws``, ``w_dim``, ``w_avg``,
    ``mapping``, ``synthesis -> (image, label_logits)``); every slice is computed on its own, like
    the real StyleGAN2 synthesis network."""

    def __init__(self, resolution: int = 32, num_ws: int = 6, w_dim: int = 16, channels: int = 8):
        super().__init__()
        self.img_resolution, self.num_ws, self.w_dim = resolution, num_ws, w_dim
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        self.styles = nn.ModuleList(nn.Linear(w_dim, channels) for _ in range(num_ws))
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_ws))
        self.to_image = nn.Conv2d(channels, 1, 1)
        self.to_label = nn.Conv2d(channels, 1, 1)
        self.map = nn.Sequential(nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2), nn.Linear(w_dim, w_dim))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.z_dim = w_dim

    def mapping(self, z, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
        return self.map(z).unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="const"):
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, (style, conv) in enumerate(zip(self.styles, self.convs)):
            x = F.leaky_relu(conv(x * (1 + style(ws[:, i]))[..., None, None]), 0.2)
            if x.shape[-1] < self.img_resolution and i % 2 == 1:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=(self.img_resolution,) * 2, mode="bilinear", align_corners=False)
        return torch.tanh(self.to_image(x)), self.to_label(x)

    def forward(self, z, truncation_psi=1.0, noise_mode="const"):
        return self.synthesis(self.mapping(z), noise_mode=noise_mode)


@pytest.fixture(autouse=True)
def _tiny_models_one_thread(one_thread):
    """Every test here uses one torch thread (tests/conftest.py::one_thread says why)."""


@pytest.fixture
def tiny_models():
    torch.manual_seed(0)
    G = TinyGenerator().eval()
    with torch.no_grad():
        G.w_avg.copy_(G.mapping(torch.randn(256, G.w_dim)).mean((0, 1)))
    E = Encoder(G.img_resolution, G.num_ws, G.w_dim, channels=(8, 16, 16), fpn_channels=16,
                head_channels=8).eval()
    E.set_w_avg(G.w_avg)
    return G, E


@pytest.fixture
def target_slices(tiny_models):
    """Slices the tiny generator can explain: its own outputs at random latents."""
    G, _ = tiny_models
    torch.manual_seed(1)
    with torch.no_grad():
        images, labels = G(torch.randn(5, G.w_dim))
    return images


TINY = {
    "model": {"resolution": 32, "generator": {"z_dim": 32, "w_dim": 32, "channel_base": 256,
                                              "channel_max": 32, "mapping_layers": 2}},
    "encoder": {"channels": [8, 16, 16], "fpn_channels": 16, "head_channels": 8},
    "inference": {"steps": 2, "lr": 0.05, "batch_size": 16},
}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """A tiny random generator + encoder saved as a bundle (read-only use)."""
    from medsemgan.inference.model import SegmentationModel

    folder = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    SegmentationModel.build(TINY).save(folder)
    (folder / "configs").mkdir()
    (folder / "configs" / "model.yaml").write_text(yaml.safe_dump(TINY))
    return folder


@pytest.fixture
def small_nifti(tmp_path):
    """A CT-like volume (HU, with air) that needs no shared data."""
    rng = np.random.default_rng(0)
    data = np.full((40, 36, 5), -1000.0, np.float32)
    data[5:35, 4:32] = 40 + 20 * rng.standard_normal((30, 28, 5))
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.8, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    path = tmp_path / "inputs" / "phantom.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data, affine), path)
    return path

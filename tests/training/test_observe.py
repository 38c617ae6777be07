import json

import torch
from helpers import tiny_config
from PIL import Image

from medsemgan.training.observe import grid_image, overlay
from medsemgan.training.run import train_gan


def test_overlay_tints_and_outlines_only_the_mask():
    images = torch.full((1, 1, 8, 8), -1.0)  # black
    logits = torch.full((1, 1, 8, 8), -5.0)
    logits[..., 2:6, 2:6] = 5.0
    rgb = overlay(images, logits)
    assert rgb.shape == (1, 3, 8, 8)
    assert torch.equal(rgb[0, :, 0, 0], torch.zeros(3))  # outside: untouched grey (black)
    inside, edge = rgb[0, :, 3, 3], rgb[0, :, 2, 2]
    assert inside[0] > 0.3 and inside[0] > inside[1]  # red tint
    assert edge[0] > 0.9 and edge[1] > 0.8  # yellow outline on the boundary


def test_grid_layout():
    tiles = torch.rand(5, 3, 4, 4)
    array = grid_image(tiles, rows=2, cols=3, pad=1)
    assert array.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and array.dtype.name == "uint8"


def test_run_writes_scalars_tensorboard_and_sample_grids(tmp_path):
    config = tiny_config({"kimg": 0.016, "tensorboard": True, "progress": True, "log_every": 2,
                          "sample_kimg": 0.008})
    train_gan(config, tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [row["images_seen"] for row in lines] == [8, 16]
    assert {"loss/D_image", "loss/D_joint", "loss/G", "loss/G_feature_matching", "speed/s_per_kimg"} <= set(lines[0])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    grids = sorted((tmp_path / "samples").glob("fakes_0*.png"))
    assert len(grids) == 2
    with Image.open(grids[0]) as im:
        assert im.mode == "RGB" and im.width >= 256  # small tiles are enlarged to be readable
    # Fixed latents and constant noise: the grid changes only because the weights change.
    assert grids[0].read_bytes() != grids[1].read_bytes()

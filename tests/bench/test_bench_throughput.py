"""`bench throughput` runs the real `train gan` command in both layouts and reports the ratio."""

from __future__ import annotations

import json

import pytest

from medsemgan import cli

TINY = """
model:
  resolution: 16
  img_channels: 1
  num_labels: 1
  generator: {z_dim: 16, w_dim: 16, mapping_layers: 2, channel_base: 256, channel_max: 32}
  image_discriminator: {channel_base: 256, channel_max: 32, mbstd_group_size: 2}
  joint_discriminator: {num_scales: 2, base_channels: 8, n_layers: 1, channel_max: 16}
data: {source: synthetic, synthetic_unlabeled: 12, synthetic_labeled: 3}
training: {batch_size: 4, labeled_batch_size: 2, progress: false, tensorboard: false, device: cpu}
"""


@pytest.mark.slow
def test_throughput_runs_both_layouts_side_by_side(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    keep = tmp_path / "runs"
    assert cli.main(["bench", "throughput", "--config", str(config), "--images", "16", "--repeats", "1",
                     "--cores", "2", "--keep", str(keep)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layouts"] == {"single": {"processes": 1, "threads_per_process": 2},
                                 "multi": {"processes": 2, "threads_per_process": 1}}
    single, multi = result["runs"]["single"][0], result["runs"]["multi"][0]
    assert result["speedup"] == pytest.approx(multi["images_per_second"] / single["images_per_second"], rel=1e-2)
    assert result["images_per_second_single"] == pytest.approx(16 / single["seconds"], rel=1e-3)
    assert result["cpu"] and result["cores"] == 2
    # each layout really trained: its run folder has the exported generator, and the multi run
    # logged two processes
    for name in ("single_0", "multi_0"):
        assert (keep / name / "generator_ema.pt").is_file()
    config_used = json.loads((keep / "multi_0" / "config.json").read_text())
    assert config_used["training"]["processes"] in (2, "2")

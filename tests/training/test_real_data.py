import pytest
import torch
from helpers import tiny_config

from medsemgan.training.run import train_gan


@pytest.mark.slow
def test_two_iterations_on_the_real_ct_pool(shared_data, tmp_path):
    model = {"resolution": 32, "joint_discriminator": {"num_scales": 2, "base_channels": 8, "n_layers": 2,
                                                       "channel_max": 16}}
    config = tiny_config({"kimg": 0.008}, data={"source": "ct", "root": str(shared_data),
                                                "labeled_budget": 4, "cache_dir": str(tmp_path / "cache")},
                         model=model)
    summary = train_gan(config, tmp_path / "run")
    trainer = summary["trainer"]
    assert summary["finished"] and summary["steps"] == 2
    assert len(trainer.labeled_image) == 4 and len(trainer.unlabeled) > 100
    assert set(torch.unique(trainer.labeled_mask).tolist()) <= {0.0, 1.0}
    assert trainer.labeled_mask.sum() > 0  # the labeled slices contain liver
    assert (tmp_path / "run" / "generator_ema.pt").is_file()

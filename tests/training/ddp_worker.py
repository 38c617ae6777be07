"""Run under torchrun by test_distributed.py: a few tiny GAN iterations, then each rank dumps
its weights and the first data indices it drew, so the test can compare ranks."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_config  # noqa: E402

from medsemgan.training.run import train_gan  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    config = tiny_config({"kimg": 0.016, "batch_size": 4, "labeled_batch_size": 2,
                          "r1_interval_image": 2, "r1_interval_joint": 2, "pl_interval": 2})
    summary = train_gan(config, out / "run")
    trainer = summary["trainer"]
    rank = trainer.info.rank
    torch.save(
        {
            "world_size": trainer.info.world_size,
            "G": trainer.G.state_dict(),
            "D_image": trainer.D_image.state_dict(),
            "D_joint": trainer.D_joint.state_dict(),
            "G_ema": trainer.G_ema.state_dict(),
            "pl_mean": trainer.pl_mean,
            "first_unlabeled": trainer.unlabeled_sampler.indices(0),
            "steps": trainer.step_index,
        },
        out / f"rank{rank}.pt",
    )

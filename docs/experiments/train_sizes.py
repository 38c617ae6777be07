"""Issue 16, item 1: would a larger configuration pay within the same wall time?

CPU s/kimg of one GAN training step (the run's fast path) for cpu128 as shipped, cpu128 with twice
the channels in all three networks, and cpu128 at 256 px (same channel_base, so the added 256-px
block has half the 128-px block's channels), interleaved in one process on one thread with
synthetic slices (the step cost does not depend on the pixels), ``ITERATIONS`` timed steps each.
Other variants by name: ``joint_d_x2`` (the joint discriminator alone at twice the channels, 64-256)
and ``joint_d_paper`` (the paper's 64-512), the architectures a warm start (``train gan
--init-from``) can put under the 0.4.0 run's generator.

    OMP_WAIT_POLICY=passive python docs/experiments/train_sizes.py [ITERATIONS] [VARIANT ...]
"""
import copy
import sys
import time

import torch

from medsemgan.bench.train import _make_trainer, _variant_config
from medsemgan.runtime import keep_freed_memory
from medsemgan.training.config import load_config
from medsemgan.training.run import build_networks, seed_everything
from medsemgan.training.synthetic import synthetic_tensors


def sized(base: dict, name: str) -> dict:
    config = copy.deepcopy(base)
    model = config["model"]
    if name == "wide":
        for key in ("generator", "image_discriminator"):
            model[key]["channel_base"] *= 2
            model[key]["channel_max"] *= 2
        model["joint_discriminator"]["base_channels"] *= 2
        model["joint_discriminator"]["channel_max"] *= 2
    elif name == "256px":
        model["resolution"] = 256
    elif name == "joint_d_x2":
        model["joint_discriminator"].update(base_channels=64, channel_max=256)
    elif name == "joint_d_paper":
        model["joint_discriminator"].update(base_channels=64, channel_max=512)
    elif name != "cpu128":
        raise SystemExit(f"unknown variant {name}")
    return config


def parameters(trainer) -> int:
    return sum(p.numel() for p in trainer.G.parameters())


if __name__ == "__main__":
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    variants = ["cpu128"] + [v for v in (sys.argv[2:] or ["wide", "256px"]) if v != "cpu128"]
    keep_freed_memory()
    torch.set_num_threads(1)
    base = load_config("cpu128")
    base["training"]["device"] = "cpu"
    trainers = {}
    for name in variants:
        config = _variant_config(sized(base, name), fast=True)
        seed_everything(0)
        nets = build_networks(config)
        initial = tuple(copy.deepcopy(n.state_dict()) for n in nets)
        tensors = synthetic_tensors(nets[0].resolution, unlabeled=64, labeled=8, seed=0)
        trainers[name] = _make_trainer(config, initial, tensors)
        trainers[name].step()  # warm-up
    cpu = dict.fromkeys(trainers, 0.0)
    for _ in range(iterations):
        for name, trainer in trainers.items():
            start = time.process_time()
            trainer.step()
            cpu[name] += time.process_time() - start
    images = iterations * int(base["training"]["batch_size"])
    per_kimg = {name: seconds / images * 1000 for name, seconds in cpu.items()}
    for name, trainer in trainers.items():
        print(f"{name}: {per_kimg[name]:.0f} CPU s/kimg ({per_kimg[name] / per_kimg['cpu128']:.2f}x cpu128), "
              f"generator {parameters(trainer) / 1e6:.1f} M parameters")

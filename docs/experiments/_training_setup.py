"""Shared start of the training measurements: cpu128 on the CPU, one thread, fixed initial
weights and synthetic slices (the step cost does not depend on the pixels)."""
import copy

import torch

from medsemgan.runtime import keep_freed_memory
from medsemgan.training.config import load_config
from medsemgan.training.run import build_networks
from medsemgan.training.synthetic import synthetic_tensors


def cpu128_one_thread() -> tuple[dict, tuple, dict]:
    """(configuration, initial state dicts of G / D_image / D_joint, training tensors)."""
    keep_freed_memory()
    torch.set_num_threads(1)
    base = load_config("cpu128")
    base["training"]["device"] = "cpu"
    nets = build_networks(base)
    initial = tuple(copy.deepcopy(n.state_dict()) for n in nets)
    return base, initial, synthetic_tensors(nets[0].resolution, unlabeled=64, labeled=8, seed=0)

"""Two numbers quoted in docs/training.md and the stop-19 note, measured on this machine:

1. the lever probe's decision for cpu128 (bf16, fused_ops: seconds per iteration on and off), as
   ``train gan`` takes it on its first run on a CPU (``medsemgan.training.lever_probe``);
2. ``val/dice`` of the shipped 0.3.1 generator on the run's 12 validation slices (the baseline for
   the 0.4.0 run's ``val/dice``).

    MEDSEMGAN_DATA=../shared/data OMP_WAIT_POLICY=passive python docs/experiments/probe_and_validation_shipped.py

The probe is cached per CPU in ``<cache>/lever_probes.json``; delete the cpu128 entries to measure again.
"""

from __future__ import annotations

import json
import logging

import torch

from medsemgan.models.build import build_models
from medsemgan.paths import REPO_DIR, cache_dir, data_root
from medsemgan.training.config import load_config
from medsemgan.training.lever_probe import resolve_probes
from medsemgan.training.validation import build_validation_set, validate_generator
from medsemgan.weights import read_weights


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    config = load_config("cpu128")
    # one worker's share of the default two-process layout: batch 4
    config["training"]["batch_size"] = config["training"]["labeled_batch_size"] = 4
    print("levers:", resolve_probes(config, torch.device("cpu"))["training"]["levers"])

    G, _, _ = build_models(config["model"])
    state = read_weights(REPO_DIR / "bundles" / "medsemgan_liver" / "models" / "generator.pt", "generator")
    G.load_state_dict({k: v.float() for k, v in state.items()})
    settings = config["training"]["validation"]
    data = build_validation_set(data_root(), G.resolution, settings, cache_dir() / "training_tensors")
    print("shipped 0.3.1 val:", json.dumps(validate_generator(G, data, settings, config.get("inference"))))


if __name__ == "__main__":
    main()

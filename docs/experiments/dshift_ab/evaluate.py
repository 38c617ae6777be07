"""Issue 16 A/B: modality shift before both discriminators (arm B) or not (arm A), judged on CT only.

Both arms continue the 0.4.0 run from the same checkpoint (14,224 images) with the same seed and
the same number of images (``launch_ab.sh`` beside this file; arm B's config is
``cpu128_dshift.yaml``: cpu128 plus ``training.augment.modality_shift.p: 0.4``). Each arm's EMA
generator is then projected, from its mean latent, onto CT slices whose labels training never used:

* **clean CT**, with the CT objective (MS-SSIM + 0.1 MSE): how well the generator covers CT anatomy;
* **shifted CT** (the encoder's modality shift with every component on, p = 1, several fixed torch
  seeds), with the MR objective (LNCC alone): the proxy that chose LNCC for MRI (results.md,
  "MRI attempts"). It asks whether a contrast-blind objective still finds the liver's shape.

Slices: two per BTCV pool patient (15 patients, images trained on as unlabeled, labels never), at
1/3 and 2/3 of the liver's extent, 128 px. The BTCV dev patients are not touched. Dice pooled over
the slices (label logit > 0). No MRI is involved.

    MEDSEMGAN_DATA=../shared/data OMP_WAIT_POLICY=passive python docs/experiments/dshift_ab/evaluate.py \
        ~/.cache/medsemgan/runs/ab_plain ~/.cache/medsemgan/runs/ab_dshift

A run directory's ``checkpoint.pt`` is read (its ``G_ema``); a ``.pt`` file is read as bundle
generator weights (e.g. the shipped ``generator.pt``, for reference).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from medsemgan.data.btcv import BTCV_POOL_PATIENTS
from medsemgan.data.catalogue import get_study
from medsemgan.data.slices import spread_indices
from medsemgan.data.transforms import preprocess
from medsemgan.inference.tto import TTOOptions, invert
from medsemgan.models.build import build_models
from medsemgan.paths import cache_dir, data_root
from medsemgan.training.checkpoint import load_checkpoint
from medsemgan.training.config import load_config
from medsemgan.training.modality_augment import ModalityAugmentConfig, modality_shift
from medsemgan.training.validation import pooled_dice
from medsemgan.weights import read_weights

STEPS = 50
SHIFT_SEEDS = (0, 1, 2)
SLICES_PER_PATIENT = 2


def evidence_slices() -> dict[str, torch.Tensor]:
    cache = cache_dir() / "training_tensors" / f"dshift_ab_{SLICES_PER_PATIENT}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    images, masks = [], []
    for patient in BTCV_POOL_PATIENTS:
        loaded = get_study(data_root(), f"btcv_{patient}").load()
        out = preprocess("CT", 128)({"image": loaded["image"], "label": loaded["label"]})
        image, mask = out["image"].as_tensor()[0], out["label"].as_tensor()[0] > 0.5
        with_liver = [int(k) for k in torch.nonzero(mask.flatten(0, 1).any(0)).flatten()]
        for k in spread_indices(with_liver, SLICES_PER_PATIENT + 2)[1:-1]:  # inner slices only
            images.append(image[..., k][None])
            masks.append(mask[..., k][None].float())
    data = {"image": torch.stack(images).float(), "mask": torch.stack(masks)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def load_generator(source: Path, model_config: dict) -> torch.nn.Module:
    G, _, _ = build_models(model_config)
    if source.is_dir():
        state = load_checkpoint(source / "checkpoint.pt")["G_ema"]
    else:
        state = read_weights(source, "generator")
    G.load_state_dict({k: v.float() for k, v in state.items()})
    return G.eval()


def invert_from_mean(G: torch.nn.Module, images: torch.Tensor, inference: dict, **objective):
    """Each slice inverted from the mean latent (``STEPS`` steps): its w+ and its label (logit > 0)."""
    section = dict(inference) | objective | {"steps": STEPS, "early_stop_patience": 0, "optimize_noise": False}
    options = TTOOptions.from_config(section)
    w_avg = G.mapping.w_avg.detach().float()
    ws, preds = [], []
    for chunk in images.split(16):
        start = w_avg[None, None].expand(chunk.shape[0], G.num_ws, -1).clone()
        result = invert(G, None, chunk, options, ws_init=start)
        ws.append(result.ws.detach())
        preds.append((result.label_logits[:, :1] > 0).float())
    return torch.cat(ws), torch.cat(preds)


def project(G: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, inference: dict, **objective) -> float:
    return pooled_dice(invert_from_mean(G, images, inference, **objective)[1], masks)


def shifted_copies(images: torch.Tensor) -> list[torch.Tensor]:
    """The slices under the encoder's modality shift, every component on, one copy per fixed seed."""
    shifted = []
    for seed in SHIFT_SEEDS:
        torch.manual_seed(seed)
        shifted.append(modality_shift(images, ModalityAugmentConfig(p=1.0, p_bias=1.0, p_noise=1.0)).clamp(-1, 1))
    return shifted


def main(sources: list[Path]) -> None:
    torch.set_num_threads(int(torch.get_num_threads()))
    config = load_config("cpu128")
    data = evidence_slices()
    shifted = shifted_copies(data["image"])
    print(f"{data['image'].shape[0]} CT slices (BTCV pool, labels never trained on); projection from w_avg, "
          f"{STEPS} steps; Dice pooled")
    for source in sources:
        started = time.perf_counter()
        G = load_generator(source, config["model"])
        row = {"source": str(source),
               "clean_ct_msssim": project(G, data["image"], data["mask"], config["inference"],
                                          perceptual="ms_ssim", mse_weight=0.1),
               "shifted_ct_lncc": [project(G, x, data["mask"], config["inference"], perceptual="lncc", mse_weight=0.0)
                                   for x in shifted]}
        row["shifted_ct_lncc_mean"] = sum(row["shifted_ct_lncc"]) / len(row["shifted_ct_lncc"])
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([Path(p).expanduser() for p in sys.argv[1:]])

# Decision rule, written before the arms finished (2026-12-07 14:46 UTC): arm B (shift) is kept
# when its shifted-CT LNCC Dice (mean over the shift seeds) beats arm A's by at least 0.02 and its
# clean-CT Dice is at most 0.02 below arm A's; otherwise the run continues as arm A. The two arms'
# val/dice at 20 kimg (stats.jsonl, 12 slices) is reported beside it, not used to decide.

"""A cheap validation number for a GAN run: Dice of the label head after a short projection.

Age alone does not choose a snapshot. Every ``training.validation.every_kimg`` the EMA generator
inverts a fixed handful of labeled CT slices that training never uses as labels (BTCV patients of
the unlabeled pool: their images are trained on as unlabeled slices, their liver labels never), by
optimising w+ from the mean latent for ``steps`` Adam steps; the pooled Dice of the label head's
mask against the truth goes to TensorBoard and ``stats.jsonl`` as ``val/dice``. The dev test
patients are never used here (they are kept for the report).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

VALIDATION_DEFAULTS = {
    "every_kimg": 5.0,  # 0 turns validation off
    "patients": 4,  # BTCV pool patients, every third in id order starting with the first
    "slices_per_patient": 3,  # spread over the liver's extent
    "steps": 30,  # projection steps from the mean latent
    "lr": 0.1,
}


def validation_patients(count: int) -> list[str]:
    from medsemgan.data.btcv import BTCV_POOL_PATIENTS

    return [f"btcv_{i}" for i in BTCV_POOL_PATIENTS[::3][:count]]


def build_validation_set(root: str | os.PathLike, resolution: int, settings: dict,
                         cache_dir: str | os.PathLike | None = None) -> dict[str, torch.Tensor] | None:
    """``{"image", "mask"} [N, 1, S, S]`` in model space, or ``None`` when the studies are absent."""
    from medsemgan.data.catalogue import get_study, list_studies
    from medsemgan.data.slices import spread_indices
    from medsemgan.data.transforms import preprocess
    from medsemgan.errors import InputError

    names = validation_patients(int(settings["patients"]))
    cache = None
    if cache_dir is not None:
        key = f"validation_{resolution}_{'-'.join(names)}_{int(settings['slices_per_patient'])}.pt"
        cache = Path(cache_dir) / key
        if cache.is_file():
            return torch.load(cache, weights_only=True)
    known = {s.name for s in list_studies(root)}
    if not set(names) <= known:
        log.warning("validation studies %s not found under %s: no validation number", names, root)
        return None
    images, masks = [], []
    for name in names:
        try:
            loaded = get_study(root, name).load()
        except InputError as err:
            log.warning("validation study %s unreadable (%s): skipped", name, err)
            continue
        out = preprocess("CT", resolution)({"image": loaded["image"], "label": loaded["label"]})
        image, mask = out["image"].as_tensor()[0], out["label"].as_tensor()[0] > 0.5
        with_liver = [int(k) for k in torch.nonzero(mask.flatten(0, 1).any(0)).flatten()]
        for k in spread_indices(with_liver, int(settings["slices_per_patient"])):
            images.append(image[..., k][None])
            masks.append(mask[..., k][None].float())
    if not images:
        return None
    data = {"image": torch.stack(images).float(), "mask": torch.stack(masks)}
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save(data, tmp)
    return data


def pooled_dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = float((pred * truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def validate_generator(generator: torch.nn.Module, data: dict[str, torch.Tensor], settings: dict,
                       inference: dict | None = None) -> dict[str, float]:
    """Project ``data['image']`` from the mean latent and score the label head (pooled Dice)."""
    from medsemgan.inference.tto import TTOOptions, invert

    section = dict(inference or {})
    section.update(steps=int(settings["steps"]), lr=float(settings["lr"]), early_stop_patience=0,
                   optimize_noise=False)
    options = TTOOptions.from_config(section)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            w_avg = generator.mapping.w_avg.detach().float()
        n = data["image"].shape[0]
        ws_init = w_avg[None, None].expand(n, generator.num_ws, -1).clone()
        result = invert(generator, None, data["image"], options, ws_init=ws_init)
    finally:
        generator.train(was_training)
    pred = (result.label_logits[:, :1] > 0).float()
    return {"val/dice": pooled_dice(pred, data["mask"]), "val/recon_mse": float(result.recon_mse.mean())}

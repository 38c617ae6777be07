"""The CT-only proxy behind the MR objective (results.md, "MRI attempts", A -> 0.3.0): liver Dice
on ircadb_1 training slices under a fixed random modality shift, and unshifted, for an encoder and
its generator: encoder only, then K = 20 test-time optimisation with MS-SSIM + 0.1 MSE (the CT
objective) and with LNCC alone (the MR objective), every other option as the shipped
``inference:`` section. No MRI is involved.

Encoders: the shift encoder (bundle ``encoder_mr.pt`` with ``generator.pt``; attempt A's encoder)
and the 0.2.0 encoder with its generator, read from git (commit 8efacb4) into a temporary folder.
Slices: 32 liver slices of ircadb_1 spread evenly (``spread_indices``), 128 px; the shift:
``modality_shift`` with every component forced on (p = 1), torch seed 0, the same for both
encoders. Dice pooled over the 32 slices (2|P∩G| / (|P| + |G|), P = label logit > 0).
Needs the shared data and the git history; about 22 CPU-minutes (measured 2026-12-07, 2 cores).
"""
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from medsemgan.data.catalogue import get_study
from medsemgan.data.slices import preprocess_pool, spread_indices
from medsemgan.inference.model import SegmentationModel
from medsemgan.inference.tto import TTOOptions, invert
from medsemgan.paths import DEFAULT_BUNDLE_DIR, REPO_DIR, data_root
from medsemgan.training.modality_augment import ModalityAugmentConfig, modality_shift

OLD_COMMIT = "8efacb4"  # "ship trained weights 0.2.0"
SLICES = 32


def dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred, gt = logits[:, :1] > 0, masks > 0.5
    return float(2 * (pred & gt).sum() / (pred.sum() + gt.sum()).clamp_min(1))


def scores(model: SegmentationModel, images: torch.Tensor, masks: torch.Tensor) -> list[float]:
    base = model.config.inference
    out = []
    for steps, objective in ((0, {}), (20, {"perceptual": "ms_ssim", "mse_weight": 0.1}),
                             (20, {"perceptual": "lncc", "mse_weight": 0.0})):
        options = TTOOptions.from_config(base, steps=steps, **objective)
        logits = torch.cat([invert(model.generator, model.encoder, chunk, options).label_logits
                            for chunk in images.split(16)])
        out.append(dice(logits, masks))
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    volume = preprocess_pool([get_study(data_root(), "ircadb_1")], 128)[0]
    with_liver = [k for k in volume.body if volume.masks[k].any()]
    chosen = spread_indices(with_liver, SLICES)
    images, masks = volume.images[chosen], volume.masks[chosen]
    torch.manual_seed(0)
    shifted = modality_shift(images, ModalityAugmentConfig(p=1.0, p_bias=1.0, p_noise=1.0)).clamp(-1, 1)
    config = DEFAULT_BUNDLE_DIR / "configs" / "model.yaml"
    models = DEFAULT_BUNDLE_DIR / "models"
    with tempfile.TemporaryDirectory() as tmp:
        old = {}
        for name in ("generator", "encoder"):
            old[name] = Path(tmp) / f"{name}.pt"
            old[name].write_bytes(subprocess.run(
                ["git", "show", f"{OLD_COMMIT}:bundles/medsemgan_liver/models/{name}.pt"],
                cwd=REPO_DIR, check=True, capture_output=True).stdout)
        encoders = {"shift encoder (encoder_mr.pt, 0.3.0 generator)": (models / "generator.pt", models / "encoder_mr.pt"),
                    "0.2.0 encoder and generator": (old["generator"], old["encoder"])}
        print(f"ircadb_1, {len(chosen)} liver slices; Dice: encoder only / MS-SSIM+MSE TTO / LNCC TTO (K=20)")
        for label, (generator, encoder) in encoders.items():
            model = SegmentationModel.from_files(generator, encoder, config).eval()
            for condition, x in (("shifted", shifted), ("unshifted", images)):
                started = time.perf_counter()
                values = scores(model, x, masks)
                print(f"{label:<48} {condition:<9} " + " / ".join(f"{v:.3f}" for v in values)
                      + f"   ({time.perf_counter() - started:.0f} s)", flush=True)

"""Make the demo's sample study from the bundle's own generator: ``python -m medsemgan.bundle.make_sample``.

The sample is **synthetic**: slices drawn from the trained joint generator (random latents,
truncation ``psi``), each with the liver label the generator produced with it, stacked into a
small NIfTI volume. Nothing in it comes from a patient, so it can ship with the repository (a few
hundred kB). Files, under ``<bundle>/sample/``::

    images/sample_ct.nii.gz   int16 "HU": the generator's [-1, 1] image mapped back through the CT
                              window W400/L40 (air, at -1, written as -1000 HU)
    labels/sample_ct.nii.gz   uint8, 1 = liver (the generator's label logit > 0)
    sample.json               how it was made: generator file and sha256, seed, psi, command

Slices are in the model's canonical orientation (affine axes P, L, S), so preprocessing finds the
body and orientation the generator was trained on. The Dice the demo prints on this sample
measures how well encoder + test-time optimisation recover the generator's own label, not
accuracy on real anatomy; the real-data part of the demo (``../shared/data``) measures that.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medsemgan.errors import InputError
from medsemgan.io_utils import file_sha256  # noqa: F401  (demo and tests import it from here)

log = logging.getLogger(__name__)

SAMPLE_DIR = "sample"
SAMPLE_NAME = "sample_ct"
AIR_HU = -1000
DEFAULT_SLICES = 12
DEFAULT_SEED = 2021
DEFAULT_PSI = 0.7
IN_PLANE_MM = 2.8  # ~360 mm field of view at 128 px: a body-cropped abdomen, like the training slices
SLICE_MM = 5.0
MIN_LIVER_FRACTION = 0.01  # keep slices whose generated liver covers at least 1 % of the slice


def sample_files(root: str | os.PathLike) -> dict[str, Path]:
    """The sample's files inside the sample folder ``root`` (``images/``, ``labels/`` as
    ``evaluate.json`` expects them)."""
    root = Path(root)
    return {"root": root, "image": root / "images" / f"{SAMPLE_NAME}.nii.gz",
            "label": root / "labels" / f"{SAMPLE_NAME}.nii.gz", "info": root / "sample.json"}


def sample_paths(bundle_dir: str | os.PathLike) -> dict[str, Path]:
    return sample_files(Path(bundle_dir) / SAMPLE_DIR)


def load_generator(bundle_dir: str | os.PathLike, config: str | os.PathLike | None = None) -> torch.nn.Module:
    """The bundle's generator alone (the encoder is not needed to sample)."""
    from medsemgan.inference.model import (
        BUNDLE_CONFIG_FILE, DEFAULT_CONFIG, GENERATOR_FILE, load_model_sections, load_state_dict_file,
    )
    from medsemgan.models.build import build_generator

    bundle = Path(bundle_dir)
    if config is None:
        config = bundle / BUNDLE_CONFIG_FILE if (bundle / BUNDLE_CONFIG_FILE).is_file() else DEFAULT_CONFIG
    cfg = load_model_sections(config)
    path = bundle / GENERATOR_FILE
    state = load_state_dict_file(path, "generator")
    G = build_generator(cfg.model)
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(path, "generator weights do not match the configuration's architecture: "
                               f"{' '.join(str(err).split())[:300]}") from None
    return G.eval().requires_grad_(False)


def canonical_affine(in_plane_mm: float = IN_PLANE_MM, slice_mm: float = SLICE_MM) -> np.ndarray:
    """Voxel axes toward posterior, patient left, superior (``CANONICAL_AXCODES`` 'PLS'), in the
    RAS world coordinates nibabel and MONAI use."""
    affine = np.zeros((4, 4))
    affine[1, 0] = -in_plane_mm  # axis 0: anterior -> posterior
    affine[0, 1] = -in_plane_mm  # axis 1: patient right -> left
    affine[2, 2] = slice_mm  # axis 2: inferior -> superior
    affine[3, 3] = 1.0
    return affine


def to_hounsfield(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] generator output -> int16 HU through the abdomen window; air (-1) -> -1000 HU so
    the study reads as CT (and its background as air) like a real scan."""
    from medsemgan.data.transforms import ct_window_range

    low, high = ct_window_range()
    hu = low + (images.clamp(-1, 1) + 1) / 2 * (high - low)
    hu = torch.where(images <= -0.98, torch.full_like(hu, AIR_HU), hu)
    return hu.round().to(torch.int16).numpy()


@torch.no_grad()
def generate_slices(G: torch.nn.Module, count: int, seed: int = DEFAULT_SEED, psi: float = DEFAULT_PSI,
                    candidates: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` generated slices ``(images [count, S, S] in [-1, 1], masks [count, S, S] uint8)``.

    Draws ``candidates`` latents (default 4x ``count``), keeps those whose liver covers at least
    ``MIN_LIVER_FRACTION`` of the slice (all of them if too few do), and orders them by liver
    area rising then falling, the way the liver grows and shrinks through an abdomen.
    """
    gen = torch.Generator().manual_seed(int(seed))
    candidates = int(candidates or 4 * count)
    z = torch.randn(candidates, G.z_dim, generator=gen)
    device = next(G.parameters()).device
    images, masks = [], []
    for chunk in z.split(16):
        ws = G.mapping(chunk.to(device), truncation_psi=psi)
        image, logits = G.synthesis(ws, noise_mode="const")
        images.append(image[:, 0].float().cpu())
        masks.append((logits[:, 0] > 0).to(torch.uint8).cpu())
    images_t, masks_t = torch.cat(images), torch.cat(masks)
    area = masks_t.flatten(1).float().mean(1)
    keep = torch.nonzero(area >= MIN_LIVER_FRACTION).flatten()
    if keep.numel() < count:
        log.warning("only %d of %d generated slices show liver (>= %.0f %% of the slice); using the "
                    "%d with the largest liver", keep.numel(), candidates, 100 * MIN_LIVER_FRACTION, count)
        keep = torch.argsort(area, descending=True)
    chosen = keep[:count]
    by_area = chosen[torch.argsort(area[chosen])]
    order = torch.cat([by_area[0::2], by_area[1::2].flip(0)])  # small ... large ... small
    return images_t[order], masks_t[order]


def make_sample(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                slices: int = DEFAULT_SLICES, seed: int = DEFAULT_SEED, psi: float = DEFAULT_PSI,
                config: str | os.PathLike | None = None) -> dict[str, str]:
    """Write the sample study (image, label, sample.json) for the bundle's generator."""
    import nibabel as nib

    from medsemgan.inference.model import GENERATOR_FILE
    from medsemgan.inference.writers import write_json, write_mask, write_nifti

    bundle = Path(bundle_dir)
    if slices < 1:
        raise InputError(None, f"--slices must be >= 1, got {slices}")
    G = load_generator(bundle, config)
    images, masks = generate_slices(G, slices, seed, psi)
    affine = canonical_affine()
    volume = np.ascontiguousarray(np.moveaxis(to_hounsfield(images), 0, -1))  # [S, S, slices]
    mask = np.ascontiguousarray(np.moveaxis(masks.numpy(), 0, -1))
    paths = sample_files(out_dir) if out_dir is not None else sample_paths(bundle)
    write_nifti(volume, paths["image"], affine, np.int16)
    write_mask(mask, paths["label"], affine)
    axcodes = "".join(nib.aff2axcodes(affine))
    info = {
        "name": SAMPLE_NAME,
        "synthetic": True,
        "modality": "CT",
        "description": "Synthetic CT-like study: slices sampled from the bundle's trained joint generator with "
                       "the liver label it generated; no patient data. Dice against this label measures how "
                       "well inference recovers the generator's own label, not accuracy on real anatomy.",
        "generator": str(GENERATOR_FILE),
        "generator_sha256": file_sha256(bundle / GENERATOR_FILE),
        "seed": int(seed),
        "truncation_psi": float(psi),
        "slices": int(slices),
        "shape": [int(n) for n in volume.shape],
        "spacing_mm": [IN_PLANE_MM, IN_PLANE_MM, SLICE_MM],
        "axcodes": axcodes,
        "liver_voxels": int(mask.sum()),
        "made_with": f"python -m medsemgan.bundle.make_sample --slices {slices} --seed {seed} --psi {psi}",
        "made_at": time.strftime("%Y-%m-%d"),
    }
    write_json(info, paths["info"])
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> int:
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    parser = argparse.ArgumentParser(prog="python -m medsemgan.bundle.make_sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE_DIR), help="bundle folder (models/generator.pt)")
    parser.add_argument("--out", default=None, help="write here instead of <bundle>/sample")
    parser.add_argument("--config", default=None, help="model configuration (default: the bundle's, else cpu128)")
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--psi", type=float, default=DEFAULT_PSI, help="truncation psi (lower: more typical slices)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = make_sample(args.bundle, args.out, args.slices, args.seed, args.psi, args.config)
    except InputError as err:
        print(f"make_sample: error: {err}", file=sys.stderr)
        return 2
    sizes = {k: os.path.getsize(v) for k, v in paths.items() if k != "root"}
    print(json.dumps({"written": paths, "bytes": sizes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

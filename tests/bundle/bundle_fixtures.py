"""Tiny bundles and synthetic studies for the bundle tests (no trained weights, no real data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
BUNDLE_SRC = REPO / "bundles" / "medsemgan_liver"
SCHEMA = REPO / "bundles" / "schema" / "meta_schema.json"

# 32 px (the encoder's minimum), a few thousand parameters: every workflow runs in seconds.
TINY_CONFIG = {
    "model": {
        "resolution": 32,
        "generator": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256, "channel_max": 32},
        "image_discriminator": {"channel_base": 256, "channel_max": 32, "mbstd_group_size": 2},
        "joint_discriminator": {"num_scales": 2, "base_channels": 8, "n_layers": 1, "channel_max": 16},
    },
    "data": {"source": "synthetic", "synthetic_unlabeled": 12, "synthetic_labeled": 3},
    "training": {
        "seed": 3, "device": "cpu", "batch_size": 4, "labeled_batch_size": 2, "kimg": 0.008,
        "r1_interval_image": 2, "r1_interval_joint": 2, "pl_interval": 2, "ema_kimg": 0.01,
        "checkpoint_kimg": 0.004, "sample_kimg": 0.004, "sample_grid": [2, 2], "progress": False,
        "tensorboard": False, "log_every": 1,
    },
    "encoder": {
        "channels": [8, 16, 16], "fpn_channels": 16, "head_channels": 8,
        "train": {"kimg": 0.008, "batch_size": 4, "labeled_batch_size": 2, "warmup_kimg": 0.004,
                  "progress": False, "tensorboard": False, "checkpoint_kimg": 0.004, "device": "cpu"},
    },
    "inference": {"steps": 2, "batch_size": 8},
}
WEIGHTS_SEED = 0


def copy_bundle(destination: Path, with_models: bool = False) -> Path:
    """The repository's bundle (configs, docs, LICENSE) without weights, sample or outputs."""
    ignore = shutil.ignore_patterns("eval", "runs", "sample", *(() if with_models else ("models",)))
    shutil.copytree(BUNDLE_SRC, destination, ignore=ignore)
    (destination / "models").mkdir(exist_ok=True)
    return destination


def write_tiny_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(TINY_CONFIG, sort_keys=False))
    return path


def make_tiny_bundle(destination: Path) -> Path:
    """A bundle copy with ``configs/model.yaml`` = TINY_CONFIG and random (seeded) weights."""
    from medsemgan.inference.model import SegmentationModel

    bundle = copy_bundle(destination)
    config = write_tiny_config(bundle / "configs" / "model.yaml")
    torch.manual_seed(WEIGHTS_SEED)
    SegmentationModel.build(config).save(bundle)
    return bundle


def phantom_ct(shape=(40, 36, 5), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(HU int16 [X, Y, Z], liver uint8)``: air, a soft-tissue body, a brighter liver, a spine."""
    rng = np.random.default_rng(seed)
    x, y, z = shape
    xx, yy = np.meshgrid(np.linspace(-1, 1, x), np.linspace(-1, 1, y), indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.75) ** 2 <= 1
    liver = (((xx + 0.35) / 0.35) ** 2 + ((yy + 0.05) / 0.4) ** 2 <= 1) & body
    spine = (xx / 0.12) ** 2 + ((yy - 0.5) / 0.12) ** 2 <= 1
    hu = np.full(shape, -1000, np.int16)
    mask = np.zeros(shape, np.uint8)
    for k in range(z):
        s = np.where(body, 20, -1000)
        s = np.where(liver, 90, s)
        s = np.where(spine & body, 500, s)
        hu[..., k] = s + (rng.integers(-25, 25, size=(x, y)) * body)
        mask[..., k] = liver
    return hu, mask


def write_phantom_nifti(path: Path, shape=(40, 36, 5), seed: int = 0) -> tuple[Path, np.ndarray]:
    """LAS-like affine with an offset: the mask must come back on exactly this grid."""
    hu, mask = phantom_ct(shape, seed)
    affine = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -40.0], [0, 0, 3.0, 12.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path, mask


def write_label_nifti(path: Path, mask: np.ndarray, like: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), nib.load(str(like)).affine), str(path))
    return path


def write_phantom_dicom(folder: Path, shape=(36, 32, 4), seed: int = 1, spacing: float = 1.5,
                        step: float = 2.5) -> Path:
    """One CT series (stored = HU + 1024, RescaleIntercept -1024), LPS, files named against
    their positions."""
    hu, _ = phantom_ct(shape, seed)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    n = shape[2]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{n - 1 - k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "synthetic", k + 1
        ds.ImagePositionPatient = [-20.0, -30.0, float(k * step)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = step
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = (hu[:, :, k].T.astype(np.int32) + 1024).astype(np.int16)  # rows = Y, columns = X
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    return folder


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def run_workflow(bundle: Path, config: str | list[str], workflow_type: str | None,
                 properties_path: Path | None = None, **override):
    """Initialise a ConfigWorkflow like MONAI's model-zoo tests; returns ``(workflow, missing)``
    before running, so a test can check the properties first."""
    from monai.bundle import ConfigWorkflow

    files = [str(bundle / "configs" / c) for c in ([config] if isinstance(config, str) else config)]
    workflow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,  # fileConfig would disable every other logger of the test session
        workflow_type=workflow_type,
        properties_path=None if properties_path is None else str(properties_path),
        bundle_root=str(bundle),
        **override,
    )
    workflow.initialize()
    return workflow, workflow.check_properties()

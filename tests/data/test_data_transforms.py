"""Preprocessing: canonical orientation, intensities, body crop, resize, and inversion."""

from __future__ import annotations

import copy

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medsemgan.data.catalogue import CHAOS_T2_PATIENTS
from medsemgan.data.transforms import (
    CANONICAL_AXCODES,
    BodyCropd,
    intensity_transform,
    preprocess,
)

SIZE = 128


def _volume(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    image = MetaTensor(torch.as_tensor(array, dtype=torch.float32)[None], affine=torch.as_tensor(affine))
    image.meta["space"] = "RAS"
    return image


def _phantom(shape=(60, 40, 5)) -> np.ndarray:
    """An elliptic 'body' (0 HU) in air (-1000 HU) with a bright 'liver' blob on one side."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - 30) / 24.0) ** 2 + ((y - 20) / 14.0) ** 2 <= 1
    liver = ((x - 20) / 6.0) ** 2 + ((y - 20) / 5.0) ** 2 <= 1
    plane = np.where(body, 0.0, -1000.0) + np.where(liver, 100.0, 0.0)
    return np.repeat(plane[..., None], shape[2], axis=-1)


# ----------------------------------------------------------------------------- synthetic


def test_ct_window_maps_minus160_to_240_onto_minus1_to_1():
    hu = np.array([-1000, -160, 40, 240, 3000], dtype=np.float32).reshape(5, 1, 1)
    out = intensity_transform("CT")({"image": _volume(hu, np.eye(4))})["image"]
    assert out.flatten().tolist() == pytest.approx([-1, -1, 0, 1, 1])


def test_mri_percentiles_map_to_minus1_to_1():
    rng = np.random.default_rng(0)
    signal = rng.gamma(2.0, 100.0, size=(20, 20, 10)).astype(np.float32)
    out = intensity_transform("MR")({"image": _volume(signal, np.eye(4))})["image"][0].numpy()
    assert out.min() == -1 and out.max() == 1
    assert np.mean(out == 1) == pytest.approx(0.005, abs=0.002)  # the top 0.5 % is clipped


def test_body_crop_is_square_in_millimetres_and_inverts():
    affine = np.diag([0.5, 1.0, 3.0, 1.0])  # anisotropic in-plane pixels
    ct = _phantom()
    data = intensity_transform("CT")({"image": _volume(ct, affine)})
    crop = BodyCropd(keys="image", source_key="image", threshold=-0.9, margin=0.1)
    out = crop(data)["image"]
    nx, ny, nz = out.shape[1:]
    assert nz == ct.shape[2]
    assert nx * 0.5 == pytest.approx(ny * 1.0, abs=1.0)
    assert nx * 0.5 >= 48 * 0.5  # the whole body width fits
    restored = crop.inverse({"image": out})["image"]
    assert tuple(restored.shape) == (1, *ct.shape)
    assert np.allclose(restored.affine.numpy(), affine)


def test_same_anatomy_stored_two_ways_gives_the_same_model_input():
    ct = _phantom()
    ras = np.diag([0.8, 0.8, 2.0, 1.0])
    # the same voxels stored LPS: x and y flipped, affine adjusted so world positions agree
    lps = ras @ np.array([[-1, 0, 0, 59], [0, -1, 0, 39], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    assert "".join(nib.aff2axcodes(lps)) == "LPS"
    a = preprocess("CT", 32, keys=("image",))({"image": _volume(ct, ras)})["image"]
    b = preprocess("CT", 32, keys=("image",))({"image": _volume(ct[::-1, ::-1].copy(), lps)})["image"]
    assert torch.allclose(a.as_tensor(), b.as_tensor(), atol=1e-5)
    assert "".join(nib.aff2axcodes(a.affine.numpy())) == CANONICAL_AXCODES


def test_preprocess_rejects_unknown_modality_and_3d_sizes():
    with pytest.raises(ValueError):
        preprocess("PET", 64)
    with pytest.raises(ValueError):
        preprocess("CT", (64, 64, 64))


# ----------------------------------------------------------------------------- real studies

ORIENTATION_STUDIES = ["chaos_ct_1", "ircadb_1", "totalseg_ct", "totalseg_ct_dicom", "dcmqi_3slice", "totalseg_mr"] + [
    f"chaos_t2_{n}" for n in CHAOS_T2_PATIENTS
]


@pytest.fixture(scope="module")
def preprocessed(study_cache):
    cache = {}

    def get(name):
        if name not in cache:
            loaded = study_cache(name)
            data = {"image": copy.deepcopy(loaded["image"]), "label": copy.deepcopy(loaded["label"])}
            pipeline = preprocess(loaded["study"].modality, SIZE)
            cache[name] = (pipeline, pipeline(data))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ORIENTATION_STUDIES)
def test_liver_lies_on_the_same_image_side_for_every_source(name, preprocessed, study_cache):
    _, out = preprocessed(name)
    image, label = out["image"], out["label"]
    slices = study_cache(name)["image"].shape[-1]
    assert tuple(image.shape) == (1, SIZE, SIZE, slices)  # slice axis untouched
    assert tuple(label.shape) == tuple(image.shape)
    assert float(image.min()) >= -1 and float(image.max()) <= 1
    assert "".join(nib.aff2axcodes(image.affine.numpy())) == CANONICAL_AXCODES
    rows, cols, _ = np.nonzero(label[0].numpy() > 0.5)
    # canonical PLS: axis 1 runs patient right -> left, so the liver is in the first half
    assert cols.mean() < SIZE / 2 - 8, f"{name}: liver centroid column {cols.mean():.1f}"
    assert set(np.unique(label.numpy())) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["chaos_ct_1", "chaos_t2_2"])
def test_inverted_mask_returns_to_the_original_geometry(name, preprocessed, study_cache):
    pipeline, out = preprocessed(name)
    original = study_cache(name)["label"]
    truth = original[0].numpy() > 0
    for nearest, min_dice in ((True, 0.95), (False, 0.97)):
        item = {"image": out["image"], "pred": out["label"].clone()}
        back = Invertd(keys="pred", transform=pipeline, orig_keys="image", nearest_interp=nearest)(item)["pred"]
        assert tuple(back.shape) == tuple(original.shape)
        assert np.allclose(back.affine.numpy(), original.affine.numpy(), atol=1e-4)
        mask = back[0].numpy() > 0.5
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > min_dice, f"{name} nearest={nearest}: Dice {dice:.4f}"


def test_loaded_studies_are_not_modified_by_preprocessing(preprocessed, study_cache):
    preprocessed("dcmqi_3slice")
    assert len(study_cache("dcmqi_3slice")["image"].applied_operations) == 0

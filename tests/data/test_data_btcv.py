"""BTCV through the catalogue: PNG <-> label mapping, HU, orientation, the fixed dev split."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsemgan import cli
from medsemgan.data import btcv
from medsemgan.data.catalogue import ct_dev_studies, get_study, held_out_studies, training_studies
from medsemgan.data.transforms import preprocess

# The data README's table: (slices, in-plane mm, z mm, liver voxels) for a few patients.
README_ROWS = {1: (140, 1.2612, 3.0, 259990), 5: (132, 1.2271, 3.0, 259581), 14: (86, 1.4561, 5.0, 213399),
               28: (91, 1.7080, 5.0, 121343)}


def test_dev_rule_is_every_fourth_patient_in_id_order():
    assert btcv.BTCV_DEV_PATIENTS == (5, 11, 17, 23, 29)
    assert btcv.dev_patients([3, 1, 2, 4, 8, 6, 5, 7]) == (4, 8)
    assert len(btcv.BTCV_POOL_PATIENTS) == 15
    assert not set(btcv.BTCV_POOL_PATIENTS) & set(btcv.BTCV_DEV_PATIENTS)


def test_png_to_hu_maps_the_window_and_sends_zero_to_air():
    values = np.array([0, 1, 80, 255], dtype=np.uint8)
    hu = btcv.png_to_hu(values)
    assert hu[0] == btcv.AIR_HU
    assert hu[1] == pytest.approx(400 / 255 - 125, abs=1e-4)
    assert hu[3] == pytest.approx(275.0, abs=1e-3)


def test_split_never_leaks_a_dev_patient_into_training(shared_data):
    train = {s.name for s in training_studies(shared_data)}
    dev = {s.name for s in ct_dev_studies(shared_data)}
    assert dev == {f"btcv_{i}" for i in btcv.BTCV_DEV_PATIENTS}
    assert not train & dev
    assert dev <= {s.name for s in held_out_studies(shared_data, "CT")}
    assert {f"btcv_{i}" for i in btcv.BTCV_POOL_PATIENTS} <= train


@pytest.mark.parametrize("patient", sorted(README_ROWS))
def test_patient_loads_with_readme_geometry_and_liver(patient, shared_data):
    slices, inplane, z, liver_voxels = README_ROWS[patient]
    loaded = get_study(shared_data, f"btcv_{patient}").load()
    image, label = loaded["image"], loaded["label"]
    assert tuple(image.shape) == (1, 257, 257, slices)
    assert image.meta["spacing"] == pytest.approx((inplane, inplane, z), abs=1e-3)
    assert image.meta["axcodes"] == "LAS"  # header says LPS; the anatomy says axis 1 is anterior
    assert torch.equal(label.affine, image.affine)
    assert int(label.sum()) == liver_voxels


def test_mapping_png_slice_k_is_label_slice_k_without_transpose(shared_data):
    root = shared_data / "ct" / "btcv"
    patient, k = 10, 60
    png = np.asarray(Image.open(root / "images" / f"image_SABS_{patient}_slice{k:03d}.png"))
    label = np.rint(np.asarray(nib.load(root / "labels" / f"label_{patient}.nii.gz").dataobj)[:, :, k])
    loaded = get_study(shared_data, f"btcv_{patient}").load()
    assert np.array_equal(loaded["image"][0, :, :, k].numpy(), btcv.png_to_hu(png))
    assert np.array_equal(loaded["label"][0, :, :, k].numpy(), (label == 6).astype(np.uint8))


@pytest.mark.parametrize("patient", [2, 14, 23])
def test_air_fat_and_liver_have_expected_hu(patient, shared_data):
    loaded = get_study(shared_data, f"btcv_{patient}").load()
    hu, liver = loaded["image"][0].numpy(), loaded["label"][0].numpy().astype(bool)
    assert hu[0, 0, 0] == btcv.AIR_HU and hu[-1, -1, -1] == btcv.AIR_HU  # outside the body / padding
    body = hu > -500
    fat = hu[body & (hu < -20)]
    assert -125 <= np.median(fat) <= -60  # subcutaneous/visceral fat
    assert 20 <= np.median(hu[liver]) <= 160  # unenhanced (14) to portal-venous liver


def test_liver_lands_on_the_same_side_as_other_ct_after_canonicalisation(shared_data):
    """Canonical PLS: axis 1 runs from the patient's right to left, so the liver sits in the low half."""
    sides = {}
    for name in ("ircadb_1", "btcv_5", "btcv_14"):
        loaded = get_study(shared_data, name).load()
        out = preprocess("CT", 64)({"image": loaded["image"], "label": loaded["label"]})
        where = np.argwhere(out["label"][0].numpy() > 0.5)
        sides[name] = (where[:, 1].mean() / 64, where[:, 0].mean() / 64)
    for name, (right_left, anterior_posterior) in sides.items():
        assert right_left < 0.45, (name, sides)
        assert 0.3 < anterior_posterior < 0.6, (name, sides)  # mid-abdomen, not flipped to the back


def test_info_describes_a_btcv_patient_from_any_of_its_slices(shared_data, capsys):
    png = shared_data / "ct" / "btcv" / "images" / "image_SABS_5_slice040.png"
    assert cli.main(["info", str(png), "--indent", "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [257, 257, 132]
    assert info["orientation"] == "LAS"
    assert info["study"] == "btcv_5" and info["split"] == "test"
    assert info["modality"] == "CT"
    assert info["intensity_range"][0] == btcv.AIR_HU and info["intensity_range"][1] == pytest.approx(275.0, abs=0.01)
    assert info["liver_volume_ml"] == pytest.approx(259581 * 1.22705078125**2 * 3.0 / 1000, rel=1e-4)

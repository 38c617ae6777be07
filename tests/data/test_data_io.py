"""load_image, the SimpleITK reader and every bad-input case through the CLI (synthetic files only)."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from data_fixtures import write_ct_series, write_ct_slice, write_nifti
from monai.transforms import LoadImaged

from medsemgan import cli
from medsemgan.data.io import load_image, match_label_to_image
from medsemgan.data.readers import SimpleITKReader, list_dicom_series
from medsemgan.errors import InputError

AFFINE = np.diag([0.7, 0.7, 2.5, 1.0])


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- good input


def test_nifti_loads_channel_first_with_geometry(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = load_image(write_nifti(tmp_path / "ct.nii.gz", array, AFFINE))
    assert tuple(image.shape) == (1, 4, 5, 6)
    assert np.array_equal(image[0].numpy(), array)
    assert np.allclose(image.affine.numpy(), AFFINE)
    assert image.meta["spacing"] == pytest.approx((0.7, 0.7, 2.5))
    assert image.meta["axcodes"] == "RAS"
    assert image.meta["source"].endswith("ct.nii.gz")


def test_singleton_fourth_dimension_is_squeezed(tmp_path):
    array = np.random.default_rng(0).random((4, 5, 6, 1)).astype(np.float32)
    image = load_image(write_nifti(tmp_path / "four.nii.gz", array))
    assert tuple(image.shape) == (1, 4, 5, 6)


def test_dicom_series_is_sorted_by_position_and_in_hu(tmp_path):
    stored = write_ct_series(tmp_path / "series", "1.2.826.0.1.1", n=5)
    image = load_image(tmp_path / "series")
    assert tuple(image.shape) == (1, 20, 16, 5)
    # RescaleIntercept -1024 applied; slice k is the k-th position although file names run backwards
    assert np.array_equal(image[0].numpy(), stored.astype(np.float32) - 1024)
    assert image.meta["spacing"] == pytest.approx((0.8, 0.8, 2.0))
    assert image.meta["axcodes"] == "LPS"
    assert image.meta["modality"] == "CT"
    # LPS origin (-10, -20, 0) -> RAS (10, 20, 0)
    assert np.allclose(image.affine.numpy()[:3, 3], [10.0, 20.0, 0.0])


def test_reader_plugs_into_monai_loadimage(tmp_path):
    stored = write_ct_series(tmp_path / "series", "1.2.826.0.1.2", n=3)
    data = LoadImaged(keys="image", reader=SimpleITKReader(), ensure_channel_first=True)(
        {"image": str(tmp_path / "series")}
    )
    assert tuple(data["image"].shape) == (1, 20, 16, 3)
    assert np.array_equal(data["image"][0].numpy(), stored - 1024.0)


def test_series_uid_picks_one_of_several(tmp_path):
    write_ct_series(tmp_path / "mixed", "1.2.826.0.1.3", n=3, prefix="a")
    write_ct_series(tmp_path / "mixed", "1.2.826.0.1.4", n=2, prefix="b")
    found = {s.uid: len(s.files) for s in list_dicom_series(tmp_path / "mixed")}
    assert found == {"1.2.826.0.1.3": 3, "1.2.826.0.1.4": 2}
    image = load_image(tmp_path / "mixed", series_uid="1.2.826.0.1.4")
    assert image.shape[-1] == 2


def test_info_with_series_option_lists_all_series(tmp_path, capsys):
    write_ct_series(tmp_path / "mixed", "1.2.826.0.1.3", n=3, prefix="a")
    write_ct_series(tmp_path / "mixed", "1.2.826.0.1.4", n=2, prefix="b")
    assert cli.main(["info", str(tmp_path / "mixed"), "--series", "1.2.826.0.1.3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [20, 16, 3]
    assert sorted((s["uid"], s["slices"]) for s in info["series"]) == [("1.2.826.0.1.3", 3), ("1.2.826.0.1.4", 2)]


def test_label_in_other_axis_order_is_reoriented_exactly(tmp_path):
    image = load_image(write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), AFFINE))
    label_ras = np.zeros((4, 5, 6), np.uint8)
    label_ras[0, 1, 2] = 1
    # the same grid stored flipped along x (LAS): voxel (0, 1, 2) lands at (3, 1, 2) on disk
    flipped = np.diag([-1.0, 1, 1, 1])
    flipped[0, 3] = 3
    las_affine = AFFINE @ flipped
    label = load_image(write_nifti(tmp_path / "lab.nii.gz", label_ras[::-1].copy(), las_affine))
    assert label.meta["axcodes"] == "LAS"
    matched = match_label_to_image(image, label)
    assert torch.equal(torch.nonzero(matched[0]), torch.tensor([[0, 1, 2]]))
    assert np.allclose(matched.affine.numpy(), AFFINE)


# ----------------------------------------------------------------------------- bad input


def _missing(tmp):
    return [str(tmp / "no_such_scan.nii.gz")], "does not exist"


def _text_as_nifti(tmp):
    path = tmp / "notes.nii.gz"
    path.write_text("this is a text file, not a NIfTI volume\n")
    return [str(path)], "not gzip-compressed"


def _truncated_gzip(tmp):
    path = write_nifti(tmp / "cut.nii.gz", np.random.default_rng(1).random((32, 32, 16)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return [str(path)], "truncated"


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return [str(tmp / "empty")], "empty"


def _two_series(tmp):
    write_ct_series(tmp / "two", "1.2.826.0.2.1", n=3, prefix="a")
    write_ct_series(tmp / "two", "1.2.826.0.2.2", n=2, prefix="b")
    return [str(tmp / "two")], "1.2.826.0.2.2"


def _two_d(tmp):
    return [str(write_nifti(tmp / "flat.nii.gz", np.zeros((32, 32), np.float32)))], "2-D"


def _four_d(tmp):
    return [str(write_nifti(tmp / "time.nii.gz", np.zeros((8, 8, 4, 3), np.float32)))], "4-D"


def _nan_voxels(tmp):
    array = np.zeros((8, 8, 4), np.float32)
    array[1, 2, 3] = np.nan
    return [str(write_nifti(tmp / "nan.nii.gz", array))], "NaN"


def _label_shape(tmp):
    image = write_nifti(tmp / "img.nii.gz", np.zeros((8, 8, 4), np.float32), AFFINE)
    label = write_nifti(tmp / "lab.nii.gz", np.zeros((8, 8, 5), np.uint8), AFFINE)
    return [str(image), "--label", str(label)], "shape"


def _label_affine(tmp):
    image = write_nifti(tmp / "img.nii.gz", np.zeros((8, 8, 4), np.float32), AFFINE)
    shifted = AFFINE.copy()
    shifted[2, 3] = 5.0  # two slices off
    label = write_nifti(tmp / "lab.nii.gz", np.zeros((8, 8, 4), np.uint8), shifted)
    return [str(image), "--label", str(label)], "affine"


def _dicom_without_pixels(tmp):
    return [str(write_ct_slice(tmp / "header_only.dcm", "1.2.826.0.3.1", 0.0, None))], "no pixel data"


def _dicom_folder_without_pixels(tmp):
    (tmp / "headers").mkdir()
    for k in range(2):
        write_ct_slice(tmp / "headers" / f"h{k}.dcm", "1.2.826.0.3.2", float(k), None)
    return [str(tmp / "headers")], "no pixel data"


def _series_with_gap(tmp):
    folder = tmp / "gap"
    folder.mkdir()
    for k, z in enumerate([0.0, 2.0, 4.0, 8.0, 10.0]):  # the slice at z = 6 is missing
        write_ct_slice(folder / f"g{k}.dcm", "1.2.826.0.4.1", z, np.zeros((16, 20), np.int16), instance=k + 1)
    return [str(folder)], "not evenly spaced"


BAD_INPUTS = {
    "missing path": _missing,
    "text file named .nii.gz": _text_as_nifti,
    "truncated gzip": _truncated_gzip,
    "empty folder": _empty_folder,
    "folder with two DICOM series": _two_series,
    "2-D image": _two_d,
    "4-D image": _four_d,
    "NaN voxels": _nan_voxels,
    "label shape mismatch": _label_shape,
    "label affine mismatch": _label_affine,
    "DICOM without pixel data": _dicom_without_pixels,
    "DICOM folder without pixel data": _dicom_folder_without_pixels,
    "DICOM series with a missing slice": _series_with_gap,
}


# `info` lists a multi-series folder (exit 0; tests/data/test_dicom_folders.py); reading it as one
# volume stays an error (test_bad_input_raises_input_error_from_the_api).
@pytest.mark.parametrize("case", [c for c in BAD_INPUTS if c != "folder with two DICOM series"])
def test_bad_input_fails_cleanly_through_cli(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSEMGAN_CACHE", str(tmp_path / "cache"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv, problem = BAD_INPUTS[case](inputs)
    before = _tree(tmp_path)
    code = cli.main(["info", *argv])
    err = capsys.readouterr()
    assert code == 2
    assert err.out == ""  # no JSON for bad input
    named = argv[2] if "--label" in argv and case.startswith("label") else argv[0]
    assert named in err.err, err.err
    assert problem in err.err, err.err
    assert _tree(tmp_path) == before  # nothing written, not even a cache


@pytest.mark.parametrize("case", ["text file named .nii.gz", "truncated gzip", "4-D image", "NaN voxels",
                                  "DICOM without pixel data", "folder with two DICOM series"])
def test_bad_input_raises_input_error_from_the_api(case, tmp_path):
    argv, problem = BAD_INPUTS[case](tmp_path)
    with pytest.raises(InputError) as caught:
        load_image(argv[0])
    assert caught.value.path == os.fspath(argv[0])
    assert problem in caught.value.problem


def test_truncated_gzip_is_caught_before_nibabel(tmp_path):
    path = write_nifti(tmp_path / "ok.nii.gz", np.ones((8, 8, 8), np.float32))
    with gzip.open(path) as stream:
        assert stream.read()  # the fixture itself is valid
    assert load_image(path).shape == (1, 8, 8, 8)
    assert nib.load(str(path)).shape == (8, 8, 8)

"""``medsemgan evaluate`` end to end on synthetic NIfTI/NRRD files."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from medsemgan import cli
from medsemgan.evaluation.evaluate import pair_cases

SPACING = (0.8, 0.8, 2.5)
SHAPE = (32, 32, 16)


def _save(path, array, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.uint8), affine), str(path))
    return path


def _box(lo, hi, value=1, shape=SHAPE):
    array = np.zeros(shape, dtype=np.uint8)
    array[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return array


def _read_csv(path):
    with open(path, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_folders_paired_by_name_write_csv_and_summary(tmp_path, capsys):
    gt = _box((8, 8, 4), (24, 24, 12))
    shifted = _box((8, 8, 5), (24, 24, 13))  # one slice (2.5 mm) along the last axis
    _save(tmp_path / "gt" / "case_a.nii.gz", gt)
    _save(tmp_path / "pred" / "case_a.nii.gz", gt)
    # Role-word convention: image_7 (segment's output name) pairs with label_7.
    _save(tmp_path / "gt" / "label_7.nii.gz", gt)
    _save(tmp_path / "pred" / "image_7.nii.gz", shifted)
    out = tmp_path / "out"

    code = cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "--out", str(out), "--chaos-score"])

    assert code == 0
    rows = _read_csv(out / "metrics.csv")
    assert sorted(rows) == ["case_a", "label_7"]
    assert float(rows["case_a"]["dice"]) == 1.0
    assert float(rows["case_a"]["chaos_score"]) == 100.0
    assert float(rows["label_7"]["dice"]) == pytest.approx(7 / 8)
    assert float(rows["label_7"]["mssd"]) == pytest.approx(2.5)
    assert float(rows["label_7"]["volume_gt_ml"]) == pytest.approx(16 * 16 * 8 * 0.8 * 0.8 * 2.5 / 1000)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["n_failed"] == 0
    dice = summary["metrics"]["dice"]
    assert dice["mean"] == pytest.approx((1 + 7 / 8) / 2)
    assert dice["median"] == pytest.approx((1 + 7 / 8) / 2)
    assert dice["std"] == pytest.approx(np.std([1, 7 / 8], ddof=1))
    assert "chaos_score" in summary["metrics"]
    printed = capsys.readouterr().out
    assert "dice" in printed and "2 case(s) scored" in printed
    assert not list(out.glob(".*")), "temporary files left behind"


def test_one_bad_case_is_reported_and_the_others_are_scored(tmp_path, capsys):
    gt = _box((4, 4, 2), (20, 20, 10))
    _save(tmp_path / "gt" / "good.nii.gz", gt)
    _save(tmp_path / "pred" / "good.nii.gz", gt)
    _save(tmp_path / "gt" / "bad_shape.nii.gz", gt)
    _save(tmp_path / "pred" / "bad_shape.nii.gz", np.zeros((32, 32, 15), np.uint8))
    _save(tmp_path / "gt" / "bad_affine.nii.gz", gt)
    _save(tmp_path / "pred" / "bad_affine.nii.gz", gt, origin=(0.0, 0.0, 5.0))
    out = tmp_path / "out"

    code = cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "--out", str(out)])

    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1
    errors = {item["case"]: item["error"] for item in summary["failed"]}
    assert set(errors) == {"bad_shape", "bad_affine"}
    for case, message in errors.items():
        assert f"pred/{case}.nii.gz" in message and f"gt/{case}.nii.gz" in message
    assert "shape" in errors["bad_shape"] and "affine" in errors["bad_affine"]
    assert list(_read_csv(out / "metrics.csv")) == ["good"]


def test_empty_prediction_gives_inf_distances_excluded_from_the_summary(tmp_path):
    gt = _box((4, 4, 2), (20, 20, 10))
    _save(tmp_path / "gt" / "a.nii.gz", gt)
    _save(tmp_path / "pred" / "a.nii.gz", gt)
    _save(tmp_path / "gt" / "b.nii.gz", gt)
    _save(tmp_path / "pred" / "b.nii.gz", np.zeros_like(gt))
    out = tmp_path / "out"

    assert cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "--out", str(out)]) == 0

    rows = _read_csv(out / "metrics.csv")
    assert math.isinf(float(rows["b"]["assd"])) and float(rows["b"]["dice"]) == 0.0
    text = (out / "summary.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    summary = json.loads(text)
    assert summary["metrics"]["assd"] == pytest.approx(
        {"n": 1, "n_excluded": 1, "mean": 0.0, "median": 0.0, "std": None, "min": 0.0, "max": 0.0}
    )
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(0.5)


def test_label_values_select_the_organ(tmp_path):
    multi = _box((4, 4, 2), (20, 20, 10), value=5)  # TotalSegmentator-style: liver = 5
    multi[22:28, 22:28, 2:10] = 3  # another organ
    pred = (multi == 5).astype(np.uint8)
    gt_file = _save(tmp_path / "gt.nii.gz", multi)
    pred_file = _save(tmp_path / "pred.nii.gz", pred)
    out = tmp_path / "out"

    assert cli.main(["evaluate", "--pred", str(pred_file), "--gt", str(gt_file), "--out", str(out),
                     "--label-gt", "5"]) == 0
    assert float(_read_csv(out / "metrics.csv")["gt"]["dice"]) == 1.0
    # Without the label, every nonzero value counts as foreground and the other organ is missed.
    assert cli.main(["evaluate", "--pred", str(pred_file), "--gt", str(gt_file), "--out", str(out)]) == 0
    assert float(_read_csv(out / "metrics.csv")["gt"]["dice"]) < 1.0


def test_nrrd_prediction_against_nifti_ground_truth(tmp_path):
    import SimpleITK as sitk

    gt = _box((4, 6, 2), (20, 22, 10))
    _save(tmp_path / "gt" / "c1.nii.gz", gt)
    image = sitk.GetImageFromArray(gt.transpose(2, 1, 0))  # SimpleITK wants [Z, Y, X]
    image.SetSpacing(SPACING)
    # NIfTI's RAS affine diag(+,+,+) is LPS direction diag(-1,-1,1) in ITK's convention.
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(image, str(tmp_path / "pred" / "c1.nrrd"))

    assert cli.main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                     "--out", str(tmp_path / "out")]) == 0
    assert float(_read_csv(tmp_path / "out" / "metrics.csv")["c1"]["dice"]) == 1.0


def test_missing_prediction_fails_unless_allowed(tmp_path, capsys):
    gt = _box((4, 4, 2), (20, 20, 10))
    _save(tmp_path / "gt" / "a.nii.gz", gt)
    _save(tmp_path / "gt" / "b.nii.gz", gt)
    _save(tmp_path / "pred" / "a.nii.gz", gt)
    _save(tmp_path / "pred" / "zzz.nii.gz", gt)
    args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
            "--out", str(tmp_path / "out")]

    assert cli.main(args) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unmatched_gt"] == [str(tmp_path / "gt" / "b.nii.gz")]
    assert summary["unmatched_pred"] == [str(tmp_path / "pred" / "zzz.nii.gz")]
    assert cli.main(args + ["--allow-missing"]) == 0


def test_unusable_paths_exit_2_with_the_path(tmp_path, capsys):
    assert cli.main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path)]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    _save(tmp_path / "gt" / "a.nii.gz", _box((1, 1, 1), (3, 3, 3)))
    assert cli.main(["evaluate", "--pred", str(tmp_path / "empty"), "--gt", str(tmp_path / "gt")]) == 2
    assert "no mask files" in capsys.readouterr().err


def test_pairing_is_exact_first_and_never_ambiguous(tmp_path):
    p = [tmp_path / n for n in ("case_1.nii.gz", "image_2.nii.gz", "2_seg.nii", "3.nrrd")]
    g = [tmp_path / n for n in ("case_1.nii.gz", "label_2.nii.gz", "label_3.nii.gz")]
    pairs, unmatched_pred, unmatched_gt = pair_cases(p, g)
    # "image_2" and "2_seg" both reduce to case "2": ambiguous, so label_2 stays unpaired.
    assert [(c, a.name, b.name) for c, a, b in pairs] == [
        ("case_1", "case_1.nii.gz", "case_1.nii.gz"),
        ("label_3", "3.nrrd", "label_3.nii.gz"),
    ]
    assert {x.name for x in unmatched_pred} == {"image_2.nii.gz", "2_seg.nii"}
    assert [x.name for x in unmatched_gt] == ["label_2.nii.gz"]


def test_simpleitk_fallback_when_the_data_layer_is_absent(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "medsemgan.data.io", None)  # makes the import fail
    from medsemgan.evaluation.evaluate import load_mask_volume

    gt = _box((4, 6, 2), (20, 22, 10))
    path = _save(tmp_path / "gt.nii.gz", gt)
    volume = load_mask_volume(path)
    assert volume.array.shape == SHAPE
    assert np.array_equal(volume.array != 0, gt != 0)
    assert volume.spacing == pytest.approx(SPACING)
    shifted = _save(tmp_path / "pred.nii.gz", _box((4, 6, 3), (20, 22, 11)))
    assert cli.main(["evaluate", "--pred", str(shifted), "--gt", str(path),
                     "--out", str(tmp_path / "out")]) == 0
    assert float(_read_csv(tmp_path / "out" / "metrics.csv")["gt"]["mssd"]) == pytest.approx(2.5)

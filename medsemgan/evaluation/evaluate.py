"""``medsemgan evaluate``: score predicted masks against ground truth, one row per case.

``--pred`` and ``--gt`` are each a mask file (NIfTI, NRRD, MetaImage) or a folder of them. Folder
contents are paired by case name (file name without its extension): exact names first, then names
with a role word removed (``image_2``/``label_2``/``pred_2``/``2_seg`` all mean case ``2``).
Spacing comes from the ground truth's header; the prediction must have the same shape and affine.
Writes ``metrics.csv`` (one row per case) and ``summary.json`` (mean, median, std, min, max per
metric) to ``--out``, and prints the summary. A case that fails is reported and the others go on;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsemgan.errors import InputError
from medsemgan.evaluation.metrics import CHAOS_THRESHOLDS, chaos_score, compute_metrics
from medsemgan.evaluation.statistics import describe
from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

MASK_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Words that name a file's role rather than its case, stripped for the second pairing pass.
_ROLES = "image|img|label|labels|seg|segmentation|pred|prediction|mask|gt"
_ROLE_PREFIX = re.compile(rf"^({_ROLES})[_-]", re.I)
_ROLE_SUFFIX = re.compile(rf"[_-]({_ROLES}|liver|0000)$", re.I)
DEFAULT_AFFINE_TOL_MM = 1e-3
METRIC_COLUMNS = (
    "dice", "ravd", "assd", "mssd", "hd95", "slice_dice_mean", "volume_pred_ml", "volume_gt_ml"
)
CHAOS_COLUMNS = tuple(f"{name}_points" for name in CHAOS_THRESHOLDS) + ("chaos_score",)


@dataclass(frozen=True)
class MaskVolume:
    array: np.ndarray  # labels, spatial axes only (X, Y[, Z])
    affine: np.ndarray  # voxel index -> physical mm, (ndim+1) x (ndim+1)
    path: Path

    @property
    def spacing(self) -> tuple[float, ...]:
        ndim = self.array.ndim
        return tuple(float(v) for v in np.linalg.norm(self.affine[:ndim, :ndim], axis=0))


def case_name(path: Path) -> str:
    name = path.name
    for ext in MASK_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _case_key(name: str) -> str:
    return _ROLE_SUFFIX.sub("", _ROLE_PREFIX.sub("", name))


def list_masks(path: Path) -> list[Path]:
    """Mask files in a folder (not recursive, hidden files skipped), or the file itself."""
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(MASK_EXTENSIONS)
    )
    if not files:
        raise InputError(path, f"no mask files ({', '.join(MASK_EXTENSIONS)}) in this folder")
    return files


def pair_cases(pred_files: list[Path], gt_files: list[Path]):
    """Pair prediction and ground-truth files by case name.

    Returns ``(pairs, unmatched_pred, unmatched_gt)`` with ``pairs`` a list of
    ``(case, pred_path, gt_path)`` named after the ground truth. A single file on each side is
    paired whatever the names.
    """
    if len(pred_files) == 1 and len(gt_files) == 1:
        return [(case_name(gt_files[0]), pred_files[0], gt_files[0])], [], []
    preds = {case_name(p): p for p in pred_files}
    gts = {case_name(g): g for g in gt_files}
    pairs = [(name, preds[name], gts[name]) for name in sorted(gts) if name in preds]
    rest_pred = {n: p for n, p in preds.items() if n not in gts}
    rest_gt = {n: g for n, g in gts.items() if n not in preds}

    def by_key(items: dict[str, Path]) -> dict[str, list[str]]:
        keys: dict[str, list[str]] = {}
        for name in items:
            keys.setdefault(_case_key(name), []).append(name)
        return keys

    pred_keys, gt_keys = by_key(rest_pred), by_key(rest_gt)
    for key in sorted(set(pred_keys) & set(gt_keys)):
        # Only unambiguous one-to-one matches: two files that reduce to the same key stay unpaired.
        if len(pred_keys[key]) == 1 and len(gt_keys[key]) == 1:
            p_name, g_name = pred_keys[key][0], gt_keys[key][0]
            pairs.append((g_name, rest_pred.pop(p_name), rest_gt.pop(g_name)))
    pairs.sort(key=lambda item: item[0])
    return pairs, sorted(rest_pred.values()), sorted(rest_gt.values())


def _load_with_simpleitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot read as an image: {str(err).strip().splitlines()[-1]}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a mask must have one value per voxel (this image is multi-channel)")
    ndim = image.GetDimension()
    # SimpleITK arrays are [Z, Y, X]; reverse to [X, Y, Z] to match the affine's index order.
    array = sitk.GetArrayFromImage(image).transpose(tuple(range(ndim))[::-1])
    affine = np.eye(ndim + 1)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
    affine[:ndim, :ndim] = direction * np.asarray(image.GetSpacing())
    affine[:ndim, ndim] = image.GetOrigin()
    return array, affine


def load_mask_volume(path: Path) -> MaskVolume:
    """A label volume and its index-to-mm affine. Uses ``medsemgan.data.io.load_image`` when that
    layer is installed (same orientation handling as the rest of the toolkit), SimpleITK otherwise;
    pred and gt always go through the same loader, so their geometry is comparable.
    """
    path = Path(path)
    try:
        from medsemgan.data.io import load_image
    except ImportError:
        array, affine = _load_with_simpleitk(path)
    else:
        image = load_image(path)
        array = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        affine = np.asarray(getattr(image, "affine", np.eye(array.ndim + 1)), dtype=np.float64)
    if array.ndim not in (2, 3):
        raise InputError(path, f"expected a 2-D or 3-D label image, got shape {array.shape}")
    return MaskVolume(array=array, affine=affine, path=path)


def binarise(array: np.ndarray, label: int | None) -> np.ndarray:
    """Foreground = ``label`` if given, else any nonzero value (float labels rounded first)."""
    if label is None:
        return array != 0
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(array)
    if isinstance(label, (tuple, list)):  # several values (own data's --label 1,2)
        return np.isin(array, label)
    return array == label


def check_geometry(pred: MaskVolume, gt: MaskVolume, tol_mm: float) -> None:
    if pred.array.shape != gt.array.shape:
        raise InputError(
            pred.path,
            f"shape {pred.array.shape} differs from the ground truth {gt.path} "
            f"shape {gt.array.shape}",
        )
    diff = float(np.max(np.abs(pred.affine - gt.affine)))
    if diff > tol_mm:
        raise InputError(
            pred.path,
            f"affine differs from the ground truth {gt.path} by up to {diff:.4g} mm "
            f"(tolerance {tol_mm:g} mm): the masks are not in the same voxel grid",
        )


def evaluate_case(
    pred_path: Path,
    gt_path: Path,
    label_pred: int | None = None,
    label_gt: int | None = None,
    with_chaos: bool = False,
    affine_tol_mm: float = DEFAULT_AFFINE_TOL_MM,
) -> dict[str, float]:
    pred, gt = load_mask_volume(pred_path), load_mask_volume(gt_path)
    check_geometry(pred, gt, affine_tol_mm)
    metrics = compute_metrics(
        binarise(pred.array, label_pred),
        binarise(gt.array, label_gt),
        spacing=gt.spacing,
        slice_axis=-1,
        pred_path=pred.path,
        gt_path=gt.path,
    )
    row = metrics.as_dict()
    if with_chaos:
        row.update(chaos_score(metrics))
    return row


def summarise(rows: list[dict], columns) -> dict[str, dict]:
    """Per metric, :func:`medsemgan.evaluation.statistics.describe` over the cases: mean, median,
    std (n - 1), min, max over the finite values; ``n_excluded`` counts the rest."""
    return {column: describe(row[column] for row in rows) for column in columns}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(out_dir: Path, rows: list[dict], columns, summary: dict) -> None:
    with atomic_path(out_dir / "metrics.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["case", "pred", "gt", *columns])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row[k] for k in ["case", "pred", "gt", *columns]})
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n")


def format_summary(summary: dict) -> str:
    lines = [f"{'metric':<16}{'mean':>10}{'median':>10}{'std':>10}{'n':>5}{'excluded':>10}"]
    for name, stats in summary["metrics"].items():
        cells = [
            "-" if stats[k] is None else f"{stats[k]:.4f}" for k in ("mean", "median", "std")
        ]
        lines.append(
            f"{name:<16}{cells[0]:>10}{cells[1]:>10}{cells[2]:>10}{stats['n']:>5}"
            f"{stats['n_excluded']:>10}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="predicted mask file or folder")
    parser.add_argument("--gt", type=Path, help="ground-truth mask file or folder")
    parser.add_argument("--data", type=Path, default=None,
                        help="instead of --gt: your dataset (MSD/nnU-Net folder or MONAI datalist JSON); its "
                             "labeled test cases (else every labeled case) are the ground truth")
    parser.add_argument("--label", default=None,
                        help="with --data: the liver's value in its label files (default 1; several as 1,2)")
    parser.add_argument("--out", type=Path, help="write metrics.csv and summary.json here")
    parser.add_argument(
        "--label-pred", type=int, help="foreground value in the predictions (default: any nonzero)"
    )
    parser.add_argument(
        "--label-gt", type=int, help="foreground value in the ground truth (default: any nonzero)"
    )
    parser.add_argument(
        "--chaos-score", action="store_true", help="add CHAOS 0-100 points per metric and overall"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="exit 0 even if some ground-truth cases have no prediction",
    )
    parser.add_argument(
        "--affine-tol",
        type=float,
        default=DEFAULT_AFFINE_TOL_MM,
        help=f"largest allowed affine difference in mm (default {DEFAULT_AFFINE_TOL_MM:g})",
    )


def ground_truth(args: argparse.Namespace) -> tuple[list[Path], int | tuple[int, ...] | None]:
    """``--gt`` files (with ``--label-gt``), or the labels of ``--data`` (with its ``--label``)."""
    data = getattr(args, "data", None)
    if (args.gt is None) == (data is None):
        raise InputError(None, "give the ground truth: --gt FILE|FOLDER or --data DATASET (one of them)")
    if data is None:
        return list_masks(args.gt), args.label_gt
    from medsemgan.data.datalist import read_dataset

    dataset = read_dataset(data, getattr(args, "label", None))
    cases = dataset.test_cases()
    if not cases:
        raise InputError(data, "no labeled case to score")
    args.gt = Path(data)
    return [s.label_path for s in cases], dataset.liver_values


def run(args: argparse.Namespace) -> int:
    pred_files = list_masks(args.pred)  # a bad --pred is named first
    gt_files, args.label_gt = ground_truth(args)
    pairs, unmatched_pred, unmatched_gt = pair_cases(pred_files, gt_files)
    if not pairs:
        raise InputError(
            args.pred, f"no prediction matches a ground-truth case name in {args.gt}"
        )
    columns = METRIC_COLUMNS + (CHAOS_COLUMNS if args.chaos_score else ())
    rows, failed = [], []
    for case, pred_path, gt_path in pairs:
        try:
            row = evaluate_case(
                pred_path,
                gt_path,
                label_pred=args.label_pred,
                label_gt=args.label_gt,
                with_chaos=args.chaos_score,
                affine_tol_mm=args.affine_tol,
            )
        except InputError as err:
            log.error("case %s failed: %s", case, err)
            failed.append(
                {"case": case, "pred": str(pred_path), "gt": str(gt_path), "error": str(err)}
            )
            continue
        rows.append({"case": case, "pred": str(pred_path), "gt": str(gt_path), **row})
        log.info(
            "%s: Dice %.4f  RAVD %.3f%%  ASSD %.3f mm  MSSD %.3f mm  HD95 %.3f mm",
            case, row["dice"], row["ravd"], row["assd"], row["mssd"], row["hd95"],
        )
    for path in unmatched_pred:
        log.warning("prediction without ground truth (ignored): %s", path)
    for path in unmatched_gt:
        log.warning("ground truth without prediction (not scored): %s", path)

    summary = {
        "pred": str(args.pred),
        "gt": str(args.gt),
        "n_cases": len(rows),
        "n_failed": len(failed),
        "metrics": summarise(rows, columns),
        "failed": failed,
        "unmatched_pred": [str(p) for p in unmatched_pred],
        "unmatched_gt": [str(p) for p in unmatched_gt],
    }
    if args.out is not None:
        write_outputs(args.out, rows, columns, summary)
        log.info("wrote %s and %s", args.out / "metrics.csv", args.out / "summary.json")
    print(format_summary(summary))
    print(f"{len(rows)} case(s) scored, {len(failed)} failed, "
          f"{len(unmatched_gt)} ground truth without prediction, "
          f"{len(unmatched_pred)} prediction without ground truth")
    if failed or (unmatched_gt and not args.allow_missing):
        print("medsemgan evaluate: some cases were not scored (see above)", file=sys.stderr)
        return 1
    return 0

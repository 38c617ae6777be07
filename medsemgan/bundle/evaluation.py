"""What ``evaluate.json`` adds to inference: labeled study lists and per-case metrics.

Metrics are the project's (``medsemgan.evaluation.metrics.compute_metrics``: CHAOS definitions,
distances in mm from the label's grid); the CSV and summary JSON are written by the same code as
``medsemgan evaluate`` (``write_outputs``, ``summarise``), so the files read the same.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsemgan.errors import InputError

log = logging.getLogger(__name__)

IMAGE_FOLDERS = ("images", "imagesTs", "imagesTr")
LABEL_FOLDERS = ("labels", "labelsTs", "labelsTr")


def _paired_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def labeled_datalist(dataset_dir: str | os.PathLike, studies: list[str] | str | None = None
                     ) -> list[dict[str, Any]]:
    """Items ``{"image", "image_path", "label", "case"}`` (+ ``study``, ``root`` for catalogued data).

    ``dataset_dir`` is either a folder with ``images/`` and ``labels/`` (or ``imagesTs/`` +
    ``labelsTs/``), paired by case name as ``medsemgan evaluate`` pairs files; or the shared data
    folder (``../shared/data``), where ``studies`` names catalogued studies (default: every
    held-out test study: chaos_ct_1 and the MRI studies).
    """
    from medsemgan.evaluation.evaluate import list_masks, pair_cases
    from medsemgan.inference.segment import find_studies

    root = Path(dataset_dir)
    from medsemgan.data.datalist import bundle_items, is_dataset

    if is_dataset(root) and (root.is_file() or (root / "dataset.json").is_file()):
        return bundle_items(root, labeled=True)  # own data: MSD/nnU-Net dataset.json, MONAI datalist JSON
    if not root.is_dir():
        raise InputError(root, "dataset folder does not exist")
    images, labels = _paired_folder(root, IMAGE_FOLDERS), _paired_folder(root, LABEL_FOLDERS)
    if images is not None and labels is not None:
        found = {f"{case}.nii.gz": (case, path) for case, path in find_studies(images)}
        # pair_cases pairs file names by case (role words such as image_/label_ stripped): give it
        # each study under its case name, whatever its format (a DICOM folder has no extension).
        pairs, unmatched, missing = pair_cases([Path(name) for name in found], list_masks(labels))
        for path in missing:
            log.warning("label without image (not evaluated): %s", path)
        for path in unmatched:
            log.warning("image without label (not evaluated): %s", found[path.name][1])
        if not pairs:
            raise InputError(root, f"no image in {images} has a label in {labels} with the same case name")
        items = []
        for _, pred, gt in pairs:
            case, path = found[pred.name]
            items.append({"image": str(path), "image_path": str(path), "label": str(gt),
                          "label_path": str(gt), "case": case})
        return items
    return catalogue_datalist(root, studies)


def catalogue_datalist(root: str | os.PathLike, studies: list[str] | str | None = None
                       ) -> list[dict[str, Any]]:
    from medsemgan.data.catalogue import get_study, held_out_studies, list_studies

    root = Path(root)
    if not list_studies(root):
        raise InputError(root, "neither images/ + labels/ folders nor the shared data folder "
                               "(../shared/data layout) found here")
    if isinstance(studies, str):
        studies = [s for s in studies.replace(",", " ").split() if s]
    chosen = [get_study(root, name) for name in studies] if studies else held_out_studies(root)
    return [{"image": str(s.image_path), "image_path": str(s.image_path),
             "label": str(s.label_path), "label_path": str(s.label_path), "case": s.name,
             "study": s.name, "root": str(root)}
            for s in chosen if s.label_path is not None]


class CaseMetricsHandler:
    """Ignite handler: per-case metrics after postprocessing, files at the end of the run.

    Reads the written mask (``pred``, uint8 on the input grid) and the label (``label``, same
    grid) of every item, computes Dice, RAVD, ASSD, MSSD, HD95 (mm, from the input's affine) and
    the per-slice Dice mean, and at ``COMPLETED`` writes ``metrics.csv`` and ``summary.json``
    to ``output_dir`` and logs the summary. ``failures`` (the config's ``StudyFailures``): the
    studies that could not be loaded, reported in the summary as ``medsemgan evaluate`` reports
    its failed cases (attach it after this handler: it ends the run).
    """

    def __init__(self, output_dir: str | os.PathLike, pred_key: str = "pred", label_key: str = "label",
                 case_key: str = "case", with_chaos: bool = False, failures: Any = None) -> None:
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key, self.case_key = pred_key, label_key, case_key
        self.with_chaos = with_chaos
        self.failures = failures
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        self.rows = []

    def iteration_completed(self, engine) -> None:
        from medsemgan.bundle.transforms import INPUT_AFFINE_KEY, as_numpy_mask
        from medsemgan.data.io import spacing_of
        from medsemgan.evaluation.metrics import chaos_score, compute_metrics

        batch, output = engine.state.batch, engine.state.output
        for item, out in zip(batch, output):
            data = {**item, **out}
            case = str(data[self.case_key])
            affine = np.asarray(torch.as_tensor(data[INPUT_AFFINE_KEY]).cpu(), dtype=np.float64)
            metrics = compute_metrics(as_numpy_mask(data[self.pred_key]) > 0,
                                      as_numpy_mask(data[self.label_key]) > 0,
                                      spacing=tuple(float(s) for s in spacing_of(affine)),
                                      slice_axis=-1, pred_path=data.get(f"{self.pred_key}_path"),
                                      gt_path=data.get("label_path") or data.get("image_path"))
            row = {"case": case, "pred": data.get(f"{self.pred_key}_path", ""),
                   "gt": str(data.get("label_path") or ""), **metrics.as_dict()}
            if self.with_chaos:
                row.update(chaos_score(metrics))
            self.rows.append(row)
            log.info("%s: Dice %.4f  RAVD %.3f%%  ASSD %.3f mm  MSSD %.3f mm  HD95 %.3f mm", case,
                     row["dice"], row["ravd"], row["assd"], row["mssd"], row["hd95"])

    def completed(self, engine=None) -> dict:
        from medsemgan.evaluation.evaluate import (
            CHAOS_COLUMNS, METRIC_COLUMNS, format_summary, summarise, write_outputs,
        )

        columns = METRIC_COLUMNS + (CHAOS_COLUMNS if self.with_chaos else ())
        failed = list(getattr(self.failures, "failed", None) or [])
        summary = {"n_cases": len(self.rows), "n_failed": len(failed),
                   "metrics": summarise(self.rows, columns), "failed": failed}
        write_outputs(self.output_dir, self.rows, columns, summary)
        log.info("per-case metrics: %s; summary: %s\n%s", self.output_dir / "metrics.csv",
                 self.output_dir / "summary.json", format_summary(summary))
        return summary

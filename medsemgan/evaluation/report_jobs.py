"""``medsemgan report``'s jobs and their cache: one :class:`Job` per (test set, case, method,
budget); :func:`run_jobs` segments and scores what the cache does not hold (each case loaded once
for all its jobs), a failing case recorded with its error; :func:`write_csv` writes the rows.

Cache: ``cache/<method>/<budget>/<test set>/<case>.json``, keyed (:attr:`Job.cache_key`) by the
runner's fingerprint (``report_methods``: kind, options, the weights' content hashes), the case
(its files' content hashes, modality, label settings) and the fingerprint of the code that
computes a case (``report_methods.CODE_PARTS``). SemanticGAN entries without the out-of-domain
verdict are recomputed once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsemgan.errors import InputError
from medsemgan.evaluation.metrics import compute_metrics
from medsemgan.evaluation.report_config import Budget, Method, TestSet, slug
from medsemgan.evaluation.report_methods import CODE_PARTS, Runner
from medsemgan.fingerprint import code_fingerprint, content_hashes
from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

METRICS = ("dice", "ravd", "assd", "mssd", "hd95", "slice_dice_mean", "volume_pred_ml", "volume_gt_ml")
OOD_COLUMNS = ("recon_mse_mean", "recon_mse_median", "recon_mse_max", "structure_error_mean",
               "structure_error_median", "structure_error_max", "objective_mean", "ood_signal", "ood_score",
               "ood_threshold", "out_of_domain")
CSV_COLUMNS = ("test_set", "case", "modality", "method", "method_name", "budget", "status", *METRICS,
               *OOD_COLUMNS, "seconds", "cached", "prediction", "error")


def _spacing(image) -> tuple[float, ...]:
    affine = np.asarray(image.affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))



def _case_fingerprint(study) -> dict:
    return {"image": str(study.image_path), "label": str(study.label_path), "modality": study.modality,
            "liver_value": study.liver_value, "label_kind": study.label_kind,
            # own data may mark the liver with several values (--label 1,2): all of them key the case
            "liver_values": list(getattr(study, "liver_values", (study.liver_value,))),
            "content": content_hashes([study.image_path, study.label_path])}



def _cache_file(out: Path, method: str, budget: str, test_set: str, case: str) -> Path:
    return out / "cache" / slug(method) / slug(budget) / slug(test_set) / f"{slug(case)}.json"



def predictions_dir(out: Path, method: str, budget: str) -> Path:
    """Where a method's masks at one budget are written (one folder per test set below it)."""
    return out / "predictions" / slug(method) / slug(budget)


def prediction_file(out: Path, method: str, budget: str, case: str, test_set: str) -> Path:
    return predictions_dir(out, method, budget) / slug(test_set) / f"{slug(case)}.nii.gz"



def _read_cache(path: Path, key: str, needs_ood: bool = False) -> dict | None:
    """The cached result, or None to recompute: missing, unreadable, another key, the prediction
    gone, or (``needs_ood``) an entry written before the out-of-domain signal was recorded."""
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if cached.get("key") != key or not Path(cached.get("prediction", "")).is_file():
        return None
    if needs_ood and not (isinstance(cached.get("ood"), dict) and "ood_signal" in cached["ood"]):
        return None
    return cached



def _json_float(value):
    return value if value is None or math.isfinite(value) else str(value)



def _from_json_float(value):
    return float(value) if isinstance(value, str) else value



def _json_signal(signal: dict) -> dict:
    """The out-of-domain signal with non-finite floats as strings, like the metrics."""
    def one(value):
        if isinstance(value, list):
            return [one(v) for v in value]
        return _json_float(value) if isinstance(value, float) else value
    return {k: one(v) for k, v in signal.items()}



def run_case(runner: Runner, test_set: TestSet, study, loaded: dict, out: Path) -> dict:
    """Segment and score one case; writes the prediction and the cache entry."""
    from medsemgan.inference.writers import write_mask

    started = time.perf_counter()
    image, label = loaded["image"], loaded["label"]
    if label is None:
        raise InputError(study.image_path, "no ground-truth label for this case")
    mask, signal = runner.segment(image, test_set.modality, study.name)
    if tuple(mask.shape[-3:]) != tuple(image.shape[-3:]):
        raise RuntimeError(f"prediction shape {tuple(mask.shape)} differs from the image {tuple(image.shape)}")
    pred_path = prediction_file(out, runner.method.key, runner.budget, study.name, test_set.key)
    write_mask(mask, pred_path, affine=image.affine)
    metrics = compute_metrics(np.asarray(mask[0]) > 0, np.asarray(label[0]) > 0, spacing=_spacing(image),
                              slice_axis=-1, pred_path=pred_path, gt_path=study.label_path).as_dict()
    result = {"metrics": metrics, "prediction": str(pred_path), "seconds": time.perf_counter() - started}
    if signal:
        result["ood"] = signal
    return result



@dataclass
class Job:
    test_set: TestSet
    study: Any
    method: Method
    budget: Budget
    runner: Runner

    @property
    def cache_key(self) -> str:
        blob = json.dumps({"runner": self.runner.fingerprint_for(self.test_set.modality),
                           "case": _case_fingerprint(self.study), "code": code_fingerprint(CODE_PARTS)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def cache_path(self, out: Path) -> Path:
        return _cache_file(out, self.method.key, self.budget.key, self.test_set.key, self.study.name)



def _row(job: Job, status: str, result: dict | None, error: str = "", cached: bool = False) -> dict:
    row = {"test_set": job.test_set.key, "case": job.study.name, "modality": job.test_set.modality,
           "method": job.method.key, "method_name": job.method.name, "budget": job.budget.key,
           "status": status, "seconds": None, "cached": cached, "prediction": "", "error": error}
    row.update({m: math.nan for m in METRICS})
    row.update({c: None for c in OOD_COLUMNS})
    if result is not None:
        row.update({m: _from_json_float(result["metrics"][m]) for m in METRICS})
        row["seconds"] = round(float(result["seconds"]), 2)
        row["prediction"] = result["prediction"]
        signal = result.get("ood") or {}
        row.update({c: signal.get(c) if c == "ood_signal" else _from_json_float(signal.get(c))
                    for c in OOD_COLUMNS})
    return row



def run_jobs(jobs: list[Job], out: Path, progress: bool = True) -> list[dict]:
    """Every job, cached ones first; each case is loaded once for all its uncached jobs."""
    from tqdm.auto import tqdm

    rows: list[dict] = []
    todo: dict[tuple[str, str], list[Job]] = {}
    for job in jobs:
        cached = _read_cache(job.cache_path(out), job.cache_key, needs_ood=job.runner.has_ood_signal)
        if cached is not None:
            rows.append(_row(job, "ok", cached, cached=True))
        else:
            todo.setdefault((job.test_set.key, job.study.name), []).append(job)
    total = sum(len(v) for v in todo.values())
    log.info("%d result(s) cached, %d to compute", len(rows), total)
    bar = tqdm(total=total, desc="report", unit="case", disable=not progress or total == 0)
    try:
        for (_, case), case_jobs in todo.items():
            study = case_jobs[0].study
            try:
                loaded = study.load()
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - a case that cannot be read fails alone
                message = _error_text(err, study.image_path)
                log.error("%s: cannot load: %s (case skipped)", case, message)
                rows += [_row(job, "failed", None, message) for job in case_jobs]
                bar.update(len(case_jobs))
                continue
            for job in case_jobs:
                bar.set_postfix_str(f"{job.method.key}/{job.budget.key}/{case}")
                try:
                    result = run_case(job.runner, job.test_set, study, loaded, out)
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001 - one failing case does not stop the report
                    message = _error_text(err, study.image_path)
                    log.error("%s %s/%s: %s", case, job.method.key, job.budget.key, message)
                    log.debug("traceback", exc_info=True)
                    rows.append(_row(job, "failed", None, message))
                else:
                    entry = {"key": job.cache_key, "metrics": {k: _json_float(v) for k, v in result["metrics"].items()},
                             "prediction": result["prediction"], "seconds": result["seconds"]}
                    if "ood" in result:
                        entry["ood"] = _json_signal(result["ood"])
                    with atomic_path(job.cache_path(out)) as tmp:
                        tmp.write_text(json.dumps(entry, indent=1))
                    rows.append(_row(job, "ok", result))
                    log.info("%s %s/%s: Dice %.4f (%.1f s)", case, job.method.key, job.budget.key,
                             result["metrics"]["dice"], result["seconds"])
                bar.update(1)
    finally:
        bar.close()
    return rows



def _error_text(err: Exception, fallback_path) -> str:
    if isinstance(err, InputError):
        return str(err)
    return f"{fallback_path}: {type(err).__name__}: {' '.join(str(err).split())[:300]}"



def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})

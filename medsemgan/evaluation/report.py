"""``medsemgan report``: the CT -> MRI cross-modality report (rows = methods, columns = label budgets).

For every method (SemanticGAN with test-time optimisation, SemanticGAN encoder only, the supervised
U-Net baseline, or precomputed masks), every label budget and every case of an in-domain CT test set
and an out-of-domain MRI test set: segment the case, score it with
``medsemgan.evaluation.metrics.compute_metrics`` (CHAOS definitions), and write

* ``report.md``: the paper-style table (Dice mean ± std per method x budget x test set), details,
  per-case Dice, the figures, what was not available and what failed;
* ``per_case.csv``: one row per (test set, case, method, budget) with every metric and, for
  SemanticGAN rows, the out-of-domain signals (structural error of the encoder's reconstruction
  and reconstruction MSE: mean / median / max over the slices) and ``segment_volume``'s verdict
  (signal, score, threshold, flag);
* ``summary.json``: the table as data;
* ``figures/dice_<test set>.png``: per-patient Dice bars;
  ``figures/overlay_<test set>_<method>_<budget>.png``: best / median / worst case with the ground
  truth and predicted contours;
* ``predictions/<method>/<budget>/<case>.nii.gz``: every predicted mask (input geometry);
* ``cache/<method>/<budget>/<test set>/<case>.json``: metrics keyed by a fingerprint of the
  method, its weights' and the case's files' contents and the code that computes a case
  (``report_methods.CODE_PARTS``), so re-running after adding a method only
  computes the new one. SemanticGAN entries written before the out-of-domain signal was recorded
  (no ``ood`` field, or one without the verdict) are recomputed once; other kinds' entries never
  had it and stay valid.

``report.md``'s "Out-of-domain signal" section gives, per SemanticGAN method x budget x test set,
each signal over the cases and how many were flagged, and suggests a threshold per signal
(:func:`suggest_threshold`) that separates the CT cases from the MRI ones when one exists.

A method/budget whose weights do not exist is reported as "not available (missing FILE)"; a case
that fails is recorded with its error and the others go on (exit status 1 then). Every path is
configurable (``medsemgan/configs/report.yaml``); relative test-set paths resolve against
``data_root`` (default: ``medsemgan.paths.data_root()``), relative weight paths against
``weights_root`` (default: the repository root).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsemgan.errors import InputError
from medsemgan.evaluation.metrics import compute_metrics
from medsemgan.evaluation.statistics import describe
from medsemgan.evaluation.report_config import (  # noqa: F401  (parse_config etc. re-exported)
    DEFAULT_CONFIG,
    Budget,
    Method,
    ReportConfig,
    TestSet,
    slug,
    load_report_config,
    parse_config,
    read_report_yaml,
)
from medsemgan.evaluation.report_methods import CODE_PARTS, Runner, make_runner
from medsemgan.fingerprint import code_fingerprint, content_hashes
from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

METRICS = ("dice", "ravd", "assd", "mssd", "hd95", "slice_dice_mean", "volume_pred_ml", "volume_gt_ml")
# report_methods.ood_signal's fields in the CSV (empty for methods without the signal)
OOD_COLUMNS = ("recon_mse_mean", "recon_mse_median", "recon_mse_max", "structure_error_mean",
               "structure_error_median", "structure_error_max", "objective_mean", "ood_signal", "ood_score",
               "ood_threshold", "out_of_domain")
# The signals the "Out-of-domain signal" section compares (medsemgan.inference.ood): CSV column, title.
OOD_SIGNAL_COLUMNS = {"structure": ("structure_error_mean", "structural error (encoder's w+)"),
                      "mse": ("recon_mse_mean", "recon MSE (returned w+)")}
CSV_COLUMNS = ("test_set", "case", "modality", "method", "method_name", "budget", "status", *METRICS,
               *OOD_COLUMNS, "seconds", "cached", "prediction", "error")
IN_DOMAIN, OUT_OF_DOMAIN = "CT", "MR"  # the generator is trained on CT
# infinite when a mask is empty: means over the finite cases, the others counted (statistics.describe)
DISTANCE_METRICS = ("ravd", "assd", "mssd", "hd95")
OVERLAY_RESOLUTION = 192


# ============================================================================ running


def _spacing(image) -> tuple[float, ...]:
    affine = np.asarray(image.affine, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _case_fingerprint(study) -> dict:
    return {"image": str(study.image_path), "label": str(study.label_path), "modality": study.modality,
            "liver_value": study.liver_value, "label_kind": study.label_kind,
            "content": content_hashes([study.image_path, study.label_path])}


def _cache_file(out: Path, method: str, budget: str, test_set: str, case: str) -> Path:
    return out / "cache" / slug(method) / slug(budget) / slug(test_set) / f"{slug(case)}.json"


def prediction_file(out: Path, method: str, budget: str, case: str, test_set: str) -> Path:
    return out / "predictions" / slug(method) / slug(budget) / slug(test_set) / f"{slug(case)}.nii.gz"


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


# ============================================================================ summarising


def excluded_cases(cell: dict) -> int:
    """How many scored cases of a cell have a non-finite RAVD or surface distance (left out of
    those means)."""
    return max(cell[k]["n_excluded"] for k in DISTANCE_METRICS)


def summarise(config: ReportConfig, rows: list[dict], unavailable: dict) -> dict:
    """``cells[method][budget][test_set]`` = {status, reason, dice stats, other metric means}."""
    cells: dict = {}
    for method in config.methods:
        for budget in config.budgets:
            for ts in config.test_sets:
                reason = unavailable.get((method.key, budget.key))
                here = [r for r in rows if (r["method"], r["budget"], r["test_set"]) == (method.key, budget.key, ts.key)]
                ok = [r for r in here if r["status"] == "ok"]
                cell = {"available": reason is None, "reason": reason, "cases": len(here),
                        "ok": len(ok), "failed": len(here) - len(ok),
                        "dice": describe([r["dice"] for r in ok])}
                for metric in DISTANCE_METRICS:
                    cell[metric] = describe([r[metric] for r in ok])
                if method.kind == "semanticgan":
                    cell["ood"] = _ood_cell(ok)
                cells.setdefault(method.key, {}).setdefault(budget.key, {})[ts.key] = cell
    return {
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "config": config.source,
        "data_root": None if config.data_root is None else str(config.data_root),
        "test_sets": [{"key": t.key, "title": t.title, "modality": t.modality, "cases": [c.name for c in t.cases]}
                      for t in config.test_sets],
        "budgets": [{"key": b.key, "title": b.title} for b in config.budgets],
        "methods": [{"key": m.key, "name": m.name, "kind": m.kind, "options": m.options} for m in config.methods],
        "cells": cells,
        "ood_thresholds": _ood_suggestions(config, rows, unavailable),
    }


def _ood_cell(ok_rows: list[dict]) -> dict:
    measured = [r for r in ok_rows if r.get("ood_score") is not None]
    cell = {"cases": len(measured),
            "objective": describe([r["objective_mean"] for r in measured if r.get("objective_mean") is not None]),
            "flagged": sum(bool(r["out_of_domain"]) for r in measured),
            "signals": sorted({r["ood_signal"] for r in measured if r.get("ood_signal")}),
            "thresholds": sorted({r["ood_threshold"] for r in measured if r.get("ood_threshold") is not None})}
    for signal, (column, _) in OOD_SIGNAL_COLUMNS.items():
        cell[signal] = describe([r[column] for r in measured if r.get(column) is not None])
    return cell


def suggest_threshold(in_domain: list[float], out_of_domain: list[float]) -> dict:
    """A threshold for one out-of-domain signal from measured cases: the midpoint between the largest
    in-domain (CT) and the smallest out-of-domain (MRI) value when every CT case lies below every
    MRI case (``separates`` True); ``separates`` False and no threshold when they overlap (with
    how many cases lie on the wrong side of the other set's extreme); None when a side is empty."""
    ins = [float(v) for v in in_domain if v is not None and np.isfinite(v)]
    outs = [float(v) for v in out_of_domain if v is not None and np.isfinite(v)]
    result = {"in_domain_n": len(ins), "out_of_domain_n": len(outs),
              "in_domain_max": max(ins) if ins else None, "out_of_domain_min": min(outs) if outs else None,
              "separates": None, "threshold": None, "in_domain_above": None, "out_of_domain_below": None}
    if ins and outs:
        high, low = result["in_domain_max"], result["out_of_domain_min"]
        result["separates"] = high < low
        if result["separates"]:
            result["threshold"] = (high + low) / 2
        else:
            result["in_domain_above"] = sum(v >= low for v in ins)
            result["out_of_domain_below"] = sum(v <= high for v in outs)
    return result


def _ood_suggestions(config: ReportConfig, rows: list[dict], unavailable: dict) -> dict:
    """``[method][budget][signal]`` -> :func:`suggest_threshold` over every scored case of the CT
    test sets (in domain) and the MRI ones (out of domain), for the available SemanticGAN rows."""
    modality = {ts.key: ts.modality for ts in config.test_sets}
    out: dict = {}
    for method in config.methods:
        if method.kind != "semanticgan":
            continue
        for budget in config.budgets:
            if (method.key, budget.key) in unavailable:
                continue
            mine = [r for r in rows if (r["method"], r["budget"]) == (method.key, budget.key) and r["status"] == "ok"]
            for signal, (column, _) in OOD_SIGNAL_COLUMNS.items():
                values = {side: [r.get(column) for r in mine if modality[r["test_set"]] == side]
                          for side in (IN_DOMAIN, OUT_OF_DOMAIN)}
                out.setdefault(method.key, {}).setdefault(budget.key, {})[signal] = suggest_threshold(
                    values[IN_DOMAIN], values[OUT_OF_DOMAIN])
    return out


def _g(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _spread(stats: dict) -> str:
    if not stats["n"]:
        return "–"
    return _g(stats["mean"]) + ("" if stats["std"] is None else f" ± {_g(stats['std'])}") + \
        f" ({_g(stats['min'])}–{_g(stats['max'])})"


def _ood_section(config: ReportConfig, summary: dict) -> list[str]:
    """The "Out-of-domain signal" section: per SemanticGAN method x budget x test set, each
    signal's per-case means (mean ± std, range), the flags, and the suggested threshold per signal."""
    gans = [m for m in config.methods if m.kind == "semanticgan"]
    if not gans:
        return []
    cells = summary["cells"]
    lines = ["", "## Out-of-domain signal", "",
             "`medsemgan segment` flags a study as out of domain when the mean over its slices of the "
             "configured signal (`inference.ood_signal`, `medsemgan.inference.ood`) exceeds "
             "`inference.ood_threshold`. *Structural error*: the LNCC loss (contrast-blind) between each "
             "slice and the generator's image at the encoder's w+, before any optimisation, so the same "
             "in both modes. *Recon MSE*: the reconstruction MSE at the returned w+ (after test-time "
             "optimisation when the method runs it). Per case the mean over its slices; here the mean ± "
             "sample std (min–max) over the cases. \"Objective\": the range of the per-case mean "
             "inversion objective, for comparison.", ""]
    table = []
    for m, b, ts, cell in _available_cells(config, cells, gans):
        ood = cell["ood"]
        objective = ood["objective"]
        table.append([m.name, b.title, f"{ts.key} ({ts.modality})", str(ood["cases"]),
                      *(_spread(ood[signal]) for signal in OOD_SIGNAL_COLUMNS),
                      f"{_g(objective['min'])}–{_g(objective['max'])}" if objective["n"] else "–",
                      f"{ood['flagged']}/{ood['cases']}",
                      ", ".join(ood["signals"]) + " > " + (", ".join(_g(t) for t in ood["thresholds"]) or "–")])
    if not table:
        lines.append("No SemanticGAN method was available.")
        return lines
    lines += _md_table(["method", "budget", "test set", "cases",
                        *(title for _, title in OOD_SIGNAL_COLUMNS.values()),
                        "objective min–max", "flagged", "flagged when"], table)
    lines += ["", "Suggested thresholds (CT cases in domain, MRI cases out of domain: the midpoint between "
              "the largest CT and the smallest MRI value when they separate):", ""]
    for m in gans:
        for b in config.budgets:
            per_signal = summary["ood_thresholds"].get(m.key, {}).get(b.key)
            if per_signal is None:
                continue
            for signal, s in per_signal.items():
                where = f"- {m.name}, {b.title}, `{signal}`: "
                if s["separates"] is None:
                    lines.append(where + f"needs scored CT and MRI cases (have {s['in_domain_n']} CT, "
                                         f"{s['out_of_domain_n']} MRI).")
                elif s["separates"]:
                    lines.append(where + f"CT max {_g(s['in_domain_max'])} (n={s['in_domain_n']}) < MRI min "
                                         f"{_g(s['out_of_domain_min'])} (n={s['out_of_domain_n']}): suggested "
                                         f"`ood_threshold` {_g(s['threshold'])}.")
                else:
                    lines.append(where + f"CT and MRI overlap: CT max {_g(s['in_domain_max'])} >= MRI min "
                                         f"{_g(s['out_of_domain_min'])} ({s['in_domain_above']} of {s['in_domain_n']} "
                                         f"CT case(s) at or above the MRI minimum, {s['out_of_domain_below']} of "
                                         f"{s['out_of_domain_n']} MRI case(s) at or below the CT maximum): "
                                         "no threshold separates them.")
    lines += ["", "The report changes no configuration: to use a suggestion, set `inference.ood_signal` and "
              "`inference.ood_threshold` in the model YAML. A threshold belongs to one generator and encoder "
              "(and, for `mse`, to one mode: test-time optimisation lowers the error the encoder alone leaves)."]
    return lines


def _fmt_dice(stats: dict) -> str:
    if not stats["n"]:
        return "–"
    if stats["std"] is None:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def cell_text(cell: dict) -> str:
    if not cell["available"]:
        return cell["reason"]
    text = _fmt_dice(cell["dice"])
    if cell["failed"]:
        text += f" ({cell['failed']} failed)"
    return text


def excluded_text(cell: dict) -> str:
    """`` [k excluded from the distances]`` when some scored case had infinite distances."""
    k = excluded_cases(cell) if cell["available"] and cell["ok"] else 0
    return f" [{k} case(s) with infinite distances excluded from their means]" if k else ""


def _available_cells(config, cells: dict, methods):
    """(method, budget, test set, cell) for every cell of ``methods`` that has results, in table order."""
    for m in methods:
        for b in config.budgets:
            for ts in config.test_sets:
                cell = cells[m.key][b.key][ts.key]
                if cell["available"]:
                    yield m, b, ts, cell


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def _finite(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.3f}"


def render_markdown(config: ReportConfig, summary: dict, rows: list[dict], figures: dict, command: str) -> str:
    cells = summary["cells"]
    lines = ["# Cross-modality report: liver Dice, trained on CT, tested on CT and MRI", ""]
    lines += [f"Generated {summary['generated']} by `{command}`", "",
              f"- configuration: `{config.source}`",
              f"- data root: `{summary['data_root']}`"]
    for ts in config.test_sets:
        lines.append(f"- **{ts.title}** ({ts.modality}, `{ts.key}`): {len(ts.cases)} case(s): "
                     + ", ".join(c.name for c in ts.cases))
    lines += ["", "Per-volume (3-D) Dice, mean ± sample std over the cases of each test set "
              "(CHAOS definitions, `medsemgan.evaluation.metrics`).", ""]
    header = ["method"] + [f"{b.title}: {ts.key.upper()}" for b in config.budgets for ts in config.test_sets]
    table = [[m.name] + [cell_text(cells[m.key][b.key][ts.key]) for b in config.budgets for ts in config.test_sets]
             for m in config.methods]
    lines += _md_table(header, table)

    lines += ["", "## Details", ""]
    detail = []
    for m, b, ts, cell in _available_cells(config, cells, config.methods):
        d = cell["dice"]
        detail.append([m.name, b.title, ts.key, f"{cell['ok']}/{cell['cases']}", _fmt_dice(d),
                       _finite(d["median"]), f"{_finite(d['min'])}–{_finite(d['max'])}",
                       *(_finite(cell[k]["mean"]) for k in DISTANCE_METRICS), str(excluded_cases(cell))])
    if detail:
        lines += _md_table(["method", "budget", "test set", "scored", "Dice", "median", "min–max",
                            "RAVD %", "ASSD mm", "MSSD mm", "HD95 mm", "excluded"], detail)
        lines += ["", "RAVD and the surface distances are means over the cases where they are finite: a case "
                  "with an empty prediction (or ground truth) has infinite distances and is left out of "
                  "them; \"excluded\" counts those cases (their Dice is in the Dice columns)."]
    else:
        lines.append("No method was available.")
    lines += _ood_section(config, summary)

    for ts in config.test_sets:
        series = [(m, b) for m in config.methods for b in config.budgets if cells[m.key][b.key][ts.key]["available"]]
        lines += ["", f"## {ts.title}: Dice per case", ""]
        if series:
            by = {(r["method"], r["budget"], r["case"]): r for r in rows if r["test_set"] == ts.key}
            header = ["case"] + [f"{m.name} ({b.title})" for m, b in series]
            body = []
            for case in ts.cases:
                cells_row = []
                for m, b in series:
                    r = by.get((m.key, b.key, case.name))
                    cells_row.append("–" if r is None else ("failed" if r["status"] != "ok" else _finite(r["dice"])))
                body.append([case.name] + cells_row)
            lines += _md_table(header, body)
        else:
            lines.append("No method was available.")
        if ts.key in figures.get("bars", {}):
            lines += ["", f"![per-case Dice, {ts.title}]({figures['bars'][ts.key]})"]
        for (ts_key, m_key, b_key), path in figures.get("overlays", {}).items():
            if ts_key == ts.key:
                name = next(m.name for m in config.methods if m.key == m_key)
                title = next(b.title for b in config.budgets if b.key == b_key)
                lines += ["", f"{name}, {title}: best / median / worst case", "",
                          f"![overlays {name} {title} {ts.title}]({path})"]

    missing = [(m.name, b.title, cells[m.key][b.key][config.test_sets[0].key]["reason"])
               for m in config.methods for b in config.budgets
               if not cells[m.key][b.key][config.test_sets[0].key]["available"]]
    failed = [r for r in rows if r["status"] != "ok"]
    lines += ["", "## Not available and failed", ""]
    if not missing and not failed:
        lines.append("Every method ran on every case.")
    for name, title, reason in missing:
        lines.append(f"- {name}, {title}: {reason}")
    for r in failed:
        lines.append(f"- {r['method_name']}, budget {r['budget']}, {r['test_set']}/{r['case']}: failed: {r['error']}")
    lines += ["", "Files: `per_case.csv` (every metric per case; SemanticGAN rows also their reconstruction MSE), "
              "`summary.json` (this table as data), "
              "`predictions/` (masks on the input grid), `figures/`.", ""]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})


# ============================================================================ figures


def _display_slices(study, pred_path: Path, loaded: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image / ground truth / prediction of the slice with the most liver, in canonical
    orientation (``preprocess`` at ``OVERLAY_RESOLUTION``: window, body crop, resize)."""
    import nibabel as nib
    from monai.data import MetaTensor

    from medsemgan.data.transforms import preprocess

    loaded = loaded or study.load()
    image, label = loaded["image"], loaded["label"]
    pred = np.asarray(nib.load(str(pred_path)).dataobj).astype(np.float32)
    pred_t = MetaTensor(torch.from_numpy(pred)[None], affine=image.affine.clone())
    label_t = MetaTensor(label.as_tensor().float(), affine=image.affine.clone())
    data = preprocess(study.modality, OVERLAY_RESOLUTION, keys=("image", "label", "pred"))(
        {"image": image, "label": label_t, "pred": pred_t})
    img, gt, pr = (np.asarray(data[k][0]) for k in ("image", "label", "pred"))
    area = gt.reshape(-1, gt.shape[-1]).sum(0)
    if not area.any():
        area = pr.reshape(-1, pr.shape[-1]).sum(0)
    k = int(np.argmax(area))
    return img[..., k], gt[..., k] > 0.5, pr[..., k] > 0.5


def pick_cases(rows: list[dict]) -> list[tuple[str, dict]]:
    """Best, median and worst by Dice (fewer when there are fewer distinct cases)."""
    ok = sorted((r for r in rows if r["status"] == "ok" and np.isfinite(r["dice"])), key=lambda r: -r["dice"])
    if not ok:
        return []
    picks = [("best", ok[0]), ("median", ok[(len(ok) - 1) // 2]), ("worst", ok[-1])]
    seen, out = set(), []
    for tag, row in picks:
        if row["case"] not in seen:
            seen.add(row["case"])
            out.append((tag, row))
    return out


def make_figures(config: ReportConfig, rows: list[dict], out: Path, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from medsemgan.evaluation.report_figures import dice_bars, overlay_panel, overlay_strip, save_png

    figures: dict = {"bars": {}, "overlays": {}}
    for ts in config.test_sets:
        series = []
        for m in config.methods:
            for b in config.budgets:
                mine = {r["case"]: r for r in rows
                        if (r["method"], r["budget"], r["test_set"]) == (m.key, b.key, ts.key)}
                if not mine:
                    continue
                values = [mine[c.name]["dice"] if c.name in mine and mine[c.name]["status"] == "ok" else None
                          for c in ts.cases]
                series.append((f"{m.name} ({b.title})", values))
        if not series:
            continue
        path = save_png(dice_bars([c.name for c in ts.cases], series, f"Liver Dice per case: {ts.title}"),
                        out / "figures" / f"dice_{slug(ts.key)}.png")
        figures["bars"][ts.key] = str(path.relative_to(out))
    if not config.overlays:
        return figures
    wanted = []
    for ts in config.test_sets:
        for m in config.methods:
            for b in config.budgets:
                mine = [r for r in rows if (r["method"], r["budget"], r["test_set"]) == (m.key, b.key, ts.key)]
                picks = pick_cases(mine)
                if picks:
                    wanted.append((ts, m, b, picks))
    studies = {(ts.key, c.name): c for ts in config.test_sets for c in ts.cases}
    loaded_cache: dict = {}
    for ts, m, b, picks in tqdm(wanted, desc="overlays", unit="fig", disable=not progress or not wanted):
        panels = []
        for tag, row in picks:
            study = studies[(ts.key, row["case"])]
            try:
                key = (ts.key, study.name)
                if key not in loaded_cache:
                    loaded_cache.clear()  # keep one case in memory
                    loaded_cache[key] = study.load()
                img, gt, pr = _display_slices(study, Path(row["prediction"]), loaded_cache[key])
                panels.append(overlay_panel(img, gt, pr, f"{tag}: {study.name}  Dice {row['dice']:.3f}"))
            except Exception as err:  # noqa: BLE001 - a figure must not stop the report
                log.warning("overlay %s/%s/%s failed: %s", m.key, b.key, study.name, err)
        if panels:
            path = save_png(overlay_strip(panels, f"{m.name}, {b.title}, {ts.title}"),
                            out / "figures" / f"overlay_{slug(ts.key)}_{slug(m.key)}_{slug(b.key)}.png")
            figures["overlays"][(ts.key, m.key, b.key)] = str(path.relative_to(out))
    return figures


# ============================================================================ the report


def build_report(config: ReportConfig, progress: bool = True, command: str = "medsemgan report") -> dict:
    """Run everything, write the outputs; returns ``{summary, rows, paths}``."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    unavailable: dict = {}
    jobs: list[Job] = []
    for method in config.methods:
        for budget in config.budgets:
            runner = make_runner(method, budget.key, config.weights_root, config.device)
            if isinstance(runner, str):
                unavailable[(method.key, budget.key)] = runner
                log.warning("%s, %s: %s", method.name, budget.title, runner)
                continue
            jobs += [Job(ts, study, method, budget, runner) for ts in config.test_sets for study in ts.cases]
    rows = run_jobs(jobs, out, progress)
    order = {(ts.key, c.name): i for i, (ts, c) in enumerate((t, c) for t in config.test_sets for c in t.cases)}
    m_order = {m.key: i for i, m in enumerate(config.methods)}
    b_order = {b.key: i for i, b in enumerate(config.budgets)}
    rows.sort(key=lambda r: (m_order[r["method"]], b_order[r["budget"]], order[(r["test_set"], r["case"])]))
    summary = summarise(config, rows, unavailable)
    figures = make_figures(config, rows, out, progress)
    write_csv(rows, out / "per_case.csv")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(config, summary, rows, figures, command))
    return {"summary": summary, "rows": rows, "report": out / "report.md", "csv": out / "per_case.csv",
            "figures": figures}


def record_in_sidecars(config: ReportConfig, result: dict, command: str) -> list[Path]:
    """Write each U-Net's measured Dice into its weights' ``.json`` sidecar (key ``evaluation``).

    The sidecar's ``evaluation`` entry is not part of the cache fingerprint, so recording does
    not invalidate the cached results."""
    written = []
    for method in config.methods:
        if method.kind != "unet":
            continue
        for budget, weights in method.weights.items():
            side = weights.with_suffix(".json")
            cells = result["summary"]["cells"].get(method.key, {}).get(budget)
            if not side.is_file() or cells is None or not any(c["ok"] for c in cells.values()):
                continue
            record = {"date": result["summary"]["generated"], "command": command,
                      "metric": "per-volume liver Dice (medsemgan.evaluation.metrics)"}
            for ts in config.test_sets:
                rows = [r for r in result["rows"] if (r["method"], r["budget"], r["test_set"]) == (method.key, budget, ts.key)]
                stats = cells[ts.key]["dice"]
                record[ts.key] = {"title": ts.title, "n": stats["n"], "mean": stats["mean"], "std": stats["std"],
                                  "cases": {r["case"]: (round(r["dice"], 4) if r["status"] == "ok" else None) for r in rows}}
            data = json.loads(side.read_text())
            data["evaluation"] = record
            with atomic_path(side) as tmp:
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            written.append(side)
    return written


# ============================================================================ the verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="report configuration YAML (default: medsemgan/configs/report.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the configuration's out:)")
    parser.add_argument("--data", default=None,
                        help="data root for relative test-set paths (overrides data_root); or your own dataset "
                             "(MSD/nnU-Net folder, MONAI datalist JSON): its labeled cases replace the test sets")
    parser.add_argument("--label", default=None, help="with an own --data: the liver's value (default 1; several as 1,2)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (overrides device)")
    parser.add_argument("--methods", default=None, help="comma-separated method keys to run (default: all)")
    parser.add_argument("--no-overlays", action="store_true", help="skip the overlay figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 when other jobs share the cores)")
    parser.add_argument("--record-sidecars", action="store_true",
                        help="write each U-Net's measured Dice into its weights' .json sidecar")


def run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    raw = read_report_yaml(path)
    if args.data:
        from medsemgan.data.datalist import is_dataset, report_test_sets

        if is_dataset(args.data):  # own data: one test set per modality (datalist test sets, report_config)
            raw["test_sets"] = report_test_sets(args.data, getattr(args, "label", None))
        else:
            raw["data_root"] = args.data
    if args.device:
        raw["device"] = args.device
    if args.no_overlays:
        raw["overlays"] = False
    if args.methods:
        keep = [k.strip() for k in args.methods.split(",") if k.strip()]
        known = [m.get("key") for m in raw.get("methods") or []]
        unknown = sorted(set(keep) - set(known))
        if unknown:
            raise InputError(path, f"--methods {unknown} not in the configuration ({known})")
        raw["methods"] = [m for m in raw.get("methods") or [] if m.get("key") in keep]
    config = parse_config(raw, str(path), args.out)
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(None, f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    command = " ".join(["medsemgan report", f"--config {args.config}"]
                       + [f"--{flag} {value}" for flag, value in (("out", args.out), ("data", args.data),
                                                                   ("device", args.device), ("methods", args.methods),
                                                                   ("threads", args.threads))
                          if value]
                       + (["--no-overlays"] if args.no_overlays else []))
    result = build_report(config, progress=not args.no_progress, command=command)
    if args.record_sidecars:
        for side in record_in_sidecars(config, result, command):
            print(f"recorded the Dice in {side}")
    failed = [r for r in result["rows"] if r["status"] != "ok"]
    print(f"wrote {result['report']} ({len(result['rows']) - len(failed)} case result(s), {len(failed)} failed)")
    for m in config.methods:
        for b in config.budgets:
            cells = [f"{ts.key}: {cell_text(cell)}{excluded_text(cell)}"
                     for ts in config.test_sets for cell in [result['summary']['cells'][m.key][b.key][ts.key]]]
            print(f"  {m.name} [{b.title}]  " + "  ".join(cells))
    return 1 if failed else 0

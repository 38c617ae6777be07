"""``medsemgan report``'s statistics: per method x budget x test set the Dice and distance
statistics (``medsemgan.evaluation.statistics.describe``, the same as ``medsemgan evaluate``), the
out-of-domain signal per SemanticGAN cell, and a suggested threshold per signal
(``medsemgan.inference.ood.suggest_threshold``) from the test sets' modalities: CT test sets are in
domain, MR ones out of domain, whatever cases the configuration lists for them."""

from __future__ import annotations

import datetime as _dt

from medsemgan.evaluation.report_config import ReportConfig
from medsemgan.evaluation.statistics import describe
from medsemgan.inference.ood import suggest_threshold

OOD_SIGNAL_COLUMNS = {"structure": ("structure_error_mean", "structural error (encoder's w+)"),
                      "mse": ("recon_mse_mean", "recon MSE (returned w+)")}
IN_DOMAIN, OUT_OF_DOMAIN = "CT", "MR"  # the generator is trained on CT
DISTANCE_METRICS = ("ravd", "assd", "mssd", "hd95")


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

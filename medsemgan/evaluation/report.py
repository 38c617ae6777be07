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

The work is split by job: ``report_config`` (the YAML: test sets, budgets, methods; the CT cases
are whatever the configuration's CT test sets list), ``report_methods`` (one runner per method and
budget), ``report_jobs`` (jobs, the per-case cache, the CSV), ``report_summary`` (statistics and
threshold suggestions, ``medsemgan.inference.ood.suggest_threshold``), ``report_markdown``
(``report.md``, one number formatter), ``report_figures`` (bars and overlays); this module runs
them (:func:`build_report`), records U-Net Dice in sidecars and is the command line.

A method/budget whose weights do not exist is reported as "not available (missing FILE)"; a case
that fails is recorded with its error and the others go on (exit status 1 then). Every path is
configurable (``medsemgan/configs/report.yaml``); relative test-set paths resolve against
``data_root`` (default: ``medsemgan.paths.data_root()``), relative weight paths against
``weights_root`` (default: the repository root).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from medsemgan.errors import InputError
from medsemgan.evaluation.report_config import (  # noqa: F401  (parse_config etc. re-exported)
    DEFAULT_CONFIG,
    POSTPROCESSED,
    Budget,
    Method,
    ReportConfig,
    TestSet,
    slug,
    load_report_config,
    parse_config,
    read_report_yaml,
)
from medsemgan.evaluation.report_figures import make_figures, pick_cases  # noqa: F401  (re-exported)
from medsemgan.evaluation.report_jobs import (  # noqa: F401  (re-exported)
    CSV_COLUMNS, METRICS, OOD_COLUMNS, Job, prediction_file, run_jobs, write_csv)
from medsemgan.evaluation.report_markdown import cell_text, excluded_text, fmt, render_markdown  # noqa: F401
from medsemgan.evaluation.report_methods import Runner, make_runner, postprocessed_runner
from medsemgan.evaluation.report_summary import (  # noqa: F401  (re-exported)
    DISTANCE_METRICS, IN_DOMAIN, OOD_SIGNAL_COLUMNS, OUT_OF_DOMAIN, excluded_cases, summarise)
from medsemgan.inference.ood import suggest_threshold  # noqa: F401  (re-exported)
from medsemgan.io_utils import atomic_path
from medsemgan.runtime import restores_torch_threads

log = logging.getLogger(__name__)


def build_report(config: ReportConfig, progress: bool = True, command: str = "medsemgan report") -> dict:
    """Run everything, write the outputs; returns ``{summary, rows, paths}``."""
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    unavailable: dict = {}
    jobs: list[Job] = []
    runners: dict[tuple[str, str], Runner] = {}
    for method in config.methods:
        for budget in config.budgets:
            if method.kind == POSTPROCESSED:  # after its source method, so its masks exist
                runner = postprocessed_runner(method, runners.get((method.options["source"], budget.key)), out)
            else:
                runner = make_runner(method, budget.key, config.weights_root, config.device)
            if not isinstance(runner, str):
                runners[(method.key, budget.key)] = runner
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



@restores_torch_threads
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

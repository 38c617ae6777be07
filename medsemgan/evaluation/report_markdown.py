"""``medsemgan report``'s ``report.md``: the Dice table, the details (with the count of cases
whose infinite distances are left out of the means), the out-of-domain section, Dice per case, the
figures and what was not available or failed. Every number goes through :func:`fmt`."""

from __future__ import annotations

import numpy as np

from medsemgan.evaluation.report_config import ReportConfig
from medsemgan.evaluation.report_summary import DISTANCE_METRICS, OOD_SIGNAL_COLUMNS, excluded_cases


def fmt(value, digits: int = 3, significant: bool = False) -> str:
    """The report's one number formatter: ``–`` for a missing or non-finite value, else ``digits``
    decimals (``significant``: ``digits`` significant figures)."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}g}" if significant else f"{value:.{digits}f}"


def _spread(stats: dict) -> str:
    if not stats["n"]:
        return "–"
    return fmt(stats["mean"], 4, significant=True) + ("" if stats["std"] is None else f" ± {fmt(stats['std'], 4, significant=True)}") + \
        f" ({fmt(stats['min'], 4, significant=True)}–{fmt(stats['max'], 4, significant=True)})"



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
                      f"{fmt(objective['min'], 4, significant=True)}–{fmt(objective['max'], 4, significant=True)}" if objective["n"] else "–",
                      f"{ood['flagged']}/{ood['cases']}",
                      ", ".join(ood["signals"]) + " > " + (", ".join(fmt(t, 4, significant=True) for t in ood["thresholds"]) or "–")])
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
                    lines.append(where + f"CT max {fmt(s['in_domain_max'], 4, significant=True)} (n={s['in_domain_n']}) < MRI min "
                                         f"{fmt(s['out_of_domain_min'], 4, significant=True)} (n={s['out_of_domain_n']}): suggested "
                                         f"`ood_threshold` {fmt(s['threshold'], 4, significant=True)}.")
                else:
                    lines.append(where + f"CT and MRI overlap: CT max {fmt(s['in_domain_max'], 4, significant=True)} >= MRI min "
                                         f"{fmt(s['out_of_domain_min'], 4, significant=True)} ({s['in_domain_above']} of {s['in_domain_n']} "
                                         f"CT case(s) at or above the MRI minimum, {s['out_of_domain_below']} of "
                                         f"{s['out_of_domain_n']} MRI case(s) at or below the CT maximum): "
                                         "no threshold separates them" + _ct_safe_text(s) + ".")
    lines += ["", "The report changes no configuration: to use a suggestion, set `inference.ood_signal` and "
              "`inference.ood_threshold` in the model YAML. A threshold belongs to one generator and encoder "
              "(and, for `mse`, to one mode: test-time optimisation lowers the error the encoder alone leaves)."]
    return lines



def _ct_safe_text(s: dict) -> str:
    if s.get("ct_safe_threshold") is None:
        return "; every MRI case lies at or below the CT maximum"
    return (f"; flagging no CT case, `ood_threshold` {fmt(s['ct_safe_threshold'], 4, significant=True)} "
            f"still flags {s['out_of_domain_flagged']} of {s['out_of_domain_n']} MRI case(s)")


def dice_text(stats: dict) -> str:
    """``mean ± std`` (3 decimals), ``mean`` alone for one case, ``–`` for none."""
    if not stats["n"]:
        return "–"
    return fmt(stats["mean"]) + ("" if stats["std"] is None else f" ± {fmt(stats['std'])}")



def cell_text(cell: dict) -> str:
    if not cell["available"]:
        return cell["reason"]
    text = dice_text(cell["dice"])
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
        detail.append([m.name, b.title, ts.key, f"{cell['ok']}/{cell['cases']}", dice_text(d),
                       fmt(d["median"]), f"{fmt(d['min'])}–{fmt(d['max'])}",
                       *(fmt(cell[k]["mean"]) for k in DISTANCE_METRICS), str(excluded_cases(cell))])
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
                    cells_row.append("–" if r is None else ("failed" if r["status"] != "ok" else fmt(r["dice"])))
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

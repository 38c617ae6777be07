"""``medsemgan report`` end to end on tiny synthetic CT/MRI cases (no real data, no trained GAN)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsemgan.errors import InputError
from medsemgan.evaluation.report import build_report, parse_config, pick_cases, record_in_sidecars

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import tiny_unet_config, write_case  # noqa: E402


SHIPPED_PHANTOM_DICE = {"enc": 0.662, "tto": 0.652}  # the shipped bundle on phantom c0 (2026-12-07)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two CT and two MRI phantom cases, a 2-step U-Net, and 'perfect' masks (the labels)."""
    from medsemgan.training.unet import train_unet

    root = tmp_path_factory.mktemp("report")
    for i in range(2):
        write_case(root / "data" / "ct", f"c{i}", "CT", seed=i)
        write_case(root / "data" / "mr", f"m{i}", "MR", seed=10 + i, label_value=1)
    perfect = root / "weights" / "perfect"
    perfect.mkdir(parents=True)
    for label in sorted((root / "data").glob("*/label_*.nii.gz")):
        shutil.copy(label, perfect / label.name.replace("label_", ""))
    summary = train_unet(tiny_unet_config(), root / "weights" / "unet_run")
    assert summary["finished"]
    return root


def raw_config(root: Path) -> dict:
    pattern = {"label_from_image": ["image_", "label_"], "liver_value": 1}
    return {
        "data_root": str(root / "data"),
        "weights_root": str(root / "weights"),
        "test_sets": [
            {"key": "ct", "title": "CT phantoms", "modality": "CT", "pattern": {"images": "ct/image_*.nii.gz", **pattern}},
            {"key": "mri", "title": "MRI phantoms", "modality": "MR", "pattern": {"images": "mr/image_*.nii.gz", **pattern}},
        ],
        "budgets": [{"key": "all", "title": "all slices"}, {"key": "8", "title": "8 slices"}],
        "methods": [
            {"key": "gan", "name": "SemanticGAN (TTO)", "kind": "semanticgan",
             "weights": {"all": {"generator": "gan/generator_all.pt", "encoder": "gan/encoder_all.pt"}}},
            {"key": "unet", "name": "U-Net baseline", "kind": "unet",
             "weights": {"all": "unet_run/unet.pt", "8": "unet_run/unet_8_missing.pt"}},
            {"key": "perfect", "name": "Reference masks", "kind": "masks", "weights": {"all": "perfect", "8": "perfect"}},
        ],
    }


def dice_from_files(prediction: str, root: Path, row: dict) -> float:
    """Dice of a written prediction against the phantom case's label file (numpy, no medsemgan)."""
    folder = "ct" if row["test_set"] == "ct" else "mr"
    pred = np.asarray(nib.load(prediction).dataobj) > 0
    label = np.asarray(nib.load(str(root / "data" / folder / f"label_{row['case']}.nii.gz")).dataobj) > 0
    return float(2 * (pred & label).sum() / (pred.sum() + label.sum()))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_end_to_end(workspace, tmp_path):
    out = tmp_path / "report"
    result = build_report(parse_config(raw_config(workspace), "test", out), progress=False)
    text = (out / "report.md").read_text()
    # every row is in the table; missing weights are reported, not dropped or faked
    table = [line for line in text.splitlines() if line.startswith("| ")]
    for name in ("SemanticGAN (TTO)", "U-Net baseline", "Reference masks"):
        assert any(line.startswith(f"| {name} |") for line in table), name
    gan_row = next(line for line in table if line.startswith("| SemanticGAN (TTO) |"))
    assert "not available (missing gan/generator_all.pt, gan/encoder_all.pt)" in gan_row
    assert "not available (no weights configured for this budget)" in gan_row
    unet_row = next(line for line in table if line.startswith("| U-Net baseline |"))
    assert "not available (missing unet_run/unet_8_missing.pt)" in unet_row
    # the reference masks are the labels themselves: Dice exactly 1 everywhere
    perfect_row = next(line for line in table if line.startswith("| Reference masks |"))
    assert perfect_row.count("1.000 ± 0.000") == 4

    rows = read_csv(out / "per_case.csv")
    # unet at 'all' + perfect at both budgets, on 4 cases each
    assert len(rows) == 3 * 4
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["case"] for r in rows} == {"c0", "c1", "m0", "m1"}
    perfect = [r for r in rows if r["method"] == "perfect"]
    assert all(float(r["dice"]) == 1.0 and float(r["assd"]) == 0.0 for r in perfect)
    unet = [r for r in rows if r["method"] == "unet"]
    for r in unet:  # each row's Dice is its written prediction's against the case's label
        assert float(r["dice"]) == pytest.approx(dice_from_files(r["prediction"], workspace, r), abs=1e-9)

    # predictions lie on the input grid
    for r in unet:
        image = nib.load(str(workspace / "data" / ("ct" if r["test_set"] == "ct" else "mr") / f"image_{r['case']}.nii.gz"))
        pred = nib.load(r["prediction"])
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}

    # figures: bars per test set, overlays per available (method, budget, test set)
    for ts in ("ct", "mri"):
        bars = out / "figures" / f"dice_{ts}.png"
        assert Image.open(bars).size[0] > 100
        assert f"figures/dice_{ts}.png" in text
    overlays = sorted(p.name for p in (out / "figures").glob("overlay_*.png"))
    assert overlays == sorted(f"overlay_{ts}_{m}_{b}.png" for ts in ("ct", "mri")
                              for m, b in (("unet", "all"), ("perfect", "all"), ("perfect", "8")))
    assert result["summary"]["cells"]["unet"]["all"]["mri"]["dice"]["n"] == 2


def test_rerun_uses_cache_and_adding_a_method_computes_only_it(workspace, tmp_path, monkeypatch):
    from medsemgan.evaluation import report_jobs as report_module

    # a fixed code fingerprint: the source files may change while the test runs (shared checkout)
    monkeypatch.setattr(report_module, "code_fingerprint", lambda parts: "fixed")
    out = tmp_path / "report"
    raw = raw_config(workspace)
    raw["overlays"] = False
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "perfect"]
    first = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
    assert {r["cached"] for r in first} == {"False"}
    raw["methods"] = raw_config(workspace)["methods"]
    second = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
    cached = {(r["method"], r["cached"]) for r in second}
    assert cached == {("perfect", "True"), ("unet", "False")}
    # touching the weights file (same bytes) keeps its cached results; changing its bytes does not
    weights = workspace / "weights" / "unet_run" / "unet.pt"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
    assert {r["cached"] for r in touched} == {"True"}
    original = weights.read_bytes()
    state = torch.load(weights, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.001
    torch.save(state, weights)
    try:
        third = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
    finally:
        weights.write_bytes(original)
    assert {(r["method"], r["cached"]) for r in third} == {("perfect", "True"), ("unet", "False")}
    result = build_report(parse_config(raw, "test", out), progress=False)  # the original weights again
    third = read_csv_after(result)
    # recording the measured Dice in the U-Net's sidecar keeps the cache valid
    (side,) = record_in_sidecars(parse_config(raw, "test", out), result, "medsemgan report (test)")
    recorded = json.loads(side.read_text())["evaluation"]
    unet_ct = {r["case"]: float(r["dice"]) for r in third if r["method"] == "unet" and r["test_set"] == "ct"}
    assert recorded["ct"]["cases"] == pytest.approx(unet_ct, abs=1e-4)
    assert recorded["mri"]["n"] == 2 and recorded["command"] == "medsemgan report (test)"
    fourth = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
    assert {r["cached"] for r in fourth} == {"True"}


def test_code_or_case_change_recomputes_and_nothing_else_does(workspace, tmp_path, monkeypatch):
    """The cache is keyed on the code that computes a case and on the case's bytes (issue 18)."""
    from medsemgan.evaluation import report_jobs as report_module

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    raw = raw_config(workspace)
    raw.update(data_root=str(data), overlays=False)
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "perfect"]
    out = tmp_path / "report"

    def rerun() -> set:
        rows = read_csv_after(build_report(parse_config(raw, "test", out), progress=False))
        return {(r["test_set"], r["case"]) for r in rows if r["cached"] == "False"}

    everything = {("ct", "c0"), ("ct", "c1"), ("mri", "m0"), ("mri", "m1")}
    monkeypatch.setattr(report_module, "code_fingerprint", lambda parts: "code A")
    assert rerun() == everything
    assert rerun() == set()
    # one case's image rewritten with other bytes (same name): that case only
    image = data / "ct" / "image_c0.nii.gz"
    volume = nib.load(str(image))
    changed = np.asarray(volume.dataobj).copy()
    changed[0, 0, 0] += 7
    nib.save(nib.Nifti1Image(changed, volume.affine, volume.header), str(image))
    assert rerun() == {("ct", "c0")}
    # another fingerprint of the code that computes a case: everything
    monkeypatch.setattr(report_module, "code_fingerprint", lambda parts: "code B")
    assert rerun() == everything
    assert rerun() == set()


def test_code_fingerprint_follows_the_source_files(tmp_path):
    from medsemgan.fingerprint import code_fingerprint

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "a.py").write_text("x = 1\n")
    (package / "sub" / "notes.txt").write_text("not code\n")
    before = code_fingerprint(["sub", "b.py"], root=package)
    (package / "sub" / "notes.txt").write_text("still not code\n")
    assert code_fingerprint(["sub", "b.py"], root=package) == before
    (package / "sub" / "a.py").write_text("x = 22\n")
    after = code_fingerprint(["sub", "b.py"], root=package)
    (package / "b.py").write_text("")
    assert len({before, after, code_fingerprint(["sub", "b.py"], root=package)}) == 3


def read_csv_after(result: dict) -> list[dict]:
    return read_csv(result["csv"])


def test_failing_case_does_not_stop_the_report(workspace, tmp_path):
    raw = raw_config(workspace)
    raw["overlays"] = False
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "perfect"]
    raw["test_sets"][0] = {"key": "ct", "modality": "CT", "cases": [
        {"name": "c0", "image": "ct/image_c0.nii.gz", "label": "ct/label_c0.nii.gz"},
        {"name": "broken", "image": "ct/does_not_exist.nii.gz", "label": "ct/label_c1.nii.gz"},
    ]}
    result = build_report(parse_config(raw, "test", tmp_path / "r"), progress=False)
    rows = read_csv(result["csv"])
    broken = [r for r in rows if r["case"] == "broken"]
    assert len(broken) == 2 and {r["status"] for r in broken} == {"failed"}
    assert all("does_not_exist.nii.gz" in r["error"] for r in broken)
    assert {r["status"] for r in rows if r["case"] != "broken"} == {"ok"}
    text = result["report"].read_text()
    assert "(1 failed)" in text and "does_not_exist.nii.gz" in text


def test_cli_report_verb(workspace, tmp_path):
    import yaml

    from medsemgan.cli import main

    raw = raw_config(workspace)
    raw["overlays"] = False
    config = tmp_path / "report.yaml"
    config.write_text(yaml.safe_dump(raw))
    code = main(["report", "--config", str(config), "--out", str(tmp_path / "cli"), "--methods", "gan,perfect",
                 "--no-progress"])
    assert code == 0
    text = (tmp_path / "cli" / "report.md").read_text()
    assert "Reference masks" in text and "U-Net baseline" not in text
    assert main(["report", "--config", str(tmp_path / "nope.yaml")]) == 2


@pytest.mark.parametrize("change, problem", [
    (lambda raw: raw["methods"][0].update(kind="deeplab"), "kind must be one of"),
    (lambda raw: raw.update(budgets=[]), "budgets: needs at least one"),
    (lambda raw: raw["methods"][1]["weights"].update({"118": "x.pt"}), "weights for unknown budgets ['118']"),
    (lambda raw: raw["test_sets"][1]["pattern"].update(images="mr/nothing_*.nii.gz"), "no file matches"),
    (lambda raw: raw.update(colour="red"), "unknown keys ['colour']"),
])
def test_config_errors_name_the_problem(workspace, change, problem):
    raw = raw_config(workspace)
    change(raw)
    with pytest.raises(InputError, match=problem.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_config(raw, "my_report.yaml")


def test_pick_cases_best_median_worst():
    rows = [{"case": c, "status": "ok", "dice": d} for c, d in
            [("a", 0.5), ("b", 0.9), ("c", 0.1), ("d", 0.7), ("e", float("nan"))]]
    rows.append({"case": "f", "status": "failed", "dice": float("nan")})
    picks = pick_cases(rows)
    assert [(tag, row["case"]) for tag, row in picks] == [("best", "b"), ("median", "d"), ("worst", "c")]
    assert [t for t, _ in pick_cases(rows[:1])] == ["best"]  # one case: one panel


def test_semanticgan_rows_run_with_the_shipped_bundle(workspace, tmp_path):
    """Both SemanticGAN rows through the real generator/encoder of the bundle (one phantom case)."""
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    models = DEFAULT_BUNDLE_DIR / "models"
    if not (models / "generator.pt").is_file():
        pytest.fail(f"{models / 'generator.pt'} is missing: the bundle ships its weights")
    weights = {"all": {"generator": str(models / "generator.pt"), "encoder": str(models / "encoder.pt")}}
    raw = {
        "data_root": str(workspace / "data"), "overlays": False,
        "test_sets": [{"key": "ct", "modality": "CT", "cases": [
            {"name": "c0", "image": "ct/image_c0.nii.gz", "label": "ct/label_c0.nii.gz"}]}],
        "budgets": [{"key": "all"}],
        "methods": [
            {"key": "tto", "kind": "semanticgan", "options": {"steps": 1, "seed": 0}, "weights": weights},
            {"key": "enc", "kind": "semanticgan", "options": {"encoder_only": True}, "weights": weights},
        ],
    }
    result = build_report(parse_config(raw, "test", tmp_path / "gan"), progress=False)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"tto", "enc"}
    for row in rows.values():
        assert row["status"] == "ok", row["error"]
        assert row["dice"] == pytest.approx(dice_from_files(row["prediction"], workspace, row), abs=1e-9)
        pred = nib.load(row["prediction"])
        assert pred.shape == (48, 40, 6)
    # the shipped 0.3.x weights on this phantom (seed 0, const noise: repeatable); a change of the
    # weights or of the inference path moves these and must be looked at
    assert rows["enc"]["dice"] == pytest.approx(SHIPPED_PHANTOM_DICE["enc"], abs=0.01)
    assert rows["tto"]["dice"] == pytest.approx(SHIPPED_PHANTOM_DICE["tto"], abs=0.01)


# ---------------------------------------------------------------------------- out-of-domain signal


def test_suggest_threshold_midpoint_when_ct_and_mri_separate():
    from medsemgan.evaluation.report import suggest_threshold

    s = suggest_threshold([0.010, 0.020, float("nan")], [0.050, 0.040, 0.090])
    assert s["separates"] is True
    assert s["threshold"] == pytest.approx(0.030)
    assert (s["in_domain_max"], s["out_of_domain_min"]) == (0.020, 0.040)
    assert (s["in_domain_n"], s["out_of_domain_n"]) == (2, 3)  # the NaN is not a measurement


def test_suggest_threshold_overlap_gives_no_threshold_and_counts_the_crossings():
    from medsemgan.evaluation.report import suggest_threshold

    s = suggest_threshold([0.010, 0.060], [0.030, 0.050, 0.090])
    assert s["separates"] is False and s["threshold"] is None
    assert (s["in_domain_max"], s["out_of_domain_min"]) == (0.060, 0.030)
    assert s["in_domain_above"] == 1  # 0.060 >= 0.030
    assert s["out_of_domain_below"] == 2  # 0.030 and 0.050 <= 0.060
    # no CT case flagged: halfway from the CT maximum to the next MRI value; 0.090 still flagged
    assert s["ct_safe_threshold"] == pytest.approx(0.075)
    assert s["out_of_domain_flagged"] == 1
    none_above = suggest_threshold([0.10], [0.030, 0.050])
    assert none_above["separates"] is False and none_above["ct_safe_threshold"] is None
    # equal extremes do not separate either
    assert suggest_threshold([0.04], [0.04])["separates"] is False
    empty = suggest_threshold([0.01], [])
    assert empty["separates"] is None and empty["threshold"] is None


def _gan_row(test_set: str, case: str, budget: str, mse: float, flagged: bool) -> dict:
    from medsemgan.evaluation.report import METRICS

    structure = 0.5 + 5 * mse if test_set == "mri" else 0.5 + mse  # separates CT from MRI at both budgets
    row = {"test_set": test_set, "case": case, "modality": "CT" if test_set == "ct" else "MR", "method": "gan",
           "method_name": "SemanticGAN (TTO)", "budget": budget, "status": "ok", "seconds": 1.0, "cached": False,
           "prediction": "", "error": "", "recon_mse_mean": mse, "recon_mse_median": mse, "recon_mse_max": mse,
           "structure_error_mean": structure, "structure_error_median": structure, "structure_error_max": structure,
           "objective_mean": 10 * mse, "ood_signal": "mse", "ood_score": mse, "ood_threshold": 0.05,
           "out_of_domain": flagged}
    row.update({m: 0.5 for m in METRICS})
    return row


def test_ood_section_counts_and_suggestions_from_hand_made_rows(workspace):
    from medsemgan.evaluation.report import render_markdown, summarise

    raw = raw_config(workspace)
    raw["methods"] = [m for m in raw["methods"] if m["key"] in ("gan", "perfect")]
    raw["methods"][0]["weights"]["8"] = raw["methods"][0]["weights"]["all"]
    config = parse_config(raw, "test")
    rows = [_gan_row("ct", "c0", "all", 0.010, False), _gan_row("ct", "c1", "all", 0.020, False),
            _gan_row("mri", "m0", "all", 0.040, False), _gan_row("mri", "m1", "all", 0.090, True),
            # budget 8: CT and MRI overlap
            _gan_row("ct", "c0", "8", 0.070, True), _gan_row("ct", "c1", "8", 0.020, False),
            _gan_row("mri", "m0", "8", 0.060, True), _gan_row("mri", "m1", "8", 0.080, True)]
    summary = summarise(config, rows, {})
    assert summary["cells"]["gan"]["all"]["mri"]["ood"]["flagged"] == 1
    assert "ood" not in summary["cells"]["perfect"]["all"]["ct"]
    text = render_markdown(config, summary, rows, {}, "test")
    section = text.split("## Out-of-domain signal", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| SemanticGAN")]
    assert table == [
        "| SemanticGAN (TTO) | all slices | ct (CT) | 2 | 0.515 ± 0.007071 (0.51–0.52) | 0.015 ± 0.007071 (0.01–0.02) | 0.1–0.2 | 0/2 | mse > 0.05 |",
        "| SemanticGAN (TTO) | all slices | mri (MR) | 2 | 0.825 ± 0.1768 (0.7–0.95) | 0.065 ± 0.03536 (0.04–0.09) | 0.4–0.9 | 1/2 | mse > 0.05 |",
        "| SemanticGAN (TTO) | 8 slices | ct (CT) | 2 | 0.545 ± 0.03536 (0.52–0.57) | 0.045 ± 0.03536 (0.02–0.07) | 0.2–0.7 | 1/2 | mse > 0.05 |",
        "| SemanticGAN (TTO) | 8 slices | mri (MR) | 2 | 0.85 ± 0.07071 (0.8–0.9) | 0.07 ± 0.01414 (0.06–0.08) | 0.6–0.8 | 2/2 | mse > 0.05 |",
    ]
    assert ("- SemanticGAN (TTO), all slices, `mse`: CT max 0.02 (n=2) < MRI min 0.04 (n=2): "
            "suggested `ood_threshold` 0.03.") in section
    assert "- SemanticGAN (TTO), 8 slices, `mse`: CT and MRI overlap: CT max 0.07 >= MRI min 0.06" in section
    # the structural signal separates where the MSE does not
    assert ("- SemanticGAN (TTO), 8 slices, `structure`: CT max 0.57 (n=2) < MRI min 0.8 (n=2): "
            "suggested `ood_threshold` 0.685.") in section
    assert "1 of 2 CT case(s) at or above the MRI minimum, 1 of 2 MRI case(s) at or below the CT maximum" in section
    assert "flagging no CT case, `ood_threshold` 0.075 still flags 1 of 2 MRI case(s)." in section
    assert "Reference masks" not in section  # only SemanticGAN methods carry the signal


def test_infinite_distances_are_excluded_and_counted(workspace):
    """An empty prediction's infinite distances stay out of the means, and the report says how
    many cases that was (issue 18: they used to be dropped silently)."""
    from medsemgan.evaluation.report import excluded_text, render_markdown, summarise

    raw = raw_config(workspace)
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "gan"]
    config = parse_config(raw, "test")
    rows = [_gan_row("ct", "c0", "all", 0.01, False), _gan_row("ct", "c1", "all", 0.01, False),
            _gan_row("mri", "m0", "all", 0.01, False), _gan_row("mri", "m1", "all", 0.01, False)]
    rows[0].update(dice=0.0, ravd=-100.0, assd=float("inf"), mssd=float("inf"), hd95=float("inf"))
    rows[1].update(dice=0.9, assd=2.0)
    summary = summarise(config, rows, {})
    cell = summary["cells"]["gan"]["all"]["ct"]
    assert cell["dice"]["n"] == 2 and cell["dice"]["mean"] == pytest.approx(0.45)
    assert cell["assd"] == {"n": 1, "n_excluded": 1, "mean": 2.0, "median": 2.0, "std": None, "min": 2.0, "max": 2.0}
    assert cell["ravd"]["n_excluded"] == 0 and cell["ravd"]["mean"] == pytest.approx(-49.75)
    assert excluded_text(cell) == " [1 case(s) with infinite distances excluded from their means]"
    assert excluded_text(summary["cells"]["gan"]["all"]["mri"]) == ""
    text = render_markdown(config, summary, rows, {}, "test")
    details = text.split("## Details", 1)[1].split("\n## ", 1)[0]
    assert "| SemanticGAN (TTO) | all slices | ct | 2/2 | 0.450 ± 0.636 | 0.450 | 0.000–0.900 | -49.750 | 2.000 | 0.500 | 0.500 | 1 |" in details
    assert "| SemanticGAN (TTO) | all slices | mri | 2/2 | 0.500 ± 0.000 | 0.500 | 0.500–0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0 |" in details


def test_ood_section_says_when_no_semanticgan_method_ran(workspace, tmp_path):
    raw = raw_config(workspace)
    raw["overlays"] = False
    raw["methods"] = [m for m in raw["methods"] if m["key"] in ("gan", "perfect")]
    text = build_report(parse_config(raw, "test", tmp_path / "r"), progress=False)["report"].read_text()
    section = text.split("## Out-of-domain signal", 1)[1].split("\n## ", 1)[0]
    assert "No SemanticGAN method was available." in section
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "perfect"]
    text = build_report(parse_config(raw, "test", tmp_path / "r"), progress=False)["report"].read_text()
    assert "Out-of-domain signal" not in text


def test_reconstruction_error_in_csv_cache_and_report_with_the_shipped_bundle(workspace, tmp_path):
    """Encoder-only SemanticGAN (the shipped weights) and the U-Net on one CT and one MRI case:
    the GAN rows carry the reconstruction error and flag, the U-Net rows leave them empty; GAN
    cache entries from before the signal was recorded are recomputed, U-Net ones stay valid."""
    import yaml

    from medsemgan.evaluation.report import OOD_COLUMNS
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    models = DEFAULT_BUNDLE_DIR / "models"
    if not (models / "generator.pt").is_file():
        pytest.fail(f"{models / 'generator.pt'} is missing: the bundle ships its weights")
    inference = yaml.safe_load((DEFAULT_BUNDLE_DIR / "configs" / "model.yaml").read_text())["inference"]
    signal, threshold = inference["ood_signal"], inference["ood_threshold"]
    raw = raw_config(workspace)
    raw["overlays"] = False
    raw["budgets"] = [{"key": "all", "title": "all slices"}]
    raw["test_sets"] = [
        {"key": "ct", "modality": "CT", "cases": [{"name": "c0", "image": "ct/image_c0.nii.gz", "label": "ct/label_c0.nii.gz"}]},
        {"key": "mri", "modality": "MR", "cases": [{"name": "m0", "image": "mr/image_m0.nii.gz", "label": "mr/label_m0.nii.gz"}]},
    ]
    raw["methods"] = [
        {"key": "enc", "name": "SemanticGAN (encoder only)", "kind": "semanticgan", "options": {"encoder_only": True},
         "weights": {"all": {"generator": str(models / "generator.pt"), "encoder": str(models / "encoder.pt")}}},
        {"key": "unet", "name": "U-Net baseline", "kind": "unet", "weights": {"all": "unet_run/unet.pt"}},
    ]
    out = tmp_path / "r"
    result = build_report(parse_config(raw, "test", out), progress=False)
    rows = read_csv(result["csv"])
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for r in rows:
        if r["method"] == "unet":
            assert all(r[c] == "" for c in OOD_COLUMNS), r
            continue
        for name in ("recon_mse", "structure_error"):
            mean, median, peak = (float(r[f"{name}_{c}"]) for c in ("mean", "median", "max"))
            assert 0 < median <= peak + 1e-6 and 0 < mean <= peak + 1e-6
        assert r["ood_signal"] == signal == "structure"
        assert float(r["ood_score"]) == pytest.approx(float(r["structure_error_mean"]))
        assert float(r["ood_threshold"]) == pytest.approx(threshold)
        assert r["out_of_domain"] == str(float(r["ood_score"]) > threshold)
    gan_cache = sorted((out / "cache" / "enc").rglob("*.json"))
    unet_cache = sorted((out / "cache" / "unet").rglob("*.json"))
    assert len(gan_cache) == 2 and len(unet_cache) == 2
    entry = json.loads(gan_cache[0].read_text())
    assert len(entry["ood"]["recon_mse"]) == 6  # one value per model-space slice of the 6-slice phantom
    assert len(entry["ood"]["structure_error"]) == 6
    assert "ood" not in json.loads(unet_cache[0].read_text())

    text = result["report"].read_text()
    section = text.split("## Out-of-domain signal", 1)[1].split("\n## ", 1)[0]
    for ts in ("ct", "mri"):
        flagged = sum(r["out_of_domain"] == "True" for r in rows if r["method"] == "enc" and r["test_set"] == ts)
        line = next(x for x in section.splitlines() if x.startswith(f"| SemanticGAN (encoder only) | all slices | {ts} "))
        assert f"| {flagged}/1 |" in line
    assert "SemanticGAN (encoder only), all slices, `structure`: " in section and "U-Net" not in section

    # an entry written before the signal was recorded: GAN recomputed, U-Net still read from the cache
    for path in gan_cache + unet_cache:
        old = json.loads(path.read_text())
        old.pop("ood", None)
        path.write_text(json.dumps(old))
    again = read_csv(build_report(parse_config(raw, "test", out), progress=False)["csv"])
    assert {(r["method"], r["cached"]) for r in again} == {("enc", "False"), ("unet", "True")}
    assert all(r["recon_mse_mean"] != "" for r in again if r["method"] == "enc")
    assert all("ood" in json.loads(p.read_text()) for p in gan_cache)


def test_a_per_modality_encoder_keys_only_its_own_cases(tmp_path):
    """Replacing the MR encoder invalidates the MR cases' cache, not the CT cases' (and the reverse)."""
    import os

    from medsemgan.evaluation.report_methods import make_runner

    for name in ("gen.pt", "enc.pt", "enc_mr.pt"):
        (tmp_path / name).write_bytes(b"x")
    raw = {"test_sets": [{"key": "ct", "title": "t", "modality": "CT", "cases": [
               {"name": "a", "image": str(tmp_path / "gen.pt"), "label": str(tmp_path / "gen.pt")}]}],
           "budgets": [{"key": "all", "title": "all"}],
           "methods": [{"key": "gan", "kind": "semanticgan", "weights": {"all": {
               "generator": str(tmp_path / "gen.pt"), "encoder": str(tmp_path / "enc.pt"),
               "encoder_mr": str(tmp_path / "enc_mr.pt"), "config": "cpu128"}}}]}
    method = parse_config(raw, "test").methods[0]
    assert method.weights["all"]["encoder_mr"] == tmp_path / "enc_mr.pt"
    before = make_runner(method, "all", tmp_path, "cpu")
    ct, mr = before.fingerprint_for("CT"), before.fingerprint_for("MR")
    assert ct != mr

    def touch(name, size):
        (tmp_path / name).write_bytes(b"y" * size)
        os.utime(tmp_path / name, (1e9 + size, 1e9 + size))

    touch("enc_mr.pt", 3)
    after = make_runner(method, "all", tmp_path, "cpu")
    assert after.fingerprint_for("CT") == ct and after.fingerprint_for("MR") != mr
    touch("enc.pt", 4)
    again = make_runner(method, "all", tmp_path, "cpu")
    assert again.fingerprint_for("CT") != ct and again.fingerprint_for("MR") == after.fingerprint_for("MR")
    raw["methods"][0]["weights"]["all"]["encoder_pet"] = "x.pt"
    with pytest.raises(InputError, match="unknown weight keys"):
        parse_config(raw, "test")


def test_one_number_formatter():
    from medsemgan.evaluation.report_markdown import dice_text, fmt

    assert [fmt(None), fmt(float("inf")), fmt(float("nan")), fmt(0.12345), fmt(-49.75)] == \
        ["–", "–", "–", "0.123", "-49.750"]
    assert fmt(0.0123456, 4, significant=True) == "0.01235" and fmt(12345.6, 4, significant=True) == "1.235e+04"
    assert dice_text({"n": 2, "mean": 0.5, "std": 0.25}) == "0.500 ± 0.250"
    assert dice_text({"n": 1, "mean": 0.5, "std": None}) == "0.500"
    assert dice_text({"n": 0, "mean": None, "std": None}) == "–"


def test_every_ct_test_set_of_the_configuration_is_in_domain(workspace):
    """The CT side of the threshold suggestion is every CT test set the YAML lists (a CT dev set
    added next to the CT test set counts), the MR side every MR one."""
    from medsemgan.evaluation.report_summary import summarise

    raw = raw_config(workspace)
    raw["methods"] = [m for m in raw["methods"] if m["key"] == "gan"]
    raw["test_sets"].append(dict(raw["test_sets"][0], key="ct_dev", title="CT dev"))
    config = parse_config(raw, "test")
    rows = [_gan_row("ct", "c0", "all", 0.01, False), _gan_row("mri", "m0", "all", 0.05, False),
            dict(_gan_row("ct", "c1", "all", 0.03, False), test_set="ct_dev")]
    suggestion = summarise(config, rows, {})["ood_thresholds"]["gan"]["all"]["mse"]
    assert (suggestion["in_domain_n"], suggestion["in_domain_max"]) == (2, 0.03)
    assert suggestion["threshold"] == pytest.approx(0.04)


def test_postprocess_rows_clean_each_methods_own_masks(workspace, tmp_path):
    """`postprocess: [largest_fill]` adds one derived row per method: its written masks cleaned,
    nothing segmented again, keyed on the source (new source masks recompute the row)."""
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for label in sorted((workspace / "data").glob("*/label_*.nii.gz")):
        img = nib.load(str(label))
        data = np.asarray(img.dataobj).astype(np.uint8)
        data[0:2, 0:2, 0:2] = 1  # a stray island in a corner, away from the organ
        nib.save(nib.Nifti1Image(data, img.affine), str(noisy / label.name.replace("label_", "")))
    raw = raw_config(workspace)
    raw["methods"] = [{"key": "noisy", "name": "Noisy masks", "kind": "masks", "weights": {"all": str(noisy)}}]
    raw["budgets"] = [{"key": "all", "title": "all"}]
    raw["postprocess"] = ["largest_fill"]
    out = tmp_path / "report"
    result = build_report(parse_config(raw, "test", out), progress=False)
    rows = {(r["method"], r["case"]): r for r in result["rows"]}
    assert {m for m, _ in rows} == {"noisy", "noisy+largest_fill"}
    for case in ("c0", "c1", "m0", "m1"):
        assert rows[("noisy", case)]["dice"] < 1.0
        assert rows[("noisy+largest_fill", case)]["dice"] == pytest.approx(1.0)
    text = (out / "report.md").read_text()
    assert any(line.startswith("| Noisy masks + largest + fill |") for line in text.splitlines())
    # cached on the second run; a change of the source's masks recomputes the derived rows
    again = build_report(parse_config(raw, "test", out), progress=False)
    assert all(r["cached"] for r in again["rows"])
    shutil.copy(noisy / "c0.nii.gz", noisy / "c1.nii.gz")  # c1's "prediction" is now c0's mask
    third = build_report(parse_config(raw, "test", out), progress=False)
    recomputed = {(r["method"], r["case"]) for r in third["rows"] if not r["cached"]}
    assert ("noisy", "c1") in recomputed and ("noisy+largest_fill", "c1") in recomputed


def test_unknown_postprocess_mode_is_refused(workspace):
    raw = raw_config(workspace)
    raw["postprocess"] = ["smooth"]
    with pytest.raises(InputError, match="postprocess"):
        parse_config(raw, "test")


def test_report_overlays_draw_with_the_shared_contour_module():
    """One contour drawing for segment --preview, the demo and the report (issue 17)."""
    from medsemgan.evaluation.report_figures import GT_RGB, PRED_RGB, overlay_panel
    from medsemgan.inference.overlay import contour

    gt = np.zeros((16, 16), bool)
    gt[4:12, 4:12] = True
    pred = np.zeros((16, 16), bool)
    pred[6:14, 6:14] = True
    panel = np.asarray(overlay_panel(np.zeros((16, 16)), gt, pred, "c", scale=1))[20:]  # below the caption
    gt_line, pred_line = contour(gt), contour(pred) & ~contour(gt)
    assert (panel[gt_line] == GT_RGB).all() and (panel[pred_line] == PRED_RGB).all()
    inside = gt & ~gt_line & ~contour(pred)
    assert (panel[inside] == panel[inside][0]).all() and tuple(panel[inside][0]) not in (GT_RGB, PRED_RGB)


def test_case_cache_key_covers_every_liver_value():
    """Own data may mark the liver with several values (--label 1,2): changing them must
    recompute a case, not serve the result scored against the old label."""
    from dataclasses import replace as dc_replace

    from medsemgan.data.datalist import DatalistStudy
    from medsemgan.evaluation.report_jobs import _case_fingerprint

    base = DatalistStudy(name="c0", source="datalist:x", modality="CT", liver_value=1, split="test",
                         image_path=Path("/nonexistent/c0.nii.gz"), label_path=None, extra={"liver_values": (1,)})
    both = dc_replace(base, extra={"liver_values": (1, 2)})
    assert _case_fingerprint(base) != _case_fingerprint(both)

"""evaluate.json: inference + per-case metrics, the same numbers as `medsemgan evaluate`."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from bundle_fixtures import BUNDLE_SRC, load_nifti, run_workflow


@pytest.fixture(scope="module")
def evaluation(tiny_bundle, labeled_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate_out")
    workflow, missing = run_workflow(tiny_bundle, "evaluate.json", "infer", dataset_dir=str(labeled_dir),
                                     output_dir=str(out), device="cpu", chaos_score=True)
    assert missing == [], f"evaluate.json lacks required properties: {missing}"
    workflow.run()
    workflow.finalize()
    return workflow, out


def _rows(path):
    with open(path, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_per_case_csv_and_summary(evaluation, labeled_dir):
    _, out = evaluation
    rows = _rows(out / "metrics.csv")
    assert sorted(rows) == ["case_1", "case_2"]
    for case, row in rows.items():
        mask, _ = load_nifti(out / f"{case}.nii.gz")
        label, _ = load_nifti(labeled_dir / "labels" / f"{case}_seg.nii.gz")
        expected = 2 * np.logical_and(mask > 0, label > 0).sum() / ((mask > 0).sum() + (label > 0).sum())
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-9)
        assert row["gt"].endswith(f"{case}_seg.nii.gz") and "chaos_score" in row
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows.values()]))


def test_same_numbers_as_medsemgan_evaluate(evaluation, labeled_dir, tmp_path):
    from medsemgan.cli import main

    _, out = evaluation
    preds = tmp_path / "preds"
    preds.mkdir()
    for case in ("case_1", "case_2"):
        (preds / f"{case}.nii.gz").symlink_to(out / f"{case}.nii.gz")
    assert main(["evaluate", "--pred", str(preds), "--gt", str(labeled_dir / "labels"),
                 "--out", str(tmp_path / "cli"), "--chaos-score"]) == 0
    bundle_rows, cli_rows = _rows(out / "metrics.csv"), _rows(tmp_path / "cli" / "metrics.csv")
    for case in bundle_rows:
        for metric in ("dice", "ravd", "assd", "mssd", "hd95", "slice_dice_mean", "chaos_score"):
            assert float(bundle_rows[case][metric]) == pytest.approx(float(cli_rows[case_key(cli_rows, case)][metric]),
                                                                     rel=1e-9, abs=1e-12), (case, metric)


def case_key(rows, case):
    # `medsemgan evaluate` names cases after the ground-truth files
    return next(name for name in rows if name.startswith(case))


def test_monai_key_metric_agrees_with_project_dice(evaluation):
    workflow, out = evaluation
    rows = _rows(out / "metrics.csv")
    mean_dice = np.mean([float(r["dice"]) for r in rows.values()])
    assert workflow.evaluator.state.metrics["val_mean_dice"] == pytest.approx(mean_dice, abs=1e-6)


def test_evaluate_runs_the_inference_chain_of_inference_json():
    """evaluate.json is standalone (users run it alone); guard against the copies drifting."""
    inference = json.loads((BUNDLE_SRC / "configs" / "inference.json").read_text())
    evaluate = json.loads((BUNDLE_SRC / "configs" / "evaluate.json").read_text())
    for key in ("network_def", "network", "inferer", "postprocessing", "dataloader", "torch_device"):
        assert evaluate[key] == inference[key], key
    assert evaluate["preprocessing"]["transforms"][1:] == inference["preprocessing"]["transforms"][1:]
    for key, value in inference["evaluator"].items():
        assert evaluate["evaluator"][key] == value, key
    for key in ("steps", "encoder_only", "batch_size", "seed", "modality", "device", "model_config", "postprocess",
                "save_prob", "series"):
        assert evaluate[key] == inference[key], key


def test_catalogue_mode_on_the_shared_data(shared_data):
    from medsemgan.bundle.evaluation import labeled_datalist

    items = labeled_datalist(shared_data)
    cases = {item["case"] for item in items}
    assert "chaos_ct_1" in cases and any(c.startswith("chaos_t2_") for c in cases)
    assert not cases & {"ircadb_1", "totalseg_ct"}  # training studies are never evaluated by default
    chosen = labeled_datalist(shared_data, "totalseg_mr")
    assert [i["case"] for i in chosen] == ["totalseg_mr"] and chosen[0]["study"] == "totalseg_mr"


def test_catalogue_study_evaluates(shared_data, tiny_bundle, tmp_path):
    workflow, missing = run_workflow(tiny_bundle, "evaluate.json", "infer", dataset_dir=str(shared_data),
                                     studies="totalseg_mr", output_dir=str(tmp_path), device="cpu", steps=0)
    assert missing == []
    workflow.run()
    rows = _rows(tmp_path / "metrics.csv")
    assert list(rows) == ["totalseg_mr"]
    # the recorded Dice is the one of the written mask against the study's manual label
    from medsemgan.data.catalogue import get_study

    mask, _ = load_nifti(tmp_path / "totalseg_mr.nii.gz")
    label = np.asarray(get_study(shared_data, "totalseg_mr").load()["label"][0]) > 0
    assert mask.shape == label.shape
    expected = 2 * np.logical_and(mask > 0, label).sum() / ((mask > 0).sum() + label.sum())
    assert float(rows["totalseg_mr"]["dice"]) == pytest.approx(expected, abs=1e-9)
    record = json.loads((tmp_path / "totalseg_mr.json").read_text())
    assert record["modality"] == "MR"  # from the catalogue, not guessed

"""The committed U-Net baseline weights, scored by the report on the real CT test patient."""

from __future__ import annotations

import json

import pytest

from medsemgan.evaluation.report import build_report, parse_config
from medsemgan.paths import BASELINES_DIR

WEIGHTS = BASELINES_DIR / "unet_baseline_all.pt"


def test_committed_unet_baseline_reaches_its_recorded_ct_dice(shared_data, tmp_path):
    if not WEIGHTS.is_file():
        pytest.fail(f"{WEIGHTS} is missing: the U-Net baseline weights are part of the repository")
    recorded = json.loads(WEIGHTS.with_suffix(".json").read_text())["evaluation"]["ct"]["cases"]["chaos_ct_1"]
    raw = {
        "data_root": str(shared_data),
        "overlays": False,
        "test_sets": [{"key": "ct", "modality": "CT", "studies": ["chaos_ct_1"]}],
        "budgets": [{"key": "all"}],
        "methods": [{"key": "unet", "kind": "unet", "weights": {"all": str(WEIGHTS)}}],
    }
    result = build_report(parse_config(raw, "test", tmp_path), progress=False)
    (row,) = result["rows"]
    assert row["status"] == "ok", row["error"]
    # Same weights, same data, same code: the recorded number comes back (CPU float noise only).
    assert row["dice"] == pytest.approx(recorded, abs=0.005)
    assert row["dice"] > 0.85

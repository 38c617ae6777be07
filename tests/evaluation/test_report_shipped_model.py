"""The bundle's shipped SemanticGAN weights, scored by the report on real test patients, give back
the numbers the model card states (encoder-only mode: seconds per study, so it runs by default)."""

from __future__ import annotations

import pytest

from medsemgan.evaluation.report import build_report, parse_config
from medsemgan.paths import DEFAULT_BUNDLE_DIR

MODELS = DEFAULT_BUNDLE_DIR / "models"
MODEL_CARD = DEFAULT_BUNDLE_DIR / "docs" / "README.md"
# From `medsemgan report` (runs/report/per_case.csv, "SemanticGAN, encoder only", budget all),
# as stated in the model card and docs/results.md.
RECORDED = {"chaos_ct_1": ("CT", 0.787), "chaos_t2_2": ("MR", 0.388)}


def test_shipped_encoder_only_dice_matches_the_model_card(shared_data, tmp_path):
    weights = {"generator": MODELS / "generator.pt", "encoder": MODELS / "encoder.pt",
               "encoder_mr": MODELS / "encoder_mr.pt"}
    for path in weights.values():
        if not path.is_file():
            pytest.fail(f"{path} is missing: the shipped weights are part of the repository")
    card = MODEL_CARD.read_text()
    assert f"| {RECORDED['chaos_ct_1'][1]:.3f} |" in card, "model card no longer states the CT encoder-only Dice"
    raw = {
        "data_root": str(shared_data),
        "overlays": False,
        "test_sets": [{"key": name, "modality": modality, "studies": [name]}
                      for name, (modality, _) in RECORDED.items()],
        "budgets": [{"key": "all"}],
        "methods": [{"key": "enc", "kind": "semanticgan", "options": {"encoder_only": True, "seed": 0},
                     "weights": {"all": {k: str(v) for k, v in weights.items()}}}],
    }
    result = build_report(parse_config(raw, "test", tmp_path), progress=False)
    by_case = {row["case"]: row for row in result["rows"]}
    for name, (_, recorded) in RECORDED.items():
        row = by_case[name]
        assert row["status"] == "ok", row["error"]
        # Same weights, data and code: the recorded number comes back (CPU float noise only).
        assert row["dice"] == pytest.approx(recorded, abs=0.005), name

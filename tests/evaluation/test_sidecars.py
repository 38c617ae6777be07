"""Every shipped U-Net weight file has the sidecar docs/results.md promises: the configuration, the
data, the training, and the Dice measured by `medsemgan report --record-sidecars` (`evaluation`)."""

from __future__ import annotations

import json

import pytest

from medsemgan.paths import REPO_DIR

SIDECARS = sorted((REPO_DIR / "baselines").glob("unet_*.json"))


def test_there_are_sidecars():
    assert {p.stem for p in SIDECARS} >= {f"unet_{kind}_{budget}" for kind in ("baseline", "shift")
                                          for budget in ("8", "20", "all")}


@pytest.mark.parametrize("side", SIDECARS, ids=lambda p: p.stem)
def test_sidecar_records_its_evaluation(side):
    data = json.loads(side.read_text())
    assert side.with_suffix(".pt").is_file()
    for key in ("architecture", "data", "training", "evaluation"):
        assert key in data, f"{side.name} has no '{key}' entry"
    evaluation = data["evaluation"]
    assert evaluation["command"].startswith("medsemgan report") and evaluation["metric"]
    for test_set in ("ct", "mri"):
        cases = evaluation[test_set]["cases"]
        assert evaluation[test_set]["n"] == len(cases) > 0
        assert evaluation[test_set]["mean"] == pytest.approx(sum(cases.values()) / len(cases), abs=1e-4)

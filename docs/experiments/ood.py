"""Calibration of the out-of-domain warning for the shipped weights (inference.md "Out-of-domain
warning"): per study, the mean over its slices of both signals at the encoder's w+ (encoder only,
K = 0, so ``recon_mse`` is the MSE at the encoder's w+; ``structure_error`` never depends on K),
each study through the encoder its modality uses. Needs the shared data; a few minutes on 2 cores.
A staged bundle (e.g. ship_0.4.0.sh's) is measured with ``MEDSEMGAN_BUNDLE=<its bundle folder>``."""
import time

import torch

from medsemgan.data.btcv import BTCV_DEV_PATIENTS
from medsemgan.data.catalogue import get_study
from medsemgan.inference.model import SegmentationModel
from medsemgan.inference.segment import SegmentOptions, segment_volume
from medsemgan.paths import data_root

GROUPS = {
    "training CT": ["ircadb_1", "totalseg_ct", "totalseg_ct_dicom"],
    "CT test": ["chaos_ct_1"],
    # other scanners (issue 16: calibrate on CT from several sources, not one study)
    "CT dev, BTCV": [f"btcv_{p}" for p in BTCV_DEV_PATIENTS],
    "CHAOS T2 (MR encoder)": [f"chaos_t2_{p}" for p in (2, 15, 21, 22, 31, 32, 36, 37, 38, 39)],
    "TotalSegmentator MR (not in the report)": ["totalseg_mr"],
}

if __name__ == "__main__":
    torch.set_num_threads(2)
    root = data_root()
    model = SegmentationModel.from_bundle()
    threshold = model.config.inference.get("ood_threshold")
    print(f"shipped setting: signal {model.config.inference.get('ood_signal')}, threshold {threshold}")
    for group, names in GROUPS.items():
        values = []
        for name in names:
            study = get_study(root, name)
            started = time.perf_counter()
            _, extras = segment_volume(study.load()["image"], model,
                                       SegmentOptions(encoder_only=True, modality=study.modality))
            values.append((extras["mean_structure_error"], extras["mean_recon_mse"]))
            print(f"  {name:<20} {study.modality}  structure {extras['mean_structure_error']:.3f}  "
                  f"mse {extras['mean_recon_mse']:.3f}  flagged {extras['out_of_domain']}  "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
        s = [v[0] for v in values]
        m = [v[1] for v in values]
        print(f"{group}: structure {min(s):.3f}-{max(s):.3f}, mse {min(m):.3f}-{max(m):.3f}", flush=True)

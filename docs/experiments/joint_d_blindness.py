"""Issue 16: does the 0.4.0 run's joint discriminator tell a right liver mask from a wrong one?

The label head's only teacher is the joint discriminator. This scores, with the run's current
D_joint (its checkpoint, no augmentation), real labeled CT slices (3D-IRCADb 1, the labeled budget)
paired with their true mask and with corrupted masks: mirrored left-right (liver on the wrong
side), shifted by 16 px, emptied, dilated by 6 px, and the true mask plus a disc on the heart's
side of the slice. A discriminator that teaches labels scores the true pairs clearly higher.
Printed: mean D_joint output (over patches and scales) per pairing, and the share of slices whose
corrupted pair scores below the true one. Forward passes only; about a minute on one thread.

Then the memorisation check: the same scores for **held-out** true pairs (the 30 BTCV pool slices
of ``dshift_ab/evaluate.py``, whose labels no network trains on) and for 64 of the run's own
generated pairs (EMA generator, fixed latents). A discriminator that has learned what a liver
looks like scores held-out true pairs like the labeled ones; one that has memorised its 129
labeled pairs scores them nearer the fakes, and then its gradient no longer teaches the label head.

    MEDSEMGAN_DATA=../shared/data python docs/experiments/joint_d_blindness.py ~/.cache/medsemgan/runs/gan_cpu128
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent / "dshift_ab"))
from evaluate import evidence_slices  # noqa: E402

from medsemgan.training.checkpoint import load_checkpoint
from medsemgan.training.run import build_networks, load_training_tensors


def corrupted(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    size = mask.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - size * 0.45) ** 2 + (xx - size * 0.6) ** 2) < (size * 0.1) ** 2).float()
    return {
        "true": mask,
        "mirrored": mask.flip(-1),
        "shifted_16px": torch.roll(mask, shifts=16, dims=-1),
        "empty": torch.zeros_like(mask),
        "dilated_6px": F.max_pool2d(mask, 13, stride=1, padding=6),
        "plus_disc": torch.clamp(mask + disc, 0, 1),
    }


def mean_scores(D_joint, image: torch.Tensor, mask_pm1: torch.Tensor) -> torch.Tensor:
    outputs = D_joint(image, mask_pm1)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return torch.stack([o.flatten(1).mean(1) for o in outputs]).mean(0)


def main(run: Path) -> None:
    torch.set_num_threads(1)
    state = load_checkpoint(run / "checkpoint.pt")
    config = json.loads(state["config"])
    G_ema, _, D_joint = build_networks(config)
    D_joint.load_state_dict(state["D_joint"])
    G_ema.load_state_dict(state["G_ema"])
    G_ema.eval()
    D_joint.eval()
    tensors = load_training_tensors(config, int(config["model"]["resolution"]))
    image, mask = tensors["labeled_image"], tensors["labeled_mask"]
    keep = mask.flatten(1).sum(1) > 0  # slices with liver
    image, mask = image[keep], mask[keep].float()
    scores = {}
    with torch.no_grad():
        for name, m in corrupted(mask).items():
            scores[name] = mean_scores(D_joint, image, m * 2 - 1)
        held = evidence_slices()
        held_scores = {name: mean_scores(D_joint, held["image"], m * 2 - 1) for name, m in corrupted(held["mask"]).items()}
        z = torch.randn(64, G_ema.z_dim, generator=torch.Generator().manual_seed(0))
        fake_image, fake_logits = G_ema(z, noise_mode="const")
        fake_score = mean_scores(D_joint, fake_image, (fake_logits[:, :1] > 0).float() * 2 - 1)
    print(f"{int(state['images_seen'])} images seen; {image.shape[0]} labeled slices with liver")
    for name, s in scores.items():
        below = float((s < scores["true"]).float().mean()) if name != "true" else float("nan")
        print(json.dumps({"pairing": name, "mean_score": round(float(s.mean()), 4),
                          "share_scored_below_true": round(below, 3)}))
    for name, s in held_scores.items():
        below = float((s < held_scores["true"]).float().mean()) if name != "true" else float("nan")
        print(json.dumps({"pairing": f"held_out_{name}", "mean_score": round(float(s.mean()), 4),
                          "share_scored_below_true": round(below, 3)}))
    print(json.dumps({"pairing": "generated", "mean_score": round(float(fake_score.mean()), 4)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]).expanduser())

"""Issue 16: does the generator's label head read the liver off its own features better when it is
taught directly by the labeled slices, rather than only through the joint discriminator?

The joint discriminator is the label head's only teacher in SemanticGAN, and it stays near chance
all run (results.md, "Joint-discriminator R1 A/B"): the label quality swings between snapshots
while the image side improves steadily. Here the image path of a trained generator is frozen and
only its toSEG heads (``parameters_by_role``'s ``label_only``: one modulated 1x1 conv per
resolution and its style affine) are fitted, with BCE + soft Dice, to the labeled budget's masks
(``labeled_budget: all`` = the 129 ircadb_1 body slices; no other label) at the w+ that inversion
finds for those slices: clean CT with the CT objective and modality-shifted copies with the MR
objective (LNCC), as at test time. Inversion does not see the label head, so a slice's w+ does not
change when the head does, and before/after are scored on the same w+.

Evidence: the 30 BTCV pool slices of ``dshift_ab/evaluate.py`` (labels never trained on), clean and
three fixed shifts, projected from the mean latent (50 steps), Dice pooled: the numbers of
``gan_milestones.py``. One JSON row per generator goes to ``results/label_readout.jsonl``.

    MEDSEMGAN_DATA=../shared/data OMP_WAIT_POLICY=passive python docs/experiments/label_readout/readout.py \\
        bundles/medsemgan_liver/models/generator.pt [--steps 400] [--save OUT.pt]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent.parent / "dshift_ab"))
from evaluate import evidence_slices, invert_from_mean, load_generator, shifted_copies  # noqa: E402

from medsemgan.data.slices import training_tensors  # noqa: E402
from medsemgan.models.generator import LABEL_ONLY, parameters_by_role  # noqa: E402
from medsemgan.paths import cache_dir, data_root  # noqa: E402
from medsemgan.training.config import load_config  # noqa: E402
from medsemgan.training.validation import pooled_dice  # noqa: E402

ROWS = Path(__file__).parent.parent / "results" / "label_readout.jsonl"
CT_OBJECTIVE = {"perceptual": "ms_ssim", "mse_weight": 0.1}
MR_OBJECTIVE = {"perceptual": "lncc", "mse_weight": 0.0}


def cached_ws(G, source: Path, name: str, images: torch.Tensor, inference: dict, objective: dict) -> torch.Tensor:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    path = cache_dir() / "label_readout" / f"{digest}_{name}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    ws = invert_from_mean(G, images, inference, **objective)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ws, path)
    return ws


@torch.no_grad()
def predict(G, ws: torch.Tensor) -> torch.Tensor:
    return torch.cat([(G.synthesis(chunk, noise_mode="const")[1][:, :1] > 0).float() for chunk in ws.split(32)])


def fit_label_heads(G, ws: torch.Tensor, masks: torch.Tensor, steps: int, lr: float, batch: int, seed: int = 0) -> list[float]:
    heads = [p for _, p in parameters_by_role(G)[LABEL_ONLY]]
    for p in G.parameters():
        p.requires_grad_(False)
    for p in heads:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(heads, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, ws.shape[0], (batch,), generator=generator)
        logits = G.synthesis(ws[pick], noise_mode="const")[1][:, :1]
        target = masks[pick]
        probs = torch.sigmoid(logits)
        dice = 1 - (2 * (probs * target).sum() + 1) / (probs.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("generator", type=Path)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-shifted", action="store_true", help="fit on clean-CT w+ only")
    parser.add_argument("--save", type=Path, help="write the refitted generator's state dict here")
    parser.add_argument("--rows", type=Path, default=ROWS)
    args = parser.parse_args()
    started = time.perf_counter()
    config = load_config("cpu128")
    inference = config["inference"]
    G = load_generator(args.generator, config["model"])
    pool = training_tensors(data_root(), 128, "all", cache_dir() / "training_tensors")
    labeled, masks = pool["labeled_image"], pool["labeled_mask"]
    torch.manual_seed(0)
    shifted_labeled = shifted_copies(labeled)[0]
    evidence = evidence_slices()
    shifted_evidence = shifted_copies(evidence["image"])

    ws_train = {"clean": cached_ws(G, args.generator, "labeled_clean", labeled, inference, CT_OBJECTIVE)}
    if not args.no_shifted:
        ws_train["shifted"] = cached_ws(G, args.generator, "labeled_shifted", shifted_labeled, inference, MR_OBJECTIVE)
    ws_eval = {"clean": cached_ws(G, args.generator, "evidence_clean", evidence["image"], inference, CT_OBJECTIVE)}
    for k, x in enumerate(shifted_evidence):
        ws_eval[f"shifted_{k}"] = cached_ws(G, args.generator, f"evidence_shifted_{k}", x, inference, MR_OBJECTIVE)
    solved = time.perf_counter()

    def score() -> dict:
        out = {name: round(pooled_dice(predict(G, ws), evidence["mask"]), 4) for name, ws in ws_eval.items()}
        out["shifted_mean"] = round(sum(v for k, v in out.items() if k.startswith("shifted_")) / len(shifted_evidence), 4)
        out["labeled_clean"] = round(pooled_dice(predict(G, ws_train["clean"]), masks), 4)
        return out

    before = score()
    train_ws = torch.cat(list(ws_train.values()))
    train_masks = masks.repeat(len(ws_train), 1, 1, 1)
    losses = fit_label_heads(G, train_ws, train_masks, args.steps, args.lr, args.batch)
    after = score()
    row = {"generator": args.generator.name, "run": args.generator.parent.parent.name, "steps": args.steps,
           "lr": args.lr, "batch": args.batch, "fit_on": sorted(ws_train), "labeled_slices": int(labeled.shape[0]),
           "before": before, "after": after, "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
           "seconds_inversion": round(solved - started, 1), "seconds_fit": round(time.perf_counter() - solved, 1)}
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    with args.rows.open("a") as out:
        out.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    if args.save:
        torch.save({k: v.detach().clone() for k, v in G.state_dict().items()}, args.save)


if __name__ == "__main__":
    main()

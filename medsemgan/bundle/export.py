"""``medsemgan export``: put trained weights into a bundle's ``models/`` folder, with their provenance.

Two stages, because the encoder is trained against the *shipped* (already cast) generator::

    medsemgan export --gan runs/gan_cpu128_all                       # -> models/generator.pt
    medsemgan train encoder --config cpu128 --generator bundles/medsemgan_liver/models/generator.pt \\
        --out runs/encoder_cpu128
    medsemgan export --encoder runs/encoder_cpu128                   # -> models/encoder.pt

Weights are written as plain state dicts (``torch.load(weights_only=True)``), by default in float16.
Before the generator is written, the cast is checked: the float32 and the cast generator render the
same fixed latents, and the export refuses a cast whose liver masks disagree on more than
``--max-mask-disagreement`` of the pixels (use ``--dtype bf16`` or ``fp32`` then). The encoder export
refuses an encoder whose run was trained against another generator file than the bundle's.

``models/provenance.json`` records, per file: where it came from (run folder, images seen, the
configuration), the dtype, the sha256 and, for the generator, the measured cast error. Paths in it
are relative (to the bundle, the repository or the working folder), never this machine's absolute
ones: the file travels with the bundle. ``large_files.yml`` (every weight file with its sha256,
checked by ``medsemgan install-bundle``) is rewritten after each export. The model
card (``docs/README.md``) cites it. ``--budget 8`` writes ``generator_8.pt``/``encoder_8.pt``, the
files ``medsemgan report`` reads for the other label budgets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from medsemgan.errors import InputError
from medsemgan.io_utils import atomic_path, file_sha256
from medsemgan.paths import portable_path
from medsemgan.weights import cast_state_dict, is_state_dict, read_weights, save_state_dict

log = logging.getLogger(__name__)

PROVENANCE_NAME = "provenance.json"
EXPORT_DTYPES = ("bf16", "fp16", "fp32")  # --dtype choices (medsemgan.weights.DTYPES names)
CHECK_LATENTS = 32


def weights_name(kind: str, budget: str | None) -> str:
    return f"{kind}.pt" if budget in (None, "", "all") else f"{kind}_{budget}.pt"


def _restored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@torch.no_grad()
def cast_error(model_config: dict, state: dict[str, torch.Tensor], dtype: str | torch.dtype, seed: int = 0) -> dict[str, float]:
    """Render fixed latents with the float32 and the cast weights (both run in float32).

    Returns the largest image difference (images in [-1, 1]) and the fraction of mask pixels
    (logit > 0) that differ: what a user of the cast weights would see change.
    """
    from medsemgan.models.build import build_generator

    reference, cast = build_generator(model_config), build_generator(model_config)
    reference.load_state_dict(_restored(state))
    cast.load_state_dict(_restored(cast_state_dict(state, dtype)))
    reference.eval(), cast.eval()
    z = torch.randn(CHECK_LATENTS, reference.z_dim, generator=torch.Generator().manual_seed(seed))
    outputs = []
    for G in (reference, cast):
        torch.manual_seed(seed)  # identical noise inputs for both
        outputs.append(G(z, noise_mode="const"))
    (image_ref, logit_ref), (image_cast, logit_cast) = outputs
    return {
        "latents": CHECK_LATENTS,
        "image_max_abs_diff": float((image_ref - image_cast).abs().max()),
        "image_mean_abs_diff": float((image_ref - image_cast).abs().mean()),
        "mask_pixels_differing": float(((logit_ref > 0) != (logit_cast > 0)).float().mean()),
    }


def _snapshot_images_seen(path: Path) -> int:
    """Images seen by a kept snapshot: ``best.json`` beside the best one, else the file name."""
    from medsemgan.training.run import BEST_RECORD, BEST_SNAPSHOT, snapshot_images_seen

    if path.name == BEST_SNAPSHOT and (path.parent / BEST_RECORD).is_file():
        return int(json.loads((path.parent / BEST_RECORD).read_text())["images_seen"])
    seen = snapshot_images_seen(path)
    if seen is None:
        raise InputError(path, "is a generator state dict, but how many images it has seen is unknown "
                               "(expected a run's snapshots/generator_ema_<images>.pt or generator_ema_best.pt)")
    return seen


# Written beside a folder of averaged snapshots (docs/experiments/snapshot_average.py): which
# snapshots the parameter mean was taken over. Export copies it into the provenance record.
AVERAGED_RECORD = "averaged.json"


def _snapshot_as_checkpoint(path: Path) -> dict[str, Any]:
    """A kept snapshot (plain state dict) with what its run folder knows, shaped like a checkpoint."""
    config_file = path.parent.parent / "config.json"
    state = read_weights(path, "generator snapshot")
    if not is_state_dict(state) or not config_file.is_file():
        raise InputError(path, "is not a GAN run's kept snapshot (a generator state dict in <run>/snapshots/, "
                               "the run's config.json beside snapshots/)")
    config_text = config_file.read_text()
    seen = _snapshot_images_seen(path)
    averaged = path.parent.parent / AVERAGED_RECORD
    # named from the run's parent folder: run/snapshots/<file>, so the record says which run it is
    return {"G_ema": state, "config": config_text, "images_seen": seen, "source": portable_path(path, (path.parents[2],)),
            "step": seen // int(json.loads(config_text)["training"]["batch_size"]),
            "averaged_from": json.loads(averaged.read_text()) if averaged.is_file() else None}


def _gan_source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """EMA generator state and what is known about its run, from a run folder, a checkpoint, or
    one of the run's kept snapshots (``snapshots/*.pt``: the run's ``config.json`` describes it)."""
    from medsemgan.training.checkpoint import checkpoint_path, load_checkpoint

    checkpoint = checkpoint_path(path) if path.is_dir() else path
    if path.is_file() and path.parent.name == "snapshots":
        state = _snapshot_as_checkpoint(path)
    else:
        state = load_checkpoint(checkpoint)
    if "G_ema" not in state:
        raise InputError(checkpoint, "has no G_ema entry (not a GAN checkpoint)")
    config = json.loads(state["config"]) if isinstance(state.get("config"), str) else state.get("config") or {}
    info = {
        "source": state.get("source", str(checkpoint)),
        "images_seen": int(state.get("images_seen", 0)),
        "steps": int(state.get("step", 0)),
        "config_source": config.get("_source"),
        "labeled_budget": (config.get("data") or {}).get("labeled_budget"),
        "training": {k: (config.get("training") or {}).get(k) for k in ("batch_size", "labeled_batch_size", "lr", "augment")},
    }
    if state.get("averaged_from"):  # a parameter mean of several snapshots, not one generator of the run
        info["averaged_from"] = state["averaged_from"]
    return state["G_ema"], info | {"model": config.get("model")}


def _encoder_source(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from medsemgan.training.encoder import EXPORT_NAME

    weights = path / EXPORT_NAME if path.is_dir() else path
    if not weights.is_file():
        raise InputError(weights, "no finished encoder here (train it to its kimg first: `medsemgan train encoder ... --resume`)")
    state = read_weights(weights, "encoder weights")
    config_file = weights.parent / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    train = (config.get("encoder") or {}).get("train") or {}
    info = {
        "source": str(weights),
        "generator": config.get("generator"),
        "kimg": train.get("kimg"),
        "warmup_kimg": train.get("warmup_kimg"),
        "labeled_budget": (config.get("data") or {}).get("labeled_budget"),
        "modality_augment": train.get("modality_augment"),
    }
    return state, info


def portable(value: Any, bundle: Path) -> Any:
    """``value`` with every absolute path in its strings made portable (``portable_path``):
    provenance.json travels with the bundle and must not name the exporting machine's folders."""
    if isinstance(value, dict):
        return {k: portable(v, bundle) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, bundle) for v in value]
    if isinstance(value, str) and os.sep in value:
        return " ".join(portable_path(word, (bundle, Path.cwd()), tail=True) if os.path.isabs(word) else word
                        for word in value.split(" "))
    return value


def _record(models_dir: Path, name: str, entry: dict[str, Any]) -> None:
    path = models_dir / PROVENANCE_NAME
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[name] = entry
    records = portable(records, models_dir.parent)  # also cleans records written by older versions
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(records, indent=2, sort_keys=True, default=str) + "\n")


def export_generator(gan: Path, models_dir: Path, dtype: str = "fp16", budget: str | None = None,
                     max_mask_disagreement: float = 1e-3) -> Path:
    state, info = _gan_source(gan)
    model_config = info.pop("model")
    if model_config is None:
        raise InputError(gan, "the checkpoint does not record its model configuration")
    check = cast_error(model_config, state, dtype) if dtype != "fp32" else None
    if check and check["mask_pixels_differing"] > max_mask_disagreement:
        raise InputError(gan, f"{dtype} changes {check['mask_pixels_differing']:.2%} of the generated mask pixels "
                              f"(limit {max_mask_disagreement:.2%}): export with a wider --dtype "
                              f"({'fp16 or ' if dtype == 'bf16' else ''}fp32)")
    out = models_dir / weights_name("generator", budget)
    save_state_dict(cast_state_dict(state, dtype), out)
    _record(models_dir, out.name, info | {
        "what": "EMA generator (image + label heads), plain state dict",
        "dtype": dtype, "cast_check": check, "sha256": file_sha256(out),
        "exported": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    return out


def export_encoder(encoder: Path, models_dir: Path, dtype: str = "fp16", budget: str | None = None,
                   allow_other_generator: bool = False, modality: str | None = None) -> Path:
    """``modality`` None: the default encoder (``encoder.pt``); ``MR``/``CT``: the encoder used for
    studies of that modality (``encoder_mr.pt``, ``SegmentationModel.encoder_for``)."""
    from medsemgan.inference.model import MODALITIES

    if modality is not None and modality.upper() not in MODALITIES:
        raise InputError(None, f"--modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    state, info = _encoder_source(encoder)
    generator_file = models_dir / weights_name("generator", budget)
    trained_against = str(info.get("generator") or "")
    if not allow_other_generator:
        if not generator_file.is_file():
            raise InputError(generator_file, "export the generator first (the encoder belongs to it)")
        recorded = trained_against.rpartition("sha256:")[2].strip()
        if not recorded or not file_sha256(generator_file).startswith(recorded):
            raise InputError(encoder, f"was trained against {trained_against or 'an unknown generator'}, not "
                                      f"{generator_file} (retrain it with --generator {generator_file}, "
                                      "or pass --allow-other-generator)")
    kind = "encoder" if modality is None else f"encoder_{modality.lower()}"
    out = models_dir / weights_name(kind, budget)
    save_state_dict(cast_state_dict(state, dtype), out)
    what = "encoder image -> W+" + ("" if modality is None else f", for {modality.upper()} studies")
    _record(models_dir, out.name, info | {
        "what": what + ", plain state dict", "dtype": dtype, "sha256": file_sha256(out),
        "exported": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gan", type=Path, help="GAN run folder, its checkpoint.pt, or one of its kept snapshots "
                                                 "(snapshots/generator_ema_best.pt): writes the EMA generator")
    parser.add_argument("--encoder", type=Path, help="encoder run folder or its encoder.pt")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the one segment uses: $MEDSEMGAN_BUNDLE, the checkout's bundles/medsemgan_liver, else the user folder)")
    parser.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp16", help="stored precision (default fp16)")
    parser.add_argument("--budget", default=None,
                        help="label budget of these weights: 'all' (default) writes generator.pt/encoder.pt, "
                             "N writes generator_N.pt/encoder_N.pt (the report's other columns)")
    parser.add_argument("--max-mask-disagreement", type=float, default=1e-3,
                        help="refuse a generator cast that flips more than this fraction of mask pixels")
    parser.add_argument("--allow-other-generator", action="store_true",
                        help="export an encoder trained against a different generator file")
    parser.add_argument("--modality", default=None,
                        help="export the encoder as the one for this modality's studies (MR -> encoder_mr.pt); "
                             "default: the encoder for every study (encoder.pt)")


def run(args) -> int:
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    if args.gan is None and args.encoder is None:
        raise InputError(None, "nothing to export: give --gan and/or --encoder")
    bundle = args.bundle or DEFAULT_BUNDLE_DIR
    models_dir = bundle / "models"
    written = {}
    if args.gan is not None:
        written["generator"] = str(export_generator(args.gan, models_dir, args.dtype, args.budget,
                                                    args.max_mask_disagreement))
    if args.encoder is not None:
        written["encoder"] = str(export_encoder(args.encoder, models_dir, args.dtype, args.budget,
                                                args.allow_other_generator, args.modality))
    from medsemgan.bundle.large_files import write_large_files

    listing = write_large_files(bundle)  # every weight file with its new sha256
    print(json.dumps({"written": written, "provenance": str(models_dir / PROVENANCE_NAME),
                      "large_files": str(listing)}, indent=2))
    return 0

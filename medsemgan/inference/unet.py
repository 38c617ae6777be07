"""Volume segmentation with the supervised 2-D U-Net baseline, through the GAN's own geometry path.

``UNetSegmenter.from_file(weights)`` rebuilds the network from the ``.json`` sidecar written by
``medsemgan train unet`` (architecture and model resolution) and loads the plain state dict
(``weights_only=True``; fp16/bf16 files are cast back to float32).

``segment_volume_unet(image, segmenter)`` runs the GAN's geometry path (``medsemgan.inference.
segment.predict_volume``) with the U-Net in place of encoder + test-time optimisation:
load -> ``preprocess(modality, resolution)`` (canonical orientation, CT window / MRI percentiles,
body crop, resize) -> every slice through the network -> liver probability -> MONAI ``Invertd``
back to the input's exact shape and affine -> mask (probability > 0.5). Same modality rules
(``resolve_modality``), same output contract (uint8 ``MetaTensor [1, X, Y, Z]``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor

from medsemgan.errors import InputError
from medsemgan.weights import is_state_dict, read_weights

DEFAULT_RESOLUTION = 128


def sidecar_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


class UNetSegmenter(torch.nn.Module):
    """The U-Net and the model-space resolution it was trained at. ``forward``: slice logits."""

    def __init__(self, net: torch.nn.Module, resolution: int, info: dict | None = None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.resolution = int(resolution)
        self.info = dict(info or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.net(slices)

    @classmethod
    def from_file(cls, weights: str | os.PathLike, architecture: dict | None = None,
                  resolution: int | None = None) -> "UNetSegmenter":
        """Weights + sidecar; ``architecture``/``resolution`` replace the sidecar's (or stand in
        for a missing one: defaults of ``medsemgan/configs/unet_cpu.yaml``)."""
        from medsemgan.models.unet import MODEL_DEFAULTS, build_unet

        weights = Path(weights)
        if not weights.is_file():
            raise InputError(weights, "no U-Net weights here (train them with `medsemgan train unet`)")
        info: dict[str, Any] = {}
        side = sidecar_path(weights)
        if side.is_file():
            try:
                info = json.loads(side.read_text())
            except json.JSONDecodeError as err:
                raise InputError(side, f"sidecar is not valid JSON: {err}") from None
        arch = dict(MODEL_DEFAULTS)
        arch.update({k: v for k, v in (info.get("architecture") or {}).items() if k in MODEL_DEFAULTS})
        arch.update(architecture or {})
        resolution = int(resolution or info.get("resolution") or DEFAULT_RESOLUTION)
        state = read_weights(weights, "U-Net weights")
        if isinstance(state, dict) and isinstance(state.get("net"), dict):
            state = state["net"]  # a training checkpoint
        if not is_state_dict(state):
            raise InputError(weights, "not a U-Net state dict (expected tensor names -> tensors)")
        net = build_unet(arch)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = " ".join(str(err).split())[:400]
            raise InputError(weights, f"weights do not match the U-Net architecture {arch}: {first}") from None
        return cls(net, resolution, info)


@torch.no_grad()
def predict_slices(segmenter: torch.nn.Module, slices: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``[Z, 1, S, S]`` in [-1, 1] -> liver probability ``[Z, 1, S, S]`` (float32, CPU)."""
    device = next(segmenter.parameters()).device
    out = [torch.sigmoid(segmenter(chunk.to(device=device, dtype=torch.float32)).float()[:, :1]).cpu()
           for chunk in slices.split(max(1, int(batch_size)))]
    return torch.cat(out) if out else slices.new_zeros((0, 1, *slices.shape[2:]))


def segment_volume_unet(image: str | os.PathLike | MetaTensor, segmenter: UNetSegmenter,
                        modality: str | None = None, batch_size: int = 32,
                        threshold: float = 0.5, save_prob: bool = False,
                        postprocess: str | None = None) -> tuple[MetaTensor, dict[str, Any]]:
    """Segment one volume; returns ``(mask, extras)`` like ``segment_volume``.

    ``mask``: uint8 ``MetaTensor [1, X, Y, Z]`` on the input's grid (same shape and affine).
    ``extras``: ``modality``, ``modality_from``, ``shape``, ``slices``, ``liver_voxels``,
    ``liver_volume_ml``, ``seconds``; ``probability`` (float32 ``MetaTensor`` like ``mask``) with
    ``save_prob``.
    """
    from medsemgan.data.slices import volume_to_slices
    from medsemgan.inference.postprocess import check_mode, postprocess_mask
    from medsemgan.inference.segment import liver_volume_ml, predict_volume

    def predict(volume: MetaTensor, modality: str) -> torch.Tensor:  # one network for every modality
        prob = predict_slices(segmenter, volume_to_slices(volume), batch_size)  # [Z,1,S,S]
        return prob.permute(1, 2, 3, 0).contiguous()

    started = time.perf_counter()
    predicted = predict_volume(image, segmenter.resolution, predict, modality)
    image = predicted.image
    # The inverse transforms recompute the affine in floating point; the input's own is exact.
    mask = MetaTensor((predicted.probability > threshold).to(torch.uint8), affine=image.affine.clone())
    mask = postprocess_mask(mask, postprocess)
    extras = {
        "postprocess": check_mode(postprocess),
        "modality": predicted.modality,
        "modality_from": predicted.modality_from,
        "shape": [int(n) for n in image.shape[1:]],
        "slices": predicted.slices,
        "liver_voxels": int(mask.sum()),
        "liver_volume_ml": liver_volume_ml(mask, image.affine),
        "seconds": time.perf_counter() - started,
    }
    if save_prob:
        extras["probability"] = MetaTensor(predicted.probability.clamp(0, 1), affine=image.affine.clone())
    return mask, extras

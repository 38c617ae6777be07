"""``TTOInferer``: a MONAI ``Inferer`` that segments preprocessed volumes slice by slice.

Input: ``[B, 1, S, S, D]`` in model space (``medsemgan.data.transforms.preprocess``: slices along
the last axis, intensities in [-1, 1]). Each volume's slices go through the encoder and test-time
optimisation in batches of ``batch_size``; the output is the generator's label logits
``[B, L, S, S, D]`` (a ``MetaTensor`` carrying the input's metadata when the input has it, so
``Invertd`` can take it back to the original geometry). Per-slice diagnostics of the last call
are in ``last_extras``.

MONAI evaluators call inferers under ``torch.no_grad()``; the optimisation opens
``torch.enable_grad()`` itself.

Options can differ per modality (``modality_options``, from the model YAML's
``inference.modality_overrides``): a volume's modality is the ``modality=`` argument, else the
``MODALITY_META_KEY`` entry of its metadata (the bundle's ``ModalityPreprocessd`` sets it).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm.auto import tqdm

from medsemgan.inference.tto import TTOOptions, invert

MODALITY_META_KEY = "medsemgan_modality"


def restart_init(start: str, solved: dict[str, torch.Tensor], generator: torch.nn.Module) -> torch.Tensor:
    """Starting w+ per slice for a restart (``TTOOptions.restarts``) from a solved volume."""
    ws, loss = solved["ws"], solved["loss"]
    if start == "mean":
        w_avg = generator.w_avg.detach().float().to(ws.device)
        return w_avg.expand_as(ws).clone()
    if start == "neighbour":
        k = torch.arange(ws.shape[0], device=ws.device)
        below, above = (k - 1).clamp(min=0), (k + 1).clamp(max=ws.shape[0] - 1)
        neighbour = torch.where(loss[below] <= loss[above], below, above)
        return ws[neighbour].clone()
    raise ValueError(f"unknown restart {start!r}")


def keep_better(solved: dict[str, torch.Tensor], again: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per slice, the solution with the lower objective; steps add up; the out-of-domain signal
    stays the first pass's (it is defined at the encoder's w+)."""
    better = again["loss"] < solved["loss"]
    merged = {}
    for key, value in solved.items():
        if key in ("structure",):
            merged[key] = value
        elif key == "steps":
            merged[key] = value + again[key]
        else:
            mask = better.view(-1, *([1] * (value.ndim - 1)))
            merged[key] = torch.where(mask, again[key], value)
    return merged


def _modalities(inputs: torch.Tensor, n: int, modality: str | None) -> list[str | None]:
    """One modality per volume of the batch: the argument, else the (collated) metadata entry."""
    if modality is not None:
        return [modality.upper()] * n
    value = inputs.meta.get(MODALITY_META_KEY) if isinstance(inputs, MetaTensor) else None
    if value is None:
        return [None] * n
    values = [value] * n if isinstance(value, str) else list(value)
    return [None if v is None else str(v).upper() for v in values]


class TTOInferer(Inferer):
    def __init__(self, options: TTOOptions | None = None, batch_size: int = 64,
                 progress: bool = False, modality_options: dict[str, TTOOptions] | None = None,
                 **option_overrides: Any) -> None:
        """``option_overrides`` (e.g. ``steps=0``) replace fields of ``options`` and of every
        ``modality_options`` entry, so a bundle config can say
        ``{"_target_": "...TTOInferer", "steps": 0}``."""
        super().__init__()
        overrides = {k: v for k, v in option_overrides.items() if v is not None}
        self.options = TTOOptions.from_config(vars(options or TTOOptions()) | overrides)
        self.modality_options = {m.upper(): TTOOptions.from_config(vars(o) | overrides)
                                 for m, o in (modality_options or {}).items()}
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress
        self.last_extras: dict[str, torch.Tensor] = {}

    def options_for(self, modality: str | None) -> TTOOptions:
        return self.modality_options.get((modality or "").upper(), self.options)

    def _solve(self, G, E, slices: torch.Tensor, options: TTOOptions, ws_init: torch.Tensor | None,
               what: str) -> dict[str, torch.Tensor]:
        """Every slice of one volume, in batches of ``batch_size``, from the encoder or ``ws_init``."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ws", "logits", "recon", "structure", "loss", "steps")}
        chunks = slices.split(self.batch_size)
        for i, chunk in enumerate(tqdm(chunks, desc=f"{what}slice batches", leave=False,
                                       disable=not self.progress or len(chunks) < 2)):
            first = i * self.batch_size
            init = None if ws_init is None else ws_init[first:first + chunk.shape[0]]
            # 3-D consistency across batches: the previous batch's last solved slice
            before = parts["ws"][-1][-1] if options.smooth_weight and parts["ws"] else None
            result = invert(G, E, chunk, options, ws_init=init, progress=self.progress,
                            desc=f"{what}optimising {first + 1}-{first + chunk.shape[0]}/{slices.shape[0]}",
                            ws_before=before)
            for key, value in (("ws", result.ws), ("logits", result.label_logits), ("recon", result.recon_mse),
                               ("structure", result.structure_error), ("loss", result.loss),
                               ("steps", result.steps_run)):
                parts[key].append(value)
        return {k: torch.cat(v) for k, v in parts.items()}

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any,
                 modality: str | None = None, **kwargs: Any):
        """``network``: a ``SegmentationModel`` (anything with ``.generator`` and ``.encoder``)."""
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"expected volumes [B, 1, S, S, D], got {list(inputs.shape)}")
        G = network.generator
        device = next(G.parameters()).device
        modalities = _modalities(inputs, inputs.shape[0], modality)
        volumes = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        outputs, recon, structure, loss, steps = [], [], [], [], []
        for b in range(volumes.shape[0]):
            options = self.options_for(modalities[b])
            # A model may carry an encoder per modality (SegmentationModel.encoder_for).
            E = network.encoder_for(modalities[b]) if hasattr(network, "encoder_for") else network.encoder
            slices = volumes[b].permute(3, 0, 1, 2).to(device=device, dtype=torch.float32)  # [D,1,S,S]
            solved = self._solve(G, E, slices, options, None, "")
            for start in options.restarts:
                init = restart_init(start, solved, G)
                again = self._solve(G, E, slices, options, init, f"restart {start} ")
                solved = keep_better(solved, again)
            outputs.append(solved["logits"].permute(1, 2, 3, 0))  # [L,S,S,D]
            recon.append(solved["recon"])
            structure.append(solved["structure"])
            loss.append(solved["loss"])
            steps.append(solved["steps"])
        logits = torch.stack(outputs)
        self.last_extras = {"recon_mse": torch.stack(recon), "structure_error": torch.stack(structure),
                            "loss": torch.stack(loss),
                            "steps_run": torch.stack(steps)}
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(logits.to(inputs.device))
            out.copy_meta_from(inputs, copy_attr=True)
            return out
        return logits

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
            logits_b, recon_b, structure_b, loss_b, steps_b = [], [], [], [], []
            chunks = slices.split(self.batch_size)
            for i, chunk in enumerate(tqdm(chunks, desc="slice batches", leave=False,
                                           disable=not self.progress or len(chunks) < 2)):
                result = invert(G, E, chunk, options, progress=self.progress,
                                desc=f"optimising {i * self.batch_size + 1}-"
                                     f"{i * self.batch_size + chunk.shape[0]}/{slices.shape[0]}")
                logits_b.append(result.label_logits)
                recon_b.append(result.recon_mse)
                structure_b.append(result.structure_error)
                loss_b.append(result.loss)
                steps_b.append(result.steps_run)
            outputs.append(torch.cat(logits_b).permute(1, 2, 3, 0))  # [L,S,S,D]
            recon.append(torch.cat(recon_b))
            structure.append(torch.cat(structure_b))
            loss.append(torch.cat(loss_b))
            steps.append(torch.cat(steps_b))
        logits = torch.stack(outputs)
        self.last_extras = {"recon_mse": torch.stack(recon), "structure_error": torch.stack(structure),
                            "loss": torch.stack(loss),
                            "steps_run": torch.stack(steps)}
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(logits.to(inputs.device))
            out.copy_meta_from(inputs, copy_attr=True)
            return out
        return logits

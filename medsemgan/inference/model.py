"""``SegmentationModel``: the generator, the encoder and the configuration they were built from.

Weights are plain state dicts (``torch.load(weights_only=True)``): a bundle holds
``models/generator.pt`` (the EMA generator) and ``models/encoder.pt``, and optionally encoders for
other modalities, ``models/encoder_<modality>.pt`` (``encoder_mr.pt``: trained with the
modality-shift augmentation, used for MR studies; ``encoder.pt`` serves every other study). The
configuration comes from the bundle's ``configs/model.yaml`` if present, else from a named
configuration in ``medsemgan/configs`` (``cpu128`` by default).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsemgan.config_files import config_path, read_yaml_mapping
from medsemgan.errors import InputError
from medsemgan.inference.options import modality_overrides
from medsemgan.modality import MODALITIES
from medsemgan.paths import bundle_dir as find_bundle_dir, missing_bundle_hint
from medsemgan.weights import (  # noqa: F401  (load_state_dict_file, resolve_device re-exported)
    load_into, load_state_dict_file, resolve_device, save_state_dict)

DEFAULT_CONFIG = "cpu128"
GENERATOR_FILE = Path("models") / "generator.pt"
ENCODER_FILE = Path("models") / "encoder.pt"


def modality_encoder_file(modality: str) -> Path:
    """``models/encoder_<modality>.pt`` (lower case), e.g. ``models/encoder_mr.pt``."""
    return Path("models") / f"encoder_{modality.lower()}.pt"
BUNDLE_CONFIG_FILE = Path("configs") / "model.yaml"


@dataclass
class ModelConfig:
    """The sections of a configuration file inference needs."""

    model: dict  # resolved by medsemgan.models.config
    encoder: dict  # the ``encoder:`` section (architecture; its ``train:`` part is ignored here)
    inference: dict  # the ``inference:`` section (TTOOptions + segmentation defaults)
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "encoder": self.encoder, "inference": self.inference,
                "_source": self.source}


def load_model_sections(name_or_path: str | os.PathLike | dict) -> ModelConfig:
    """``model`` (checked by the models layer), ``encoder`` and ``inference`` sections."""
    from medsemgan.models.config import load_model_config, model_config_from_dict

    if isinstance(name_or_path, ModelConfig):
        return name_or_path
    if isinstance(name_or_path, dict):
        raw = copy.deepcopy(name_or_path)
        model = model_config_from_dict(raw.get("model") or {}, raw.get("_source", "<dict>"))
        return ModelConfig(model, dict(raw.get("encoder") or {}), dict(raw.get("inference") or {}),
                           str(raw.get("_source", "<dict>")))
    path = config_path(name_or_path)
    raw = read_yaml_mapping(path, "expected a mapping with sections model:, encoder:, inference:")
    model = load_model_config(path)
    for section in ("encoder", "inference"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise InputError(path, f"'{section}:' must be a mapping")
    inference = dict(raw.get("inference") or {})
    try:
        modality_overrides(inference)
    except ValueError as err:
        raise InputError(path, str(err)) from None
    return ModelConfig(model, dict(raw.get("encoder") or {}), inference, str(path))


class SegmentationModel(nn.Module):
    """G + E. ``forward(images)`` is the encoder-only segmentation (label logits) of 2-D slices."""

    def __init__(self, generator: nn.Module, encoder: nn.Module, config: ModelConfig,
                 modality_encoders: dict[str, nn.Module] | None = None):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.encoder = encoder.eval().requires_grad_(False)
        self.modality_encoders = nn.ModuleDict({m.upper(): e.eval().requires_grad_(False)
                                                for m, e in (modality_encoders or {}).items()})
        self.config = config

    def encoder_for(self, modality: str | None) -> nn.Module:
        """The encoder trained for ``modality`` when the model has one, else the default encoder."""
        key = (modality or "").upper()
        return self.modality_encoders[key] if key in self.modality_encoders else self.encoder

    @property
    def resolution(self) -> int:
        return int(self.config.model["resolution"])

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, logits = self.generator.synthesis(self.encoder(images), noise_mode="const")
        return logits

    @classmethod
    def build(cls, config: str | os.PathLike | dict | ModelConfig = DEFAULT_CONFIG) -> "SegmentationModel":
        """Randomly initialised networks for ``config`` (tests, benchmarks before training)."""
        from medsemgan.models.build import build_generator
        from medsemgan.models.encoder import build_encoder

        cfg = load_model_sections(config)
        G = build_generator(cfg.model)
        E = build_encoder(cfg.encoder, G.resolution, G.num_ws, G.w_dim)
        E.set_w_avg(G.w_avg)
        return cls(G, E, cfg)

    @classmethod
    def from_files(cls, generator_path: str | os.PathLike, encoder_path: str | os.PathLike,
                   config: str | os.PathLike | dict | ModelConfig = DEFAULT_CONFIG,
                   modality_encoders: dict[str, str | os.PathLike] | None = None) -> "SegmentationModel":
        """``modality_encoders``: ``{modality: encoder file}`` for studies of that modality."""
        generator_path, encoder_path = Path(generator_path), Path(encoder_path)
        g_state = load_state_dict_file(generator_path, "generator")
        e_state = load_state_dict_file(encoder_path, "encoder")
        model = cls.build(config)
        load_into(model.generator, g_state, generator_path, "generator")
        load_into(model.encoder, e_state, encoder_path, "encoder")
        for modality, path in (modality_encoders or {}).items():
            key = modality.upper()
            if key not in MODALITIES:
                raise InputError(path, f"encoder for unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
            encoder = copy.deepcopy(model.encoder)
            load_into(encoder, load_state_dict_file(Path(path), f"{key} encoder"), Path(path), f"{key} encoder")
            model.modality_encoders[key] = encoder.eval().requires_grad_(False)
        return model

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike | None = None,
                    config: str | os.PathLike | dict | ModelConfig | None = None) -> "SegmentationModel":
        bundle = find_bundle_dir(bundle_dir)  # --bundle, $MEDSEMGAN_BUNDLE, checkout, user folder
        if not bundle.is_dir():
            raise InputError(bundle, f"bundle folder does not exist: {missing_bundle_hint()}")
        if config is None:
            bundled = bundle / BUNDLE_CONFIG_FILE
            config = bundled if bundled.is_file() else DEFAULT_CONFIG
        extra = {m: bundle / modality_encoder_file(m) for m in MODALITIES
                 if (bundle / modality_encoder_file(m)).is_file()}
        return cls.from_files(bundle / GENERATOR_FILE, bundle / ENCODER_FILE, config, extra)

    def save(self, folder: str | os.PathLike) -> tuple[Path, ...]:
        """Write every state dict in the bundle layout under ``folder`` (atomically)."""
        folder = Path(folder)
        modules = [self.generator, self.encoder, *self.modality_encoders.values()]
        paths = (folder / GENERATOR_FILE, folder / ENCODER_FILE,
                 *(folder / modality_encoder_file(m) for m in self.modality_encoders))
        for module, path in zip(modules, paths):
            save_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()}, path)
        return paths

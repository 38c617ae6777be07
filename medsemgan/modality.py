"""Modality names and the CT-vs-MR guess, one home.

The package knows two modalities, ``CT`` and ``MR``; ``MRI`` (any case) is read as ``MR``
everywhere a user or a file names one (``--modality``, ``modality:`` in the report YAML,
``inference.modality_overrides``, ``preprocess``).
"""

from __future__ import annotations

import numpy as np
import torch

MODALITIES = ("CT", "MR")
ALIASES = {"MRI": "MR"}
# Hounsfield air: a volume whose minimum is at or below this is CT (MR intensities are >= 0)
CT_AIR_THRESHOLD = -500


def modality_name(value: str) -> str:
    """Upper case, with ``MRI`` read as ``MR``; not checked (see :func:`check_modality`)."""
    text = str(value).strip().upper()
    return ALIASES.get(text, text)


def check_modality(value: str, what: str = "modality") -> str:
    """:func:`modality_name`, raising ``ValueError`` naming ``what`` when it is neither CT nor MR."""
    name = modality_name(value)
    if name not in MODALITIES:
        raise ValueError(f"{what} must be CT or MR, got {value!r}")
    return name


def looks_like_ct(intensities: torch.Tensor | np.ndarray) -> bool:
    """Air in Hounsfield units (minimum <= -500) means CT."""
    return float(intensities.min()) <= CT_AIR_THRESHOLD


def guess_modality(image: torch.Tensor | np.ndarray) -> str:
    """``CT`` when the intensities reach Hounsfield air, else ``MR`` (also ``medsemgan info``'s rule)."""
    return "CT" if looks_like_ct(image) else "MR"

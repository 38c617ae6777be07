"""Volume post-processing of a binary liver mask, the same for every method.

The liver is one connected organ without enclosed holes, so two operations repair the most common
slice-wise errors: keeping the largest 3-D connected component drops islands elsewhere in the body
(a spleen or a heart slice taken for liver), filling holes closes vessels and lesions that a
method labelled background inside the organ. Both run in 3-D on the input's grid (after
``Invertd``), so the result does not depend on the model's resolution. They are what MONAI's
``KeepLargestConnectedComponent`` and ``FillHoles`` do, computed with ``scipy.ndimage`` (MONAI's
component transform needs scikit-image on the CPU, which this package does not depend on).

``inference.postprocess`` / ``segment --postprocess`` choose: ``none``, ``largest`` (largest
component only), ``largest_fill`` (largest component, then hole filling).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

POSTPROCESS_MODES = ("none", "largest", "largest_fill")


def check_mode(mode: str | None) -> str:
    mode = "none" if mode in (None, False) else str(mode)
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"postprocess must be one of {POSTPROCESS_MODES}, got {mode!r}")
    return mode


def postprocess_mask(mask: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``mask`` ``[1, X, Y, Z]`` (0/1, any integer or bool dtype) -> the same shape, dtype and
    metadata (a ``MetaTensor`` keeps its affine)."""
    mode = check_mode(mode)
    if mode == "none" or not bool(mask.any()):
        return mask
    plain = (mask.as_tensor() if hasattr(mask, "as_tensor") else mask)[0].cpu().numpy() > 0
    components, count = ndimage.label(plain, structure=np.ones((3, 3, 3), bool))  # 26-connected
    if count > 1:
        sizes = np.bincount(components.ravel())[1:]
        plain = components == 1 + int(np.argmax(sizes))
    if mode == "largest_fill":
        plain = ndimage.binary_fill_holes(plain)  # 6-connected background: only enclosed holes
    out = torch.from_numpy(plain[None].astype(np.uint8)).to(device=mask.device, dtype=mask.dtype)
    if hasattr(mask, "as_tensor"):
        result = mask.clone()
        result.as_tensor().copy_(out)
        return result
    return out

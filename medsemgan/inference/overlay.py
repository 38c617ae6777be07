"""The one overlay module: PNG previews of a mask (and a label) on the image.

``overlay_png`` draws a few axial slices of a volume with the predicted mask's contour (red) and the
label's (green): ``medsemgan segment --preview``, the demo and ``medsemgan.api`` write it.
``contour`` and ``paint_contours`` are the drawing primitives for 2-D model-space slices (the
report's best/median/worst panels are the same picture of one slice).

Volume slices are shown in the radiological view every model input uses (canonical orientation
``CANONICAL_AXCODES``: anterior up, the patient's right on the image's left), with the CT window or
the MRI percentile normalisation of the preprocessing, at the study's physical aspect ratio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

PRED_COLOUR = (255, 64, 64)
LABEL_COLOUR = (64, 220, 64)
TILE_HEIGHT = 256
GAP = 4
HEADER = 14


def _canonical(volume: torch.Tensor, affine: torch.Tensor) -> np.ndarray:
    from monai.transforms import Orientation

    from medsemgan.data.transforms import CANONICAL_AXCODES, RAS_LABELS

    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
    tensor = MetaTensor(plain.float().reshape(1, *plain.shape[-3:]),
                        affine=torch.as_tensor(affine, dtype=torch.float64))
    return Orientation(axcodes=CANONICAL_AXCODES, labels=RAS_LABELS)(tensor).as_tensor()[0].numpy()


def _display_intensity(image: MetaTensor, modality: str) -> np.ndarray:
    from medsemgan.data.transforms import intensity_transform

    scaled = intensity_transform(modality)({"image": image.clone()})["image"]
    grey = (np.asarray(scaled.as_tensor()[0] if scaled.ndim == 4 else scaled.as_tensor()) + 1) * 127.5
    return np.clip(grey, 0, 255)


def pick_slices(mask: np.ndarray, reference: np.ndarray | None, count: int) -> list[int]:
    """``count`` slice indices spread evenly over the slices showing liver (label if given, else
    prediction), or over the whole volume when none does."""
    source = reference if reference is not None and reference.any() else mask
    with_liver = np.nonzero(source.reshape(-1, source.shape[-1]).any(0))[0]
    pool = with_liver if with_liver.size else np.arange(source.shape[-1])
    if pool.size <= count:
        return [int(i) for i in pool]
    positions = np.linspace(0, pool.size - 1, count + 2)[1:-1]
    return sorted({int(pool[int(round(p))]) for p in positions})


def contour(mask: np.ndarray) -> np.ndarray:
    """The one-pixel outline of a 2-D binary mask (mask pixels with a 4-neighbour outside it)."""
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def paint_contours(rgb: np.ndarray, masks: Sequence[tuple[np.ndarray | None, tuple[int, int, int]]]) -> np.ndarray:
    """Draw each ``(mask, colour)``'s outline into ``rgb`` (``[H, W, 3]`` uint8, in place), in
    order: a later mask's line lies on top where two coincide. ``None`` masks are skipped."""
    for mask, colour in masks:
        if mask is not None:
            rgb[contour(mask)] = colour
    return rgb


def overlay_png(image: MetaTensor, modality: str, pred: torch.Tensor, path: str | os.PathLike,
                label: torch.Tensor | None = None, slices: int = 4, title: str = "") -> Path:
    """Write ``path``: ``slices`` axial slices of ``image`` (``[1, X, Y, Z]`` on its own grid) with
    the contour of ``pred`` (red) and of ``label`` (green), both on the image's grid."""
    from PIL import Image, ImageDraw

    from medsemgan.io_utils import atomic_path

    affine = image.affine
    grey = _canonical(torch.as_tensor(_display_intensity(image, modality)), affine)
    pred_c = _canonical(torch.as_tensor(pred), affine) > 0.5
    label_c = None if label is None else _canonical(torch.as_tensor(label), affine) > 0.5
    # physical aspect ratio: the spacing of the input axes that became canonical axes 0 and 1
    spacing = np.sqrt((np.asarray(torch.as_tensor(affine))[:3, :3] ** 2).sum(0))
    order = _canonical_axis_order(affine)
    sx, sy = spacing[order[0]], spacing[order[1]]
    height = TILE_HEIGHT
    width = max(1, int(round(TILE_HEIGHT * (grey.shape[1] * sy) / (grey.shape[0] * sx))))
    indices = pick_slices(pred_c, label_c, slices)
    tiles = []
    for k in indices:
        tile = Image.fromarray(grey[:, :, k].astype(np.uint8)).resize((width, height), Image.BILINEAR).convert("RGB")
        def resized(mask):
            if mask is None:
                return None
            big = Image.fromarray(mask[:, :, k].astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
            return np.asarray(big) > 127

        rgb = paint_contours(np.asarray(tile).copy(), ((resized(label_c), LABEL_COLOUR), (resized(pred_c), PRED_COLOUR)))
        tiles.append((k, Image.fromarray(rgb)))
    canvas = Image.new("RGB", (len(tiles) * (width + GAP) - GAP if tiles else width, height + 2 * HEADER), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 1), title[:120], fill=(255, 255, 255))
    for i, (k, tile) in enumerate(tiles):
        x = i * (width + GAP)
        canvas.paste(tile, (x, HEADER))
        draw.text((x + 2, HEADER + height + 1), f"slice {k}", fill=(200, 200, 200))
    legend = "red: prediction" + ("   green: label" if label is not None else "")
    draw.text((max(2, canvas.width - 6 * len(legend) - 2), HEADER + height + 1), legend, fill=(200, 200, 200))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _canonical_axis_order(affine) -> Sequence[int]:
    """For each canonical axis, the input axis it comes from."""
    import nibabel as nib

    from medsemgan.data.transforms import CANONICAL_AXCODES, RAS_LABELS

    ornt_in = nib.orientations.io_orientation(np.asarray(torch.as_tensor(affine), dtype=np.float64))
    ornt_out = nib.orientations.axcodes2ornt(CANONICAL_AXCODES, labels=RAS_LABELS)
    transform = nib.orientations.ornt_transform(ornt_in, ornt_out)
    order = [0, 0, 0]
    for in_axis, (out_axis, _) in enumerate(transform):
        order[int(out_axis)] = in_axis
    return order

"""MONAI preprocessing from a loaded study to model space, and back.

``preprocess(modality, spatial_size)`` is an invertible ``Compose`` of dictionary transforms:

1. ``Orientationd`` to the canonical axcodes ``PLS`` (see ``CANONICAL_AXCODES``);
2. intensity to [-1, 1]: CT window (default W400/L40 = [-160, 240] HU), MRI robust percentiles
   (0.5-99.5 %);
3. ``BodyCropd``: a square in-plane box (in millimetres) around the body, every slice kept;
4. ``Resized`` in-plane to ``spatial_size``, the slice axis untouched.

Steps 1, 3 and 4 are recorded on each ``MetaTensor``; ``monai.transforms.Invertd`` with the same
``Compose`` brings a model-space mask back to the input's exact shape and affine.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
)
from scipy import ndimage

from medsemgan.modality import modality_name

# Canonical orientation of every array that reaches a model: axis 0 runs anterior -> posterior,
# axis 1 patient right -> left, axis 2 inferior -> superior. A slice [X, Y] shown as an image
# (rows = axis 0, columns = axis 1) is then the radiological view: anterior up, the patient's
# right (the liver) on the image's left. Every source (LPS DICOM, RAS/LAS/LPS NIfTI) is brought
# to this one orientation, so the liver stays on the same side across data sets and modalities.
CANONICAL_AXCODES = "PLS"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

CT_WINDOW = (400.0, 40.0)  # width, level in HU: abdomen window [-160, 240]
MR_PERCENTILES = (0.5, 99.5)

# Body threshold in the [-1, 1] intensity space: CT -0.9 is about -140 HU (fat and soft tissue are
# above it, air and lung below); MRI -0.8 is 10 % of the robust range, above background noise.
BODY_THRESHOLD = {"CT": -0.9, "MR": -0.8}
BODY_MARGIN = 0.05  # extra side length, as a fraction of the body box


def ct_window_range(width: float = CT_WINDOW[0], level: float = CT_WINDOW[1]) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


def body_mask_2d(image: torch.Tensor, threshold: float) -> np.ndarray:
    """In-plane body footprint of a ``[1, X, Y, Z]`` volume: the largest connected component.

    The footprint is taken over the slice axis (voxels above ``threshold`` in at least 10 % of the
    slices) so one box serves the whole volume; a small opening separates the table and stray
    noise from the body before picking the largest component.
    """
    above = (image[0] > threshold).float().mean(dim=-1).cpu().numpy() >= 0.1
    opened = ndimage.binary_opening(above, structure=np.ones((3, 3), bool), iterations=2)
    labels, count = ndimage.label(opened if opened.any() else above)
    if count == 0:
        return above
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def square_body_box(
    image: torch.Tensor, threshold: float, spacing: Sequence[float], margin: float = BODY_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """Box start/end (voxels, ``[X, Y, Z]``) that is square in millimetres in-plane.

    Centred on the body's bounding box, side = longest body side (mm) x (1 + margin); the box may
    extend beyond the image (the crop then pads), and it always spans every slice.
    """
    shape = np.asarray(image.shape[1:])
    mask = body_mask_2d(image, threshold)
    if mask.any():
        rows, cols = np.nonzero(mask)
        lo = np.array([rows.min(), cols.min()], dtype=np.float64)
        hi = np.array([rows.max() + 1, cols.max() + 1], dtype=np.float64)
    else:  # nothing above the threshold: keep the whole field of view
        lo, hi = np.zeros(2), shape[:2].astype(np.float64)
    spacing_xy = np.asarray(spacing[:2], dtype=np.float64)
    side_mm = float(((hi - lo) * spacing_xy).max()) * (1.0 + margin)
    size = np.maximum(np.round(side_mm / spacing_xy), 1).astype(int)
    centre = (lo + hi) / 2.0
    start = np.floor(centre - size / 2.0 + 0.5).astype(int)
    box_start = np.array([start[0], start[1], 0])
    box_end = np.array([start[0] + size[0], start[1] + size[1], shape[2]])
    return box_start, box_end


class BodyCropd(CropForegroundd):
    """Invertible square in-plane crop around the body (MONAI ``CropForegroundd`` underneath).

    The box comes from :func:`square_body_box` on ``source_key``; the crop and any padding are
    recorded like ``CropForegroundd``'s, so ``Invertd`` restores the original extent. Padding uses
    ``pad_value`` for the source (-1 = background in [-1, 1]) and 0 for the other keys.
    """

    def __init__(
        self,
        keys,
        source_key: str,
        threshold: float,
        margin: float = BODY_MARGIN,
        pad_value: float = -1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, source_key=source_key, allow_missing_keys=allow_missing_keys)
        self.threshold = threshold
        self.margin = margin
        self.pad_value = pad_value

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict:
        d = dict(data)
        source = d[self.source_key]
        spacing = _spacing(source)
        box_start, box_end = square_body_box(source, self.threshold, spacing, self.margin)
        for key in self.key_iterator(d):
            value = self.pad_value if key == self.source_key else 0.0
            d[key] = self.cropper.crop_pad(
                img=d[key], box_start=box_start, box_end=box_end, mode="constant", value=value
            )
        return d


class InPlaneAntiAliasd(MapTransform):
    """Gaussian low-pass in-plane before a downsampling resize (sigma = (factor - 1) / 2).

    MONAI's ``Resize(anti_aliasing=True)`` smooths in 3-D and takes ~10 s on a 512^2 x 78 CT here;
    scipy's separable in-plane filter does the same job in ~0.2 s. Not spatial, so nothing to
    invert; upsampled axes are left untouched.
    """

    def __init__(self, keys, spatial_size: Sequence[int], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            factors = np.asarray(image.shape[1:3], dtype=np.float64) / np.asarray(self.spatial_size)
            sigma = np.maximum((factors - 1.0) / 2.0, 0.0)
            if not sigma.any():
                continue
            array = image[0].detach().cpu().numpy()
            smoothed = ndimage.gaussian_filter(array, sigma=(*sigma, 0.0), mode="nearest", truncate=3.0)
            out = image.clone()
            out[0] = torch.from_numpy(smoothed)
            d[key] = out
        return d


def _spacing(image: torch.Tensor) -> np.ndarray:
    affine = getattr(image, "affine", None)
    if affine is None:
        return np.ones(3)
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def intensity_transform(modality: str, key: str = "image", ct_window: tuple[float, float] = CT_WINDOW):
    """CT: window in HU -> [-1, 1] (clipped). MRI: robust percentiles -> [-1, 1] (clipped)."""
    modality = modality_name(modality)
    if modality == "CT":
        a_min, a_max = ct_window_range(*ct_window)
        return ScaleIntensityRanged(keys=key, a_min=a_min, a_max=a_max, b_min=-1.0, b_max=1.0, clip=True)
    if modality == "MR":
        lower, upper = MR_PERCENTILES
        return ScaleIntensityRangePercentilesd(
            keys=key, lower=lower, upper=upper, b_min=-1.0, b_max=1.0, clip=True
        )
    raise ValueError(f"unknown modality {modality!r}: expected 'CT' or 'MR'")


def preprocess(
    modality: str,
    spatial_size: int | Sequence[int] = 128,
    keys: Sequence[str] = ("image", "label"),
    ct_window: tuple[float, float] = CT_WINDOW,
    margin: float = BODY_MARGIN,
) -> Compose:
    """The invertible model-space pipeline for one modality.

    ``keys[0]`` is the image; any further keys are label maps (nearest-neighbour, float32 {0, 1}).
    Missing label keys are allowed, so the same ``Compose`` serves inference on images alone.
    Output: ``[1, S, S, Z]`` with ``Z`` the number of input slices, in ``CANONICAL_AXCODES``.
    """
    modality = modality_name(modality)
    if isinstance(spatial_size, int):
        spatial_size = (spatial_size, spatial_size)
    spatial_size = tuple(int(s) for s in spatial_size)
    if len(spatial_size) != 2:
        raise ValueError(f"spatial_size is in-plane (S or (S, S)), got {spatial_size}")
    keys = list(keys)
    image_key, label_keys = keys[0], keys[1:]
    steps = [
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True, allow_missing_keys=True),
        Orientationd(keys=keys, axcodes=CANONICAL_AXCODES, labels=RAS_LABELS, allow_missing_keys=True),
        intensity_transform(modality, image_key, ct_window),
        BodyCropd(
            keys=keys,
            source_key=image_key,
            threshold=BODY_THRESHOLD[modality],
            margin=margin,
            allow_missing_keys=True,
        ),
        InPlaneAntiAliasd(keys=image_key, spatial_size=spatial_size),
        # trilinear with the slice count unchanged samples every slice exactly: bilinear in-plane
        Resized(keys=image_key, spatial_size=(*spatial_size, -1), mode="trilinear", align_corners=False),
    ]
    if label_keys:
        steps += [
            Resized(
                keys=label_keys, spatial_size=(*spatial_size, -1), mode="nearest-exact", allow_missing_keys=True
            ),
            CastToTyped(keys=label_keys, dtype=torch.float32, allow_missing_keys=True),
        ]
    return Compose(steps)

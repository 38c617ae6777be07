"""The Python API: ``from medsemgan import load_model, segment``.

``load_model(bundle=None, ...)`` loads the segmentation model once (the bundle's generator and
encoders, or with ``unet_weights=`` the supervised U-Net baseline); ``segment(model, x)`` segments
one volume and returns the liver mask on ``x``'s own grid, in ``x``'s own kind:

=================================== ====================================================
``x``                               the mask (``probability`` the same, float32)
=================================== ====================================================
a path (NIfTI, NRRD, DICOM folder)  ``nibabel.Nifti1Image`` uint8, the input's RAS affine
a ``nibabel`` image                 ``nibabel.Nifti1Image`` uint8, ``x.affine``
a MONAI ``MetaTensor``              ``MetaTensor`` uint8, ``x``'s shape and affine
a numpy array / torch tensor        numpy uint8 array of ``x``'s shape (``affine=`` required)
=================================== ====================================================

Arrays are ``[X, Y, Z]`` (or ``[1, X, Y, Z]``) in the voxel axes of a voxel -> RAS mm affine, as
nibabel and MONAI give them. The geometry path is the one ``medsemgan segment`` runs
(``medsemgan.inference.segment.predict_volume``): canonical orientation, CT window / MRI
percentiles, body crop, resize, the model, and MONAI ``Invertd`` back to the input's grid.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medsemgan.errors import InputError

__all__ = ["load_model", "segment"]


def load_model(bundle: str | os.PathLike | None = None, *, config: str | os.PathLike | None = None,
               generator: str | os.PathLike | None = None, encoder: str | os.PathLike | None = None,
               unet_weights: str | os.PathLike | None = None, device: str | torch.device = "auto"):
    """The model ``segment`` runs, on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N').

    ``bundle``: a bundle folder (default: as ``medsemgan segment`` finds it: ``$MEDSEMGAN_BUNDLE``,
    the checkout's ``bundles/medsemgan_liver``, the user folder). ``generator``/``encoder``: weight
    files instead of the bundle's. ``unet_weights``: the U-Net baseline of ``medsemgan train unet``
    instead of the generative model."""
    import argparse

    from medsemgan.inference.model import resolve_device
    from medsemgan.inference.segment import load_model as load_from_args

    target = resolve_device(device)
    if unet_weights is not None:
        from medsemgan.inference.unet import UNetSegmenter

        return UNetSegmenter.from_file(unet_weights).to(target)
    args = argparse.Namespace(bundle=None if bundle is None else os.fspath(bundle), config=config,
                              generator=generator, encoder=encoder)
    return load_from_args(args).to(target)


def _volume(x: Any, affine: Any, series: str | None) -> tuple[MetaTensor, str, int]:
    """``(volume [1, X, Y, Z], kind of x, dimensions of x)``."""
    import nibabel as nib

    from medsemgan.data.io import load_image, volume_from_array

    if isinstance(x, (str, os.PathLike)):
        return load_image(x, series_uid=series), "path", 3
    if isinstance(x, nib.spatialimages.SpatialImage):
        source = x.get_filename() or "<nibabel image>"
        array = np.asanyarray(x.dataobj)
        if array.dtype.kind != "f" or x.dataobj.slope != 1 or x.dataobj.inter != 0:  # apply scaling
            array = x.get_fdata(dtype=np.float32)
        return volume_from_array(array, x.affine if affine is None else affine, source), "nibabel", array.ndim
    if isinstance(x, MetaTensor):
        source = str(x.meta.get("source") or x.meta.get("filename_or_obj") or "<MetaTensor>")
        volume = volume_from_array(x.as_tensor(), x.affine if affine is None else affine, source,
                                   str(x.meta.get("modality", "") or ""))
        return volume, "metatensor", x.ndim
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return volume_from_array(x, affine, "<array>"), "array", x.ndim
    raise InputError(None, f"segment() takes a path, a nibabel image, a MetaTensor or an array with an "
                           f"affine, not {type(x).__name__}")


def _as_kind(volume: torch.Tensor, affine: torch.Tensor, kind: str, ndim: int, dtype):
    """``volume`` ([1, X, Y, Z] on the input's grid) in the kind the input came as."""
    from medsemgan.inference.writers import nifti_image

    plain = torch.as_tensor(volume).detach().cpu()
    if kind in ("path", "nibabel"):
        return nifti_image(plain, affine, dtype)
    array = plain.numpy().astype(dtype, copy=False)
    if ndim == 3:
        array = array[0]
    if kind == "metatensor":
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.as_tensor(affine).clone())
    return array


def segment(model, x, *, affine=None, series: str | None = None, modality: str | None = None,
            steps: int | None = None, encoder_only: bool = False, seed: int | None = None,
            batch_size: int | None = None, threshold: float = 0.5, progress: bool = False,
            return_probability: bool = False, return_extras: bool = False):
    """The liver mask of ``x`` (uint8, 1 = liver) on ``x``'s grid, in ``x``'s kind (module doc).

    ``affine``: voxel -> RAS mm, required with a plain array (overrides an image's own).
    ``series``: the series of a multi-series DICOM folder (UID, SeriesNumber or ``none``).
    ``modality``: 'CT' or 'MR' (default: the DICOM tag, the catalogue, else a guess from the
    intensities). ``steps``/``encoder_only``/``seed``/``batch_size``: the test-time optimisation
    (``medsemgan segment``'s options; ignored by the U-Net).

    Returns the mask; with ``return_probability`` and/or ``return_extras`` a tuple ``(mask,
    probability, extras)`` holding the ones asked for, in that order. ``extras``: modality and
    where it came from, ``liver_voxels``, ``liver_volume_ml``, seconds, and for the generative
    model the per-slice reconstruction errors and the out-of-domain verdict.
    """
    from medsemgan.inference.segment import SegmentOptions, segment_volume
    from medsemgan.inference.unet import UNetSegmenter, segment_volume_unet

    volume, kind, ndim = _volume(x, affine, series)
    if isinstance(model, UNetSegmenter):
        mask, extras = segment_volume_unet(volume, model, modality, batch_size or 32, threshold,
                                           save_prob=return_probability)
    elif hasattr(model, "generator") and hasattr(model, "encoder"):
        options = SegmentOptions(steps=steps, encoder_only=encoder_only, batch_size=batch_size, seed=seed,
                                 modality=modality, save_prob=return_probability, threshold=threshold,
                                 progress=progress)
        mask, extras = segment_volume(volume, model, options)
    else:
        raise InputError(None, f"segment() needs a model from medsemgan.load_model(), not {type(model).__name__}")
    grid = volume.affine
    result = [_as_kind(mask, grid, kind, ndim, np.uint8)]
    probability = extras.pop("probability", None)
    if return_probability:
        result.append(_as_kind(probability, grid, kind, ndim, np.float32))
    if return_extras:
        result.append(extras)
    return result[0] if len(result) == 1 else tuple(result)

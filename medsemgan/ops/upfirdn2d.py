"""upfirdn2d: upsample by zero insertion, pad, convolve with a 2-D FIR filter, downsample.

Public entry points: :func:`upfirdn2d`, :func:`setup_filter`, :func:`upsample2d`,
:func:`downsample2d`, :func:`filter2d`. The reference path is plain PyTorch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v


def _padding4(padding) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) from an int, a pair (px, py) or four values."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = tuple(int(p) for p in padding)
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return padding  # type: ignore[return-value]
    raise ValueError(f"padding must have 1, 2 or 4 values, got {padding}")


def setup_filter(
    f: Sequence[float] | torch.Tensor | None,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    separable: bool | None = None,
    gain: float = 1.0,
) -> torch.Tensor:
    """Turn a 1-D or 2-D list of taps into a float32 filter tensor (outer product for 1-D)."""
    f = torch.ones([1], dtype=torch.float32) if f is None else torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _filter_size(f: torch.Tensor) -> tuple[int, int]:
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[-1], f.shape[-2]


def upfirdn2d_reference(
    x: torch.Tensor,
    f: torch.Tensor,
    up=1,
    down=1,
    padding=0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Pure-PyTorch definition of the op. ``x``: [N, C, H, W]; ``f``: [fh, fw] or [ft] (separable)."""
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    n, c, h, w = x.shape

    # Upsample by inserting zeros.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(n, c, h * upy, w * upx)

    # Pad (positive) or crop (negative).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]

    # Convolve (conv2d is correlation, so flip unless asked not to) with a depthwise filter.
    f = f.to(dtype=x.dtype, device=x.device) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)

    # Downsample by taking every down-th sample.
    return x[:, :, ::downy, ::downx]


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0, impl: str | None = None):
    """See :func:`upfirdn2d_reference`; ``impl`` as in :func:`medsemgan.ops.bias_act.bias_act`."""
    return upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def filter2d(x, f, padding=0, flip_filter=False, gain=1.0, impl=None):
    """Filter with ``f`` keeping the size (padding added to keep H, W)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1.0, impl=None):
    """Upsample by ``up`` with filter ``f`` (gain scaled by up^2 to keep the mean)."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [
        px0 + (fw + upx - 1) // 2,
        px1 + (fw - upx) // 2,
        py0 + (fh + upy - 1) // 2,
        py1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1.0, impl=None):
    """Low-pass with ``f`` then downsample by ``down``."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [
        px0 + (fw - downx + 1) // 2,
        px1 + (fw - downx) // 2,
        py0 + (fh - downy + 1) // 2,
        py1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)

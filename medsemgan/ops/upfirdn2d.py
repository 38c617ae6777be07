"""upfirdn2d: upsample by zero insertion, pad, convolve with a 2-D FIR filter, downsample.

Public entry points: :func:`upfirdn2d`, :func:`setup_filter`, :func:`upsample2d`,
:func:`downsample2d`, :func:`filter2d`.

Paths computing the same function:

- the reference (:func:`upfirdn2d_reference`): zero insertion, ``F.pad`` and a grouped conv;
- :class:`_Upfirdn2dFunction` around a *backend* with the signature
  ``upfirdn2d(x, k, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1)``, where ``k`` is
  the 2-D correlation kernel (flip and gain applied). Backends: the compiled extensions (math of
  ``csrc/upfirdn2d.h``; CUDA for CUDA tensors, and the CPU extension) and
  :class:`ConvBackend`, the same op as one depthwise strided (transposed) convolution (pure
  PyTorch; measured against the compiled loop by ``medsemgan bench ops``, see docs/ops.md). The
  Function's backward is the same op with up/down swapped and the kernel flipped, so it is
  differentiable again (second derivatives for R1 / path length).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from medsemgan.ops import loader


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


def is_channels_last(x: torch.Tensor) -> bool:
    """NHWC and not also NCHW (a one-channel or 1x1 tensor is both, and counts as NCHW)."""
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class ConvBackend:
    """upfirdn2d as one depthwise strided convolution (down/filter) or depthwise strided
    transposed convolution (up): no zero-inserted intermediate, no per-pixel index arithmetic.

    Pure PyTorch, so it runs wherever torch runs; on the CPU its oneDNN kernels are vectorised.
    """

    @staticmethod
    def upfirdn2d(x, k, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1):
        c = x.shape[1]
        k_h, k_w = k.shape
        weight = k.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
        if up_x > 1 or up_y > 1:
            # A stride-`up` transposed convolution with flip(k) is the full correlation of the
            # zero-inserted input with k; the padding then becomes a crop (or zero pad) of it.
            y = F.conv_transpose2d(x, weight.flip([2, 3]), stride=(up_y, up_x), groups=c)
            y = F.pad(y, [pad_x0 - (k_w - 1), pad_x1 - k_w + up_x, pad_y0 - (k_h - 1), pad_y1 - k_h + up_y])
            if down_x > 1 or down_y > 1:
                layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
                y = y[:, :, ::down_y, ::down_x].contiguous(memory_format=layout)
            return y
        if pad_x0 == pad_x1 >= 0 and pad_y0 == pad_y1 >= 0:
            return F.conv2d(x, weight, stride=(down_y, down_x), padding=(pad_y0, pad_x0), groups=c)
        return F.conv2d(F.pad(x, [pad_x0, pad_x1, pad_y0, pad_y1]), weight, stride=(down_y, down_x), groups=c)


def correlation_kernel(f: torch.Tensor, flip_filter: bool, gain: float, dtype: torch.dtype) -> torch.Tensor:
    """The 2-D kernel that backends correlate with: outer product of a separable filter, times
    ``gain``, flipped unless ``flip_filter`` (the op convolves, backends correlate)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    k = f.to(compute)
    if k.ndim == 1:
        k = torch.outer(k, k)
    k = k * gain
    if not flip_filter:
        k = k.flip([0, 1])
    return k.contiguous()


class _Upfirdn2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, backend, config):
        y = backend.upfirdn2d(x, k, *config)
        ctx.backend, ctx.config, ctx.k = backend, config, k
        ctx.in_size = (x.shape[2], x.shape[3])
        return y

    @staticmethod
    def backward(ctx, dy):
        up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1 = ctx.config
        in_h, in_w = ctx.in_size
        out_h, out_w = dy.shape[2], dy.shape[3]
        k_h, k_w = ctx.k.shape
        # The adjoint: zero-insert by `down`, convolve where the forward correlated (flip the
        # kernel), crop to the input's padded window, keep every `up`-th sample.
        adjoint = (
            down_x,
            down_y,
            up_x,
            up_y,
            k_w - 1 - pad_x0,
            in_w * up_x - out_w * down_x + pad_x0 - up_x + 1,
            k_h - 1 - pad_y0,
            in_h * up_y - out_h * down_y + pad_y0 - up_y + 1,
        )
        dx = _Upfirdn2dFunction.apply(dy, ctx.k.flip([0, 1]), ctx.backend, adjoint)
        return dx, None, None, None


# Which backend serves CPU tensors when impl=None. float32/64: the compiled per-pixel loop, which
# beat the depthwise (transposed) convolutions in `medsemgan bench ops` (docs/ops.md).
# bfloat16/float16: the convolutions, whose oneDNN kernels are vectorised for bf16 and keep a
# channels_last input in NHWC (no layout copies): `medsemgan bench train` 1.56x -> 1.68x.
CPU_DEFAULT_BACKEND = "fused"
CPU_HALF_BACKEND = "conv"
_HALF = (torch.bfloat16, torch.float16)


def _backend(x: torch.Tensor, f: torch.Tensor, impl: str | None):
    """The backend object for this call, or None for the reference."""
    if impl not in (None, "reference", "fused", "conv"):
        raise ValueError(f"impl must be None, 'reference', 'fused' or 'conv', got {impl!r}")
    if impl == "reference" or loader.mode() == "reference":
        return None
    if f.requires_grad or not x.is_floating_point() or x.dtype not in _DTYPES:
        return None  # gradients w.r.t. the filter only on the reference path
    if impl == "conv":
        return ConvBackend
    if x.device.type == "cuda":
        return loader.extension("cuda")
    if x.device.type != "cpu":
        return None
    chosen = CPU_HALF_BACKEND if x.dtype in _HALF else CPU_DEFAULT_BACKEND
    if impl is None and chosen == "conv":
        return ConvBackend
    return loader.extension("cpu")


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0, impl: str | None = None):
    """Upsample ``x`` [N, C, H, W] by ``up``, pad, convolve with ``f``, downsample by ``down``.

    ``f``: [fh, fw], or [ft] for a separable filter (see :func:`setup_filter`); ``padding``: an
    int, (px, py) or (x0, x1, y0, y1), negative values crop. ``impl``: None (fastest available),
    'fused' (compiled extension; reference with one warning when it cannot be built), 'conv'
    (:class:`ConvBackend`) or 'reference'. ``MEDSEMGAN_OPS=reference`` forces the reference.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    backend = _backend(x, f, impl)
    if backend is None:
        return upfirdn2d_reference(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    if min(upx, upy, downx, downy) < 1:
        raise ValueError(f"up and down must be >= 1, got up={up}, down={down}")
    k = correlation_kernel(f.to(x.device), flip_filter, gain, x.dtype)
    span_h = x.shape[2] * upy + py0 + py1 - k.shape[0]
    span_w = x.shape[3] * upx + px0 + px1 - k.shape[1]
    if span_h < 0 or span_w < 0:
        raise ValueError(
            f"upfirdn2d: the padded input ({tuple(x.shape[2:])} up {up}, padding {padding}) is "
            f"smaller than the filter {tuple(k.shape)}"
        )
    return _Upfirdn2dFunction.apply(x, k, backend, (upx, upy, downx, downy, px0, px1, py0, py1))


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

"""Custom ops of the StyleGAN2 generator: fused bias+activation and upfirdn2d.

Each op has a pure-PyTorch reference and compiled paths (CPU extension, CUDA kernels; the
per-element math is shared in ``csrc/*.h``), built lazily on first use by
:mod:`medsemgan.ops.loader` (never at import). ``MEDSEMGAN_OPS=reference`` forces the reference
path, ``MEDSEMGAN_OPS=fused`` makes a failed build an error. See docs/ops.md.
"""

"""Custom ops of the StyleGAN2 generator: fused bias+activation and upfirdn2d.

Each op has a pure-PyTorch reference and a compiled path (CPU OpenMP extension, CUDA kernels)
built lazily on first use; ``MEDSEMGAN_OPS=reference`` forces the reference path.
"""

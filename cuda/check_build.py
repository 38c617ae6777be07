"""CUDA compile check (``make cuda-check``): build the CUDA extension with the local toolchain,
import it, and check that it refuses CPU tensors with a clean error instead of crashing.

Runs in ``.venv-cuda`` (a CUDA build of torch, ninja, numpy): it needs neither a GPU nor the rest
of medsemgan's dependencies (the repository is put on ``sys.path``; only ``medsemgan.ops.loader``
and ``medsemgan.paths`` are imported). Builds from scratch into a temporary cache each run, so
the reported time is a real build; ``--keep DIR`` keeps the build in DIR instead.
With a GPU present it also compares the kernels with the reference ops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _fail(message: str) -> int:
    print(f"cuda-check: FAILED: {message}", file=sys.stderr)
    return 1


def _expect_clean_error(call, what: str) -> str:
    try:
        call()
    except RuntimeError as err:
        message = str(err).splitlines()[0]
        if "expects CUDA tensors" not in message:
            raise AssertionError(f"{what}: unexpected error text: {message}") from err
        return message
    raise AssertionError(f"{what}: a CPU tensor was accepted by the CUDA extension")


def _gpu_smoke(module) -> dict:
    """On a GPU machine: the kernels against the reference ops, forward only, float64."""
    import torch

    from medsemgan.ops.bias_act import bias_act_reference
    from medsemgan.ops.upfirdn2d import correlation_kernel, setup_filter, upfirdn2d_reference

    x = torch.randn(2, 8, 9, 10, dtype=torch.float64, device="cuda")
    b = torch.randn(8, dtype=torch.float64, device="cuda")
    y = module.bias_act(x, b, None, 1, 1, 0.2, 2**0.5, 0.7)
    err_ba = (y - bias_act_reference(x, b, act="lrelu", clamp=0.7)).abs().max().item()
    f = setup_filter([1, 3, 3, 1], device="cuda")
    k = correlation_kernel(f, False, 4.0, x.dtype)
    z = module.upfirdn2d(x, k, 2, 2, 1, 1, 2, 1, 2, 1)
    err_up = (z - upfirdn2d_reference(x, f, up=2, padding=[2, 1, 2, 1], gain=4.0)).abs().max().item()
    return {"bias_act_max_abs_err": err_ba, "upfirdn2d_max_abs_err": err_up}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build cache directory to keep (default: a temporary one)")
    args = parser.parse_args(argv)

    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")  # unset + no GPU: torch raises IndexError
    os.environ["MEDSEMGAN_OPS"] = "fused"
    cache = args.keep or Path(tempfile.mkdtemp(prefix="medsemgan-cuda-check-"))
    os.environ["MEDSEMGAN_OPS_CACHE"] = str(cache)

    import torch

    if torch.version.cuda is None:
        return _fail(f"torch {torch.__version__} is a CPU build; run this in .venv-cuda (make cuda-check)")
    nvcc = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
    if not nvcc.exists():
        return _fail(f"nvcc not found at {nvcc}; set CUDA_HOME")
    nvcc_version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout.strip()

    from medsemgan.ops import loader

    started = time.perf_counter()
    try:
        module = loader.build("cuda")
    except Exception as err:  # noqa: BLE001 - report the compiler output and fail
        return _fail(f"build failed: {err}")
    build_s = time.perf_counter() - started

    x = torch.randn(2, 3, 4, 4)
    k = torch.ones(2, 2)
    errors = {
        "bias_act": _expect_clean_error(lambda: module.bias_act(x, None, None, 1, 1, 0.2, 1.0, -1.0), "bias_act"),
        "upfirdn2d": _expect_clean_error(lambda: module.upfirdn2d(x, k, 1, 1, 1, 1, 0, 0, 0, 0), "upfirdn2d"),
    }
    report = {
        "cuda_check": "ok",
        "build_s": round(build_s, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "nvcc": nvcc_version.splitlines()[-1] if nvcc_version else None,
        "arch_list": os.environ["TORCH_CUDA_ARCH_LIST"],
        "module": module.__name__,
        "cpu_tensor_errors": errors,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        report["gpu_smoke"] = _gpu_smoke(module)
    print(json.dumps(report, indent=2))
    if args.keep is None:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``medsemgan bench ops``: forward+backward time of each custom op, compiled vs reference, on the CPU.

All paths of one case run interleaved in the same loop (repeat r runs every path once before
repeat r+1), and medians are reported, so a noisy shared machine biases no path. The top-level
``speedup`` is reference time / fused time summed over the generator's element-wise work
(the ``bias_act`` cases in float32, the generator's sizes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import time

import torch

from medsemgan.machine import cpu_model
from medsemgan.ops import loader
from medsemgan.ops.bias_act import bias_act
from medsemgan.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upsample2d
from medsemgan.runtime import restores_torch_threads

# name -> (shape, dtype): the generator's bias+lrelu after a 3x3 conv at 32 px / 128 px (batch 4,
# 256 / 64 channels) and the mapping network's fully connected layers.
BIAS_ACT_CASES = {
    "bias_act_lrelu_4x256x32x32": ([4, 256, 32, 32], torch.float32),
    "bias_act_lrelu_4x64x128x128": ([4, 64, 128, 128], torch.float32),
    "bias_act_lrelu_mapping_4x512": ([4, 512], torch.float32),
}
BIAS_ACT_BF16_CASES = {
    "bias_act_lrelu_4x64x128x128_bf16": ([4, 64, 128, 128], torch.bfloat16),
}
# name -> (op, shape): upsampling before a 3x3 conv, the image/label skip upsampling,
# the discriminator's low-pass before a stride-2 conv, and a plain blur.
# The `_cl` cases use channels-last tensors (the training's `channels_last` lever).
UPFIRDN_CASES = {
    "upsample2d_4x256x32x32": ("up", [4, 256, 32, 32], False),
    "upsample2d_skip_4x2x64x64": ("up", [4, 2, 64, 64], False),
    "downsample2d_4x64x128x128": ("down", [4, 64, 128, 128], False),
    "filter2d_4x128x64x64": ("filter", [4, 128, 64, 64], False),
    "upsample2d_4x256x32x32_cl": ("up", [4, 256, 32, 32], True),
    "downsample2d_4x64x128x128_cl": ("down", [4, 64, 128, 128], True),
    "filter2d_4x128x64x64_cl": ("filter", [4, 128, 64, 64], True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per path (median reported)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="3 repeats, smaller tensors (smoke test)")


def _bias_act_step(shape, dtype, impl):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    b = torch.randn(shape[1], dtype=dtype, requires_grad=True)
    dy = torch.randn(shape, dtype=dtype)

    def step():
        x.grad = b.grad = None
        bias_act(x, b, act="lrelu", impl=impl).backward(dy)

    return step


def _upfirdn_step(op, shape, channels_last, impl):
    f = setup_filter([1, 3, 3, 1])
    fn = {"up": upsample2d, "down": downsample2d, "filter": filter2d}[op]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).to(memory_format=layout).requires_grad_()
    dy = torch.randn(fn(x.detach(), f, impl="reference").shape).to(memory_format=layout)

    def step():
        x.grad = None
        fn(x, f, impl=impl).backward(dy)

    return step


def _time_interleaved(steps: dict, repeats: int) -> dict:
    for step in steps.values():  # warm-up: first-use builds, allocator, oneDNN primitive caches
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def _shrink(shape, quick):
    return [shape[0]] + [max(1, s // 4) if quick and s > 8 else s for s in shape[1:]]


@restores_torch_threads
def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(max(1, args.threads))
    repeats = 3 if args.quick else max(1, args.repeats)
    torch.manual_seed(0)
    started = time.perf_counter()
    compiled_cpu = loader.extension("cpu") is not None
    load_s = time.perf_counter() - started

    results: dict[str, dict] = {}
    for name, (shape, dtype) in {**BIAS_ACT_CASES, **BIAS_ACT_BF16_CASES}.items():
        shape = _shrink(shape, args.quick)
        ms = _time_interleaved(
            {p: _bias_act_step(shape, dtype, p) for p in ("reference", "fused")}, repeats
        )
        results[name] = _summarise(shape, dtype, ms)
    for name, (op, shape, channels_last) in UPFIRDN_CASES.items():
        shape = _shrink(shape, args.quick)
        ms = _time_interleaved(
            {p: _upfirdn_step(op, shape, channels_last, p) for p in ("reference", "fused", "conv")}, repeats
        )
        results[name] = _summarise(shape, torch.float32, ms)

    def total(names, path):
        return sum(results[n][f"{path}_ms"] for n in names)

    elementwise = list(BIAS_ACT_CASES)
    speedup = total(elementwise, "reference") / total(elementwise, "fused")
    upfirdn = list(UPFIRDN_CASES)
    return {
        "benchmark": "ops",
        "what": "forward+backward per op on the CPU; median ms over interleaved repeats",
        "speedup": round(speedup, 2),
        "speedup_definition": "reference / fused, summed over the float32 bias_act cases "
        "(the generator's element-wise work)",
        "upfirdn2d_speedup": {
            path: round(total(upfirdn, "reference") / total(upfirdn, path), 2) for path in ("fused", "conv")
        },
        "compiled_cpu_extension": compiled_cpu,
        "extension_load_or_build_s": round(load_s, 1),
        "ops": results,
        "repeats": repeats,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "ops_mode": loader.mode(),
    }


def _summarise(shape, dtype, ms: dict) -> dict:
    out = {"shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
    for path, value in ms.items():
        out[f"{path}_ms"] = round(value, 3)
    for path in ms:
        if path != "reference":
            out[f"speedup_{path}"] = round(ms["reference"] / ms[path], 2)
    return out

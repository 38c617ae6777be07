"""Multi-process data-parallel training under ``torchrun`` (NCCL on GPUs, gloo on CPUs).

Why not ``DistributedDataParallel``: the GAN step runs several forward/backward passes per
module per iteration, and R1 / path length need double backward (``create_graph=True``), which
DDP's reducer hooks do not support together with partially used parameters (the label head gets
no gradient in the image-D step, the image head none from the joint term). Instead each process
computes its gradients with the plain module and :func:`average_gradients` all-reduces them in one
flat buffer before every optimiser step. Every rank starts from rank 0's weights
(:func:`broadcast_module`) and applies the same averaged gradients with the same optimiser, so
the weights stay identical without ever being sent again.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (env://), or return a single-process DistInfo.

    ``device``: 'auto' (CUDA if available), 'cpu', or 'cuda'. Each rank uses cuda:LOCAL_RANK.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if not launched_by_torchrun():
        dev = torch.device(device if device not in ("auto",) else ("cuda" if use_cuda else "cpu"))
        return DistInfo(device=dev)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers with rank ``src``'s."""
    if not info.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce the mean gradient of ``params`` across ranks (missing grads count as zero)."""
    if not info.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is left as it was)."""
    if not info.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


@torch.no_grad()
def sync_float_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (e.g. the generator's w_avg tracked from local z)."""
    if not info.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= info.world_size

"""How a training run spreads over the machine: processes x threads.

On a CPU the GAN step is a chain of small convolutions that one process cannot spread well over
several cores (measured on 2 cores: 1 thread 182 vs 2 threads 172 wall s/kimg), while two
processes with one thread each train data-parallel through the gloo path of
``medsemgan.training.distributed`` at nearly twice the rate (``medsemgan bench throughput``,
docs/benchmarks.md). So ``training.processes: auto`` means: on a CPU machine with at least two
cores, two processes sharing the cores' threads; on GPUs, one process (``torchrun`` for several).

``train gan`` re-launches itself under PyTorch's elastic launcher (``torchrun --standalone``)
when the layout asks for more than one process; each worker then sees ``WORLD_SIZE`` and trains.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from medsemgan.errors import InputError
from medsemgan.training.distributed import launched_by_torchrun

log = logging.getLogger(__name__)

CPU_PROCESSES = 2  # data-parallel processes on a CPU machine (see the module docstring)


@dataclass(frozen=True)
class Layout:
    processes: int
    threads: int | None  # per process; None = torch's default

    def describe(self) -> str:
        threads = "default" if self.threads is None else str(self.threads)
        return f"{self.processes} process(es) x {threads} thread(s)"


def _uses_cuda(device: str) -> bool:
    return torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")


def plan_layout(device: str, processes: int | str | None, threads: int | None,
                cores: int | None = None) -> Layout:
    """The layout for ``training.device/processes/threads`` on a machine with ``cores`` cores."""
    cores = cores or os.cpu_count() or 1
    if processes in (None, "auto"):
        processes = 1 if _uses_cuda(device) or cores < 2 else CPU_PROCESSES
    try:
        processes = int(processes)
    except (TypeError, ValueError):
        raise InputError(None, f"training.processes must be 'auto' or a positive integer, got {processes!r}") from None
    if processes < 1:
        raise InputError(None, f"training.processes must be >= 1, got {processes}")
    if threads is None and not _uses_cuda(device):
        threads = max(1, cores // processes)
    return Layout(processes, None if threads is None else int(threads))


def needs_launch(layout: Layout) -> bool:
    """More than one process asked for, and we are not one of torchrun's workers already."""
    return layout.processes > 1 and not launched_by_torchrun()


def launch(layout: Layout, module_args: list[str]) -> int:
    """Run ``python -m medsemgan.cli <module_args>`` as ``layout.processes`` torchrun workers.

    Returns the exit code: 0 when every worker finished, the first failing worker's code
    otherwise (a worker stopped by SIGINT/SIGTERM checkpoints first and exits 130/143).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    launcher_args = get_args_parser().parse_args([
        "--standalone", f"--nproc_per_node={layout.processes}", "--max_restarts=0",
        "-m", "medsemgan.cli", *module_args,
    ])
    log.info("launching %s (torchrun --standalone, gloo on CPU)", layout.describe())
    os.environ.setdefault("OMP_NUM_THREADS", str(layout.threads or 1))
    try:
        run(launcher_args)
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return next((abs(c) for c in codes if c), 1)
    except SignalException as err:
        # The launcher passed the signal on to the workers and waited for them (they finish the
        # iteration and checkpoint); exit as a process stopped by that signal would.
        log.warning("stopped by %s: the workers checkpointed; resume with --resume", err.sigval.name)
        return 128 + int(err.sigval)
    return 0

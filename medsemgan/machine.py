"""What machine a measurement ran on: the CPU model, cores, load, versions.

One home for the benchmarks' machine records and for the per-CPU caches (the lever probe), so a
number recorded on an AMD EPYC is never mistaken for one from an Intel Xeon.
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """A record for benchmark JSON: CPU, cores, load average, torch threads and versions."""
    import torch

    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        # Other jobs on a shared machine inflate wall times; see the cpu_s figures then.
        "load_average_1_5_15min": load,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }

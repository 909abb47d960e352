"""Where measurements were taken: CPU model, cores, torch threads, library versions, GPU (no host or user names).

>>> isinstance(cpu_model(), str)
True
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import transformers


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what ``platform`` knows (``"unknown"`` at worst)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where measurements were taken: CPU model, cores, torch threads, library versions and GPU (if any).

    No host name, user name or path is included, so the result can go into a published report.

    >>> info = machine_info()
    >>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
    ['cpu', 'cpu_count', 'gpu', 'platform', 'python', 'torch', 'torch_threads', 'transformers', 'usable_cpus']
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }

"""Where measurements were taken: CPU model, cores, torch threads, library versions, GPU (no host or user names),
and how busy the machine was (load average) when latency was timed.

>>> isinstance(cpu_model(), str)
True
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import transformers

#: A latency's interquartile range above this fraction of its median is reported as a wide spread.
WIDE_SPREAD = 0.25


def load_average() -> float | None:
    """The 1-minute load average (runnable plus waiting threads, averaged over the last minute), or ``None``
    where the system does not report one (Windows).

    >>> value = load_average()
    >>> value is None or value >= 0
    True
    """
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_note(
    load: float | None, usable_cpus: int | None, *, relative_iqr: float | None = None
) -> str | None:
    """A sentence for a report when its latencies were timed on a busy machine, else ``None``.

    The machine counts as busy when the 1-minute load average ``load`` exceeded ``usable_cpus``: more
    threads wanted a CPU than there were CPUs, so timed passes waited their turn (the timing's own threads
    count in the load). Independently, a spread whose interquartile range exceeds :data:`WIDE_SPREAD` of the
    median (``relative_iqr``, the largest over the report) is called out.

    >>> busy_note(1.2, 2) is None
    True
    >>> busy_note(5.1, 2)[:60]
    'the machine was busy while latency was timed (1-minute load '
    >>> busy_note(1.0, 2, relative_iqr=0.4)[:40]
    'latency spread is wide (interquartile ra'
    """
    notes = []
    if load is not None and usable_cpus and load > usable_cpus:
        notes.append(
            f"the machine was busy while latency was timed (1-minute load average {load:.2f} on {usable_cpus} "
            "usable CPUs: more threads wanted a CPU than there were CPUs), so absolute latencies are inflated "
            "and noisy; the speedups are steadier (models timed side by side share the load); rerun on a quiet "
            "machine for absolute figures"
        )
    if relative_iqr is not None and relative_iqr > WIDE_SPREAD:
        notes.append(
            f"latency spread is wide (interquartile range up to {100 * relative_iqr:.0f}% of the median): two "
            "runs of the same model can differ by that much; use more latency repeats or a quieter machine"
        )
    return "; ".join(notes) or None


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

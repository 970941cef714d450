"""CPU accounting from /proc: per process, and for the whole machine (to show noise).

On a shared machine other work competes with the benchmark; every run reports the CPU
seconds the machine spent on things that were not the bench's own processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MachineCpu", "proc_cpu"]

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a live process, seconds (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _busy_seconds() -> float:
    """Busy CPU seconds of all cores since boot (user+nice+system+irq+softirq+steal)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


@dataclass
class MachineCpu:
    """Machine-wide busy CPU seconds between ``start`` and ``other``."""

    busy0: float = 0.0

    def start(self) -> MachineCpu:
        self.busy0 = _busy_seconds()
        return self

    def busy(self) -> float:
        return _busy_seconds() - self.busy0

    def other(self, own_cpu_s: float) -> float:
        """Busy seconds not spent by the bench's own processes (``own_cpu_s``)."""
        return max(0.0, self.busy() - own_cpu_s)

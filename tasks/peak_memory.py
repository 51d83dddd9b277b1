"""A process's own peak memory (resident set), for the figures the sync and the benchmarks print.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not it for a process another one started: Linux keeps
the high-water mark across ``execve``, and before it the child's memory is the parent's (Python's
``subprocess`` starts children with vfork where it can; a fork copies the parent). bench.sync's
sync reported 2,028 MB, the peak of the process that started it; its own peak was 221 MB. VmHWM
in /proc/self/status is the high-water mark of this process's own memory since its exec.
Elsewhere (no /proc: macOS, where ru_maxrss is in bytes, not KiB) the rusage figure stands.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (its exec), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024

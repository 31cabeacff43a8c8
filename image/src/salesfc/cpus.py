"""How many CPUs this process may really use: os.cpu_count() is the host's, not the container's.

A pod limited to 4 CPUs on a 64-core node sees 64 from os.cpu_count(); a thread pool that large is throttled by the
CFS quota and runs slower than 4 threads would. The budget is the smallest of the CPUs this process may run on
(sched_getaffinity: cpusets, taskset) and the cgroup's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def threads_per_process(processes: int = 1, root: Path = CGROUP) -> int:
    """Threads for each of ``processes`` processes sharing this container: the container's CPU budget divided
    between them. A single process obeys OMP_NUM_THREADS when it is set; several ignore it, because torchrun sets
    it to 1 for its workers whenever nobody else did, which would leave all but one core of the container idle."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if processes <= 1 and configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, available_cpus(root) // max(1, processes))

"""Peak resident memory of this process, in MB.

``getrusage``'s ``ru_maxrss`` survives fork and exec on Linux, so a peer started from our process
would report our peak as its own; the kernel's ``VmHWM`` belongs to the current program only.
Standalone on purpose: the peer scripts import it from their own folder in other Pythons.
"""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass  # no /proc (not Linux): getrusage, whose figure may include a parent's peak
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_rss() -> None:
    """Start a new peak (Linux: /proc/self/clear_refs "5"): a sweep runs its jobs in one process, and
    each job's row must carry its own peak, not the running one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return  # not Linux: the figure stays the process's peak so far

"""CPU seconds (user + system) of this process and its reaped children: the miniature's budget unit.

Wall time on a shared 2-core machine says more about the neighbours than about the work; CPU
seconds of the whole process tree say what an idle machine needs. Worker processes count once
they are reaped (a process pool's shutdown), which every phase of dss.mini waits for.
"""

from __future__ import annotations

import resource


def seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

"""Whether a decode ran on a busy machine, so that its timing is neither learned nor saved.

On a CPU, llama.cpp's threads all work (or spin at the barriers between operations) for the
whole of a decode, so on a quiet machine the process's CPU time over a decode is about its wall
time x threads. When other processes want the cores too, the threads wait for them: the CPU
time falls behind. Such a decode is slowed by a factor that depends on its size (a one-token
decode is mostly barriers, so mostly waiting), and the shape T(n)/T(1) learned from it is wrong
in a way no rescaling undoes: two auto runs beside two CPU-bound processes once saved
T(64)/T(1) = 1.28 next to T(48)/T(1) = 20 (about 23 and 20 when quiet).

Where the work runs elsewhere (layers on a GPU, an RPC backend) the threads sleep while they
wait, so the CPU share says nothing; there the machine's load average against its cores does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

# A CPU-bound decode whose CPU time is below this share of wall time x threads ran on a busy
# machine. Quiet, a decode reaches about 0.9-1.0 (the Python around it runs on one thread);
# with one other CPU-bound process per core, about 0.5.
MIN_QUIET_SHARE = 0.75
# Decodes shorter than this are not judged: the clocks' resolution and the Python around a
# decode weigh too much in them (a one-token decode of a 1.5B model takes 30-90 ms on a CPU).
MIN_JUDGED_SECONDS = 0.003
# Where the work is not on this machine's CPU: busy when the 1-minute load average, less this
# process's own runnable thread, exceeds the cores by this many.
LOAD_SLACK = 0.5


@dataclass
class Span:
    """Clocks read when a decode began."""

    wall: float
    cpu: float


class ContentionMeter:
    """Judges spans of work (decodes) busy or quiet, and counts both."""

    def __init__(self, threads: Optional[int] = None, cpu_bound: bool = True):
        cores = os.cpu_count() or 1
        # More threads than cores cannot all run at once even on a quiet machine.
        self.threads = max(1, min(threads or cores, cores))
        self.cpu_bound = cpu_bound
        self.busy = 0  # spans judged busy
        self.quiet = 0  # spans judged quiet

    @staticmethod
    def start() -> Span:
        return Span(time.perf_counter(), time.process_time())

    def stop(self, span: Span) -> tuple[float, bool]:
        """(wall seconds since `span`, whether the machine was busy meanwhile)."""
        wall = time.perf_counter() - span.wall
        busy = self.judge(wall, time.process_time() - span.cpu)
        if busy:
            self.busy += 1
        else:
            self.quiet += 1
        return wall, busy

    def judge(self, wall: float, cpu: float) -> bool:
        if not self.cpu_bound:
            return machine_is_loaded()
        if wall < MIN_JUDGED_SECONDS:
            return False
        return cpu < MIN_QUIET_SHARE * wall * self.threads

    @property
    def mostly_busy(self) -> bool:
        """Most spans so far were busy: even the quiet-looking ones may not have been."""
        return self.busy > self.quiet


def machine_is_loaded() -> bool:
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not on this platform: nothing tells
        return False
    return load - 1.0 > (os.cpu_count() or 1) + LOAD_SLACK

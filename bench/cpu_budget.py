"""A training budget in CPU seconds of a process tree, not wall seconds (for `bench.peers`).

On a shared machine a wall-clock budget gives each peer whatever the others left it; CPU seconds
(user + system, of this process, its finished children and its live descendants, e.g. data-loading
workers) are what each peer actually spent. Standard library only: it also runs in the Ultralytics venv.

    budget = CpuBudget(seconds=480)          # counts from now
    while not budget.reached(): train_step()
    budget.used()                            # CPU seconds since the start

`clock` is injectable (tests pass a fake one); the default is `tree_cpu_s`.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from typing import Callable

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _live_descendants_cpu_s(pid: int) -> float:
    """CPU seconds (utime + stime) of the live descendants of `pid`, from /proc (0 where /proc is absent)."""
    total, stack = 0.0, [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    children = [int(c) for c in handle.read().split()]
            except OSError:
                continue
            for child in children:
                try:
                    with open(f"/proc/{child}/stat") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)
                except (OSError, IndexError, ValueError):
                    continue
                stack.append(child)
    return total


def tree_cpu_s() -> float:
    """CPU seconds of this process, its reaped children and its live descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + _live_descendants_cpu_s(os.getpid())


@dataclass
class CpuBudget:
    """`seconds` of CPU from the moment it is made, measured by `clock`."""
    seconds: float
    clock: Callable[[], float] = tree_cpu_s
    start: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"a CPU budget must be > 0 seconds, not {self.seconds}")
        self.start = self.clock()

    def used(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.used()

    def reached(self) -> bool:
        return self.used() >= self.seconds

    def fraction(self) -> float:
        """Share of the budget spent, in [0, 1]."""
        return min(1.0, max(0.0, self.used() / self.seconds))

    def units_that_fit(self, spent_s: float, units_done: int, ceiling: int) -> int:
        """How many units (epochs, iterations) the whole budget holds at the CPU cost per unit measured so far
        (`spent_s` over `units_done`), at least `units_done` and at most `ceiling`."""
        if units_done <= 0 or spent_s <= 0:
            return ceiling
        return max(units_done, min(ceiling, int(self.seconds * units_done / spent_s)))

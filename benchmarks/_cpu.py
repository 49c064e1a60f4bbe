"""Where the CPU went during a timed window: given processes, PostgreSQL, the whole machine.

On a 2-core machine the servers, the workers, PostgreSQL, the load generator
and the SMTP sink all share two cores, so a figure means little without
knowing who used them. Linux only (``/proc``); elsewhere every figure is None.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _postgres_pids() -> list[int]:
    """Every process on the machine whose command name is ``postgres`` (the server's backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _machine() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / _TICKS, sum(fields) / _TICKS


class CpuWindow:
    """CPU used by named groups of processes between :meth:`start` and :meth:`stop`.

    Args:
        groups: name -> pids, e.g. ``{"servers": [1234, 1235]}``. PostgreSQL's
            processes are found by name and reported as ``postgres`` (backends
            that start during the window count from their start).
        reaped_as: also report, under this name, the CPU of this process's
            children that exited and were waited for during the window (e.g.
            the load generator run with ``subprocess.run``).
    """

    def __init__(
        self, groups: Mapping[str, Iterable[int]], *, reaped_as: str | None = None
    ) -> None:
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.reaped_as = reaped_as
        self._before: dict[int, float] = {}
        self._machine: tuple[float, float] | None = None
        self._children = 0.0

    def _sample(self) -> dict[int, float]:
        pids = [pid for pids in self.groups.values() for pid in pids] + _postgres_pids()
        return {pid: s for pid in pids if (s := _process_seconds(pid)) is not None}

    def start(self) -> None:
        """Take the first sample."""
        self._machine = _machine()
        self._before = self._sample()
        self._children = _reaped_seconds()

    def stop(self, wall_seconds: float) -> dict[str, Any]:
        """Cores used by each group over ``wall_seconds`` (CPU seconds / wall seconds).

        Returns:
            ``{"<group>": cores, "postgres": cores, "machine_busy": share of all
            cores (0..1), "cores": os.cpu_count(), "seconds": wall_seconds}``;
            a group is None when none of its processes could be read.
        """
        after = self._sample()
        machine = _machine()

        def cores(pids: Iterable[int]) -> float | None:
            used = [after[p] - self._before.get(p, 0.0) for p in pids if p in after]
            return round(sum(used) / wall_seconds, 2) if used and wall_seconds > 0 else None

        result: dict[str, Any] = {name: cores(pids) for name, pids in self.groups.items()}
        result["postgres"] = cores(p for p in after if p not in _all(self.groups))
        if self.reaped_as and wall_seconds > 0:
            result[self.reaped_as] = round((_reaped_seconds() - self._children) / wall_seconds, 2)
        busy = None
        if machine and self._machine and machine[1] > self._machine[1]:
            busy = round((machine[0] - self._machine[0]) / (machine[1] - self._machine[1]), 3)
        result["machine_busy"] = busy
        result["cores"] = os.cpu_count()
        result["seconds"] = round(wall_seconds, 3)
        return result


def _reaped_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _all(groups: Mapping[str, list[int]]) -> set[int]:
    return {pid for pids in groups.values() for pid in pids}

"""CPU time and memory of process trees, read from /proc (Linux), no dependencies.

CPU of a tree = user + system time of every live process in it, plus what each has collected
from children it reaped: a backend that exits mid-measurement is still counted, through the
postmaster's cutime/cstime.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")
PROJECT = Path(__file__).resolve().parent.parent


def project_env() -> dict[str, str]:
    """The environment with this checkout first on the module path (installed or not)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{path}" if path else str(PROJECT)}


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    cpu_s: float  # utime + stime + cutime + cstime


def _stat(pid: int) -> _Stat | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None  # gone since we listed it
    # Fields after the command name (which may hold spaces and parentheses): state is [0].
    rest = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(x) for x in rest[11:15])
    return _Stat(ppid=int(rest[1]), cpu_s=ticks / _TICK)


def _all_stats() -> dict[int, _Stat]:
    stats = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = s
    return stats


def tree(root: int, stats: dict[int, _Stat] | None = None) -> list[int]:
    """`root` and all its live descendants."""
    stats = _all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, s in stats.items():
        children.setdefault(s.ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the tree under `root` (including reaped children)."""
    stats = _all_stats()
    return sum(stats[pid].cpu_s for pid in tree(root, stats))


def child_count(pid: int) -> int:
    """How many children `pid` has, those that exited but are not reaped yet included: until
    the parent reaps a child, the child's CPU is in neither its /proc entry nor the parent's."""
    return sum(1 for s in _all_stats().values() if s.ppid == pid)


def parent_of(pid: int) -> int:
    """The parent process id (e.g. the postmaster of a backend)."""
    s = _stat(pid)
    if s is None:
        raise ProcessLookupError(pid)
    return s.ppid


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(root: int) -> float:
    """Resident memory of the tree now, in MB."""
    return sum(_status_kb(pid, "VmRSS") for pid in tree(root)) / 1024


def _rollup_kb(pid: int, key: str) -> int:
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_mb(root: int) -> float:
    """Proportional set size of the tree now, in MB: pages shared between its processes (or
    with others) count once in total, split between the processes that map them."""
    return sum(_rollup_kb(pid, "Pss") for pid in tree(root)) / 1024


def peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of one process's resident memory (VmHWM), in MB."""
    return _status_kb(pid, "VmHWM") / 1024


class Sampled(Protocol):
    def sample(self) -> None: ...


@dataclass(slots=True)
class RssSampler:
    """The highest resident memory (RSS, and PSS) of a process tree seen in samples every
    `interval_s`."""

    root: int
    interval_s: float = 0.25
    peak_mb: float = field(default=0.0)
    peak_pss_mb: float = field(default=0.0)
    also: list[Sampled] = field(default_factory=list)  # sampled on the same clock
    # The tree, found by reading every process's stat file (milliseconds of CPU on a busy
    # machine), is listed again only every few seconds: workers do not come and go.
    tree_every_s: float = 5.0
    _tree: list[int] = field(default_factory=list)
    _tree_at: float = field(default=-1e9)

    def _pids(self) -> list[int]:
        now = time.monotonic()
        if now - self._tree_at >= self.tree_every_s:
            self._tree, self._tree_at = tree(self.root), now
        return self._tree

    def sample(self) -> None:
        for other in self.also:
            other.sample()
        pids = self._pids()
        self.peak_mb = max(self.peak_mb, sum(_status_kb(p, "VmRSS") for p in pids) / 1024)
        self.peak_pss_mb = max(self.peak_pss_mb, sum(_rollup_kb(p, "Pss") for p in pids) / 1024)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        """Sample in the background for as long as the context lasts."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

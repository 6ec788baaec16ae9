"""What happened during a phase that can stall notifications: the service's slowest seconds (from
its own log lines' `duration_ms`), checkpoints, and autovacuum or autoanalyze runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

_BACKGROUND = """
SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter) AS checkpoints,
       coalesce(json_object_agg(relname, autovacuum_count || '/' || autoanalyze_count), '{}')
           AS maintenance
FROM pg_stat_user_tables
"""


@dataclass(frozen=True, slots=True)
class Background:
    """Checkpoints (cluster-wide) and per-table autovacuum/autoanalyze counts, at one moment."""

    checkpoints: int
    maintenance: dict[str, str]

    def since(self, before: Background) -> str:
        """What ran between `before` and this reading, in words."""
        tables = [
            f"{name} (autovacuum/autoanalyze {before.maintenance.get(name, '0/0')} -> {now})"
            for name, now in sorted(self.maintenance.items())
            if before.maintenance.get(name, "0/0") != now
        ]
        parts = [f"{self.checkpoints - before.checkpoints} checkpoint(s)"]
        parts.append("maintenance on " + ", ".join(tables) if tables else "no autovacuum")
        return "; ".join(parts)


async def background(conn: asyncpg.Connection) -> Background:
    """The counters now (the statistics lag by up to a second)."""
    row = await conn.fetchrow(_BACKGROUND)
    return Background(checkpoints=row["checkpoints"], maintenance=json.loads(row["maintenance"]))


@dataclass(slots=True)
class LogWindow:
    """The service's log lines written from `offset` on: notifications' durations per second."""

    path: Path
    offset: int = 0
    worst: dict[str, float] = field(default_factory=dict)

    @classmethod
    def starting_now(cls, path: Path) -> LogWindow:
        return cls(path, path.stat().st_size if path.exists() else 0)

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for line in f:
                self._count(line)

    def _count(self, line: bytes) -> None:
        if b'"notification"' not in line:
            return
        try:
            record = json.loads(line)
            second, duration = record["timestamp"][:19], float(record["duration_ms"])
        except (ValueError, KeyError, TypeError):
            return
        self.worst[second] = max(self.worst.get(second, 0.0), duration)

    def slowest(self, n: int = 3) -> str:
        """The `n` seconds with the slowest notification, as 'HH:MM:SS 12.3 ms'."""
        top = sorted(self.worst.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return ", ".join(f"{second[11:]} {ms:.1f} ms" for second, ms in top)


def _meminfo_kb(*keys: str) -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            found[name] = int(rest.split()[0])
    return found


@dataclass(slots=True)
class WriteBack:
    """The kernel's dirty page cache and write-back in progress, sampled during a phase: a burst
    of write-back (of any file on the database's disk) makes WAL flushes, and so commits, wait."""

    interval_s: float = 0.25
    peak_dirty_mb: float = 0.0
    peak_writeback_mb: float = 0.0
    busy_samples: int = 0  # samples with more than 1 MB being written back
    samples: int = 0

    def sample(self) -> None:
        kb = _meminfo_kb("Dirty", "Writeback")
        self.peak_dirty_mb = max(self.peak_dirty_mb, kb.get("Dirty", 0) / 1024)
        writeback = kb.get("Writeback", 0) / 1024
        self.peak_writeback_mb = max(self.peak_writeback_mb, writeback)
        self.busy_samples += writeback > 1
        self.samples += 1

    def describe(self) -> str:
        return (
            f"kernel write-back: up to {self.peak_writeback_mb:.0f} MB in flight"
            f" ({self.busy_samples} of {self.samples} samples over 1 MB), dirty up to"
            f" {self.peak_dirty_mb:.0f} MB"
        )


def machine_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

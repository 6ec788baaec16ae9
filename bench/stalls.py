"""What happened during a phase that can stall notifications: the service's slowest seconds (from
its own log lines' `duration_ms`), checkpoints, and autovacuum or autoanalyze runs."""

from __future__ import annotations

import json
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

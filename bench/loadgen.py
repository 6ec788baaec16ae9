"""Load generators: wrk with bench/wrk.lua, or (only when wrk is missing) a Python fallback.

Both replay the pre-built requests of `workload.write_request_set` over keep-alive
connections to a loopback URL and report the same figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.procs import project_env
from bench.workload import read_requests

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
_MARK = "BENCH_JSON "


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    """What one load phase saw from the client side."""

    generator: str
    requests: int  # completed request/reply pairs as the generator counts them
    duration_s: float
    sent: int  # requests written (including those cut off in flight at the end)
    replies: int  # replies counted one by one by the script
    wrapped: int  # how often a connection ran out of prepared requests and started over
    statuses: dict[str, int]
    errors: dict[str, int]
    latency_ms: dict[str, float] = field(default_factory=dict)
    # Open loop only: how late the generator wrote (ms), and the worst latency of each second.
    lateness_ms: dict[str, float] = field(default_factory=dict)
    worst_ms_by_second: list[float] = field(default_factory=list)
    target_rate: float = 0.0
    connections: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def not_ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != "200")


def find_wrk(*, install: bool) -> str | None:
    """wrk's path; when missing and allowed, install Debian's package first."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk is missing: installing Debian's package (apt-get install -y wrk)", flush=True)
    attempts = (
        [["apt-get", "install", "-y", "wrk"]],
        [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]],
    )
    for commands in attempts:
        for command in commands:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(command, check=False, capture_output=True, timeout=300)
        if found := shutil.which("wrk"):
            return found
    return None


@dataclass(frozen=True, slots=True)
class Wrk:
    """wrk driven by bench/wrk.lua."""

    exe: str
    threads: int

    name = "wrk"

    async def run(self, url: str, prefix: Path, *, seconds: float, connections: int) -> LoadResult:
        """One timed phase; raises RuntimeError when wrk fails or reports nothing."""
        command = [
            self.exe,
            f"-t{self.threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            url,
            "--",
            str(prefix),
        ]
        code, out, err = await _communicate(self.name, command, timeout_s=seconds + 60)
        return _bench_json(self.name, code, out, err)


def _bench_json(name: str, returncode: int | None, out: bytes, err: bytes) -> LoadResult:
    """The LoadResult of a generator's BENCH_JSON line (wrk.lua's and openloop's)."""
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith(_MARK)), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed ({returncode}): {err.decode()[-2000:]}{text}")
    data = json.loads(line[len(_MARK) :])
    return LoadResult(
        generator=name,
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        sent=data["sent"],
        replies=data["replies"],
        wrapped=data["wrapped"],
        statuses=data["statuses"],
        errors=data["errors"],
        latency_ms={k: v / 1000 for k, v in data["latency_us"].items()},
        lateness_ms={k: v / 1000 for k, v in data.get("lateness_us", {}).items()},
        worst_ms_by_second=data.get("worst_ms_by_second", []),
        target_rate=data.get("rate", 0.0),
        connections=data.get("connections", 0),
    )


async def _communicate(
    name: str, command: list[str], *, timeout_s: float
) -> tuple[int | None, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=project_env()
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{name} did not finish in time") from None
    return proc.returncode, out, err


@dataclass(frozen=True, slots=True)
class OpenLoop:
    """bench/openloop.py in its own process: requests on a fixed schedule (see its docstring)."""

    files: int  # the request files per set (one per wrk thread)

    name = "open loop"

    async def run(self, url: str, prefix: Path, *, seconds: float, rate: float) -> LoadResult:
        """One phase at `rate` requests/s; latencies from each request's due time."""
        command = [sys.executable, "-m", "bench.openloop", url, str(prefix)]
        command += [f"--rate={rate:.1f}", f"--seconds={seconds}", f"--files={self.files}"]
        code, out, err = await _communicate(self.name, command, timeout_s=seconds + 60)
        return _bench_json(self.name, code, out, err)


@dataclass(slots=True)
class _Tally:
    sent: int = 0
    replies: int = 0
    wrapped: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PythonLoad:
    """Fallback when wrk cannot be had: asyncio connections replaying the same bytes.

    One Python process: it competes for the same cores and saturates earlier than wrk.
    """

    threads: int

    name = "python (wrk missing)"

    async def run(self, url: str, prefix: Path, *, seconds: float, connections: int) -> LoadResult:
        """One timed phase with `connections` keep-alive connections."""
        parts = urlsplit(url)
        files = read_requests(prefix, self.threads)
        cursors = [0] * len(files)
        tally = _Tally()
        deadline = time.monotonic() + seconds

        async def connection(n: int) -> None:
            file = n % len(files)
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            try:
                while time.monotonic() < deadline:
                    if cursors[file] >= len(files[file]):
                        cursors[file] = 0
                        tally.wrapped += 1
                    request = files[file][cursors[file]]
                    cursors[file] += 1
                    await _exchange(reader, writer, request, tally)
            finally:
                writer.close()

        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(connection(n) for n in range(connections)), return_exceptions=True),
            timeout=seconds + 30,
        )
        tally.errors += sum(isinstance(r, BaseException) for r in results)
        return _python_result(self.name, tally, time.monotonic() - started)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, tally: _Tally
) -> None:
    tally.sent += 1
    t0 = time.perf_counter()
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:")), 0
    )
    await reader.readexactly(length)
    tally.latencies.append((time.perf_counter() - t0) * 1000)
    tally.replies += 1
    tally.statuses[lines[0].split()[1]] += 1


def _python_result(name: str, tally: _Tally, duration_s: float) -> LoadResult:
    lat = sorted(tally.latencies) or [0.0]

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

    return LoadResult(
        generator=name,
        requests=tally.replies,
        duration_s=duration_s,
        sent=tally.sent,
        replies=tally.replies,
        wrapped=tally.wrapped,
        statuses=dict(tally.statuses),
        errors={"connection": tally.errors},
        latency_ms={
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "p999": pct(99.9),
            "max": lat[-1],
            "mean": statistics.fmean(lat),
        },
    )

"""`--profile`: py-spy samples the service during a measured phase; the top lines are printed.

py-spy is not a dependency of the project: `pip install py-spy`. It writes collapsed stacks
("frame;frame;frame count" per line, root first); the summary counts, per function, the
samples where it is on top of the stack (self) and where it is anywhere in it (inclusive).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.pg import BenchError

RATE_HZ = 250
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def find_py_spy() -> str:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    return exe


@dataclass(frozen=True, slots=True)
class Profile:
    samples: int
    self_: Counter[str]
    inclusive: Counter[str]

    def top(self, n: int) -> list[str]:
        def share(count: int) -> str:
            return f"{100 * count / self.samples:5.1f}%"

        lines = [f"profile: {self.samples} samples at {RATE_HZ} Hz (py-spy, --native off)"]
        lines.append("  self time (function on top of the stack):")
        lines += [f"    {share(c)}  {f}" for f, c in self.self_.most_common(n)]
        lines.append("  inclusive time (function anywhere in the stack):")
        lines += [f"    {share(c)}  {f}" for f, c in self.inclusive.most_common(n)]
        return lines


def _name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: one entry per function."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    return f"{m['func']} ({Path(m['file']).name})"


def summarise(collapsed: str) -> Profile:
    self_: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";")]
        total += count
        self_[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    return Profile(samples=total, self_=self_, inclusive=inclusive)


async def record(pid: int, seconds: int, out: Path) -> asyncio.subprocess.Process:
    """Start sampling `pid` for `seconds`; await the returned process, then `summarise`."""
    return await asyncio.create_subprocess_exec(
        find_py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(RATE_HZ),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

"""The processes under test: `receiver serve` and the bare aiohttp anchor, on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.forward import forward_table
from bench.pg import BenchError
from bench.procs import PROJECT, project_env
from bench.workload import MCHID

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0

CONFIG_TEMPLATE = """\
# Written by the benchmark; the database comes from RECEIVER_DATABASE_URL.
[server]
host = "127.0.0.1"
port = {port}

[metrics]
port = 0   # metrics are counted all the same; no listener to collide with another run's

[log]
level = "{log_level}"   # "info": one JSON line per notification, as in production

[ledger]
batch_max = {batch_max}   # 1: one transaction per notification
batch_concurrency = {batch_concurrency}

[gopay]
timestamp_tolerance_s = {tolerance}   # 0: freshness and nonce checks off

[[gopay.merchants]]
mchid = "{mchid}"
platform_public_keys = ["gopay-platform.pem"]
"""


@dataclass(frozen=True, slots=True)
class Running:
    """A started server: its process id (for CPU and memory), URL and log file."""

    name: str
    pid: int
    base_url: str
    log: Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the service under test is run: the knobs the benchmark compares."""

    workers: int = 1
    batch_max: int = 64
    batch_concurrency: int = 1
    log_level: str = "info"
    forward: bool = False  # every event forwarded to a local endpoint answering at once

    def describe(self) -> str:
        return (
            f"workers={self.workers} batch_max={self.batch_max} "
            f"batch_concurrency={self.batch_concurrency} log={self.log_level}"
            f" forward={'on' if self.forward else 'off'}"
        )


def write_config(
    directory: Path,
    *,
    port: int,
    platform_key_pem: str,
    tolerance_s: int,
    tuning: Tuning,
    forward_url: str = "",
    extra_toml: str = "",
) -> Path:
    """The service's TOML configuration with one GoPay merchant and the bench's platform key."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gopay-platform.pem").write_text(platform_key_pem)
    path = directory / "receiver.toml"
    path.write_text(
        CONFIG_TEMPLATE.format(
            port=port,
            tolerance=tolerance_s,
            mchid=MCHID,
            log_level=tuning.log_level,
            batch_max=tuning.batch_max,
            batch_concurrency=tuning.batch_concurrency,
        )
        + (forward_table(forward_url) if forward_url else "")
        + extra_toml
    )
    return path


@asynccontextmanager
async def receiver(
    workdir: Path,
    *,
    database_url: str,
    platform_key_pem: str,
    tolerance_s: int,
    tuning: Tuning,
    extra_toml: str = "",
) -> AsyncIterator[Running]:
    """`receiver serve` as a subprocess, ready (its /readyz says 200) until the context ends;
    with `tuning.forward`, forwarding to a bare endpoint of its own; `extra_toml` is appended to
    its configuration."""
    async with contextlib.AsyncExitStack() as stack:
        forward_url = ""
        if tuning.forward:
            sink = await stack.enter_async_context(bare(workdir / "forward-sink"))
            forward_url = sink.base_url + "/notify/forwarded"
        config = write_config(
            workdir,
            port=(port := free_port()),
            platform_key_pem=platform_key_pem,
            tolerance_s=tolerance_s,
            tuning=tuning,
            forward_url=forward_url,
            extra_toml=extra_toml,
        )
        command = [sys.executable, "-m", "receiver.run.cli", "serve", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--workers", str(tuning.workers)]
        env = {**project_env(), "RECEIVER_DATABASE_URL": database_url}
        async with _process("service", command, env, workdir, port) as running:
            yield running


@asynccontextmanager
async def bare(workdir: Path) -> AsyncIterator[Running]:
    """The bare aiohttp endpoint (bench/bare.py) as a subprocess."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare", "--port", str(port)]
    async with _process("bare", command, project_env(), workdir, port) as running:
        yield running


@asynccontextmanager
async def _process(
    name: str, command: list[str], env: dict[str, str], workdir: Path, port: int
) -> AsyncIterator[Running]:
    log = _log_file(workdir, name)
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=PROJECT
        )
    running = Running(name, proc.pid, f"http://127.0.0.1:{port}", log)
    try:
        await _wait_ready(running, proc)
        yield running
    finally:
        await _stop(proc)


def _log_file(workdir: Path, name: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir / f"{name}.log"


async def _wait_ready(running: Running, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise BenchError(f"{running.name} exited ({proc.returncode}): {_tail(running)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(running.base_url + "/readyz") as reply:
                    if reply.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"{running.name} not ready in {READY_TIMEOUT_S:.0f} s: {_tail(running)}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout=STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _tail(running: Running) -> str:
    with contextlib.suppress(OSError):
        return running.log.read_text(errors="replace")[-2000:]
    return "(no log)"

"""`receiver serve` as a real subprocess, for tests that need signals, sockets and processes.

    svc = ServiceProcess(config_path, env={"RECEIVER_DATABASE_URL": url}, port=free_port())
    with svc.start():
        svc.wait_ready(30)
        ...                        # talk to svc.base_url
        svc.signal(signal.SIGTERM)
        assert svc.wait(10) == 0
    svc.logs()                     # the JSON log lines (dicts) it printed on stdout

Leaving the `with` block stops the service (SIGTERM, then SIGKILL) if it still runs.
`write_config` writes a TOML configuration; `free_port` picks a loopback port.
"""

from __future__ import annotations

import json
import os
import signal as signals
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, gopay_key_file: Path | None = None, **tables: Any) -> Path:
    """Write a TOML configuration: `tables` maps a table name to its keys, e.g.
    server={"read_timeout_s": 1.5}; a GoPay merchant 100001 when `gopay_key_file` is given.
    No metrics listener unless `metrics` says so: services started side by side (and by other
    test runs on this machine) would all want the default port."""
    tables.setdefault("metrics", {"port": 0})
    lines: list[str] = []
    for name, keys in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
    if gopay_key_file is not None:
        lines += [
            "[[gopay.merchants]]",
            'mchid = "100001"',
            f"platform_public_keys = [{_toml_value(str(gopay_key_file))}]",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


class ServiceProcess:
    """One `python -m receiver.run.cli serve` process with its output captured line by line."""

    def __init__(
        self,
        config_path: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        workers: int = 1,
        *,
        host: str = HOST,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.config_path = Path(config_path)
        self.env = dict(env or {})
        self.port = free_port() if port is None else port
        self.workers = workers
        self.host = host
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        server = tomllib.loads(self.config_path.read_text()).get("server", {})
        self.tls = bool(server.get("tls_cert"))

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "receiver.run.cli",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]

    def start(self) -> ServiceProcess:
        """Start the process (environment: ours, minus RECEIVER_*, plus `env`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        env |= {"PYTHONUNBUFFERED": "1"} | self.env
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink in ((self.proc.stdout, self._stdout), (self.proc.stderr, self._stderr)):
            thread = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _pump(self, stream: IO[str], sink: list[str]) -> None:
        for line in stream:
            with self._lock:
                sink.append(line.rstrip("\n"))
                self._lock.notify_all()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until GET /readyz answers 200 and every worker logged "serving" (JSON logs);
        fails early, with the output, if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode() is not None:
                raise AssertionError(f"service exited with {self.returncode()}\n{self.output()}")
            if len(self.serving_pids()) >= self.workers and self.get("/readyz") == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"service not ready within {timeout} s\n{self.output()}")

    def get(self, path: str, timeout: float = 2.0) -> int | None:
        """The status of a GET, or None when nothing answered."""
        # Only for probing a local test server over its self-signed certificate.
        context = ssl._create_unverified_context() if self.tls else None
        try:
            with urllib.request.urlopen(
                self.base_url + path, timeout=timeout, context=context
            ) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ssl.SSLError):
            return None

    def signal(self, sig: int = signals.SIGTERM) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status; raises subprocess.TimeoutExpired if it still runs after `timeout`."""
        assert self.proc is not None, "not started"
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=5)  # workers may still hold the pipes for a moment
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not any(t.is_alive() for t in self._threads):
                stream.close()
        return code

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL when it does not stop in time. None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signals.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # workers notice their supervisor is gone and stop themselves
        return self.wait(timeout)

    def stdout_lines(self) -> list[str]:
        with self._lock:
            return list(self._stdout)

    def stderr_lines(self) -> list[str]:
        with self._lock:
            return list(self._stderr)

    def logs(self) -> list[dict[str, Any]]:
        """The JSON objects printed on stdout (non-JSON lines are skipped)."""
        return [entry for line in self.stdout_lines() if (entry := _json_object(line)) is not None]

    def serving_pids(self) -> set[int]:
        """The processes that logged "serving", i.e. listen on the port."""
        return {e["pid"] for e in self.logs() if e.get("event") == "serving" and "pid" in e}

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first log line matching `predicate`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for line in self._stdout:
                    entry = _json_object(line)
                    if entry is not None and predicate(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such log line within {timeout} s\n{self.output()}")
                self._lock.wait(left)

    def output(self) -> str:
        """Everything printed so far, for assertion messages."""
        out, err = self.stdout_lines(), self.stderr_lines()
        return "stdout:\n" + "\n".join(out[-50:]) + "\nstderr:\n" + "\n".join(err[-50:])

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _json_object(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

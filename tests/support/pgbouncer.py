"""A real PgBouncer (Debian's `pgbouncer` binary) in front of the test PostgreSQL.

    with PgBouncer(database_url, pool_mode="transaction") as bouncer:
        bouncer.url            # the same database, through the pooler

Configured as operators do: one `[databases]` line for every database, trust authentication
with a user list (the test PostgreSQL trusts its connections), no Unix socket. PgBouncer refuses
to run as root, so as root it is told to switch to `nobody` (`-u`), and its files are readable.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from tests.support.service_process import free_port

BINARY_PLACES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str:
    """The pgbouncer binary; the test is skipped when it is not installed (.ci/run installs
    Debian's package)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in BINARY_PLACES if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.skip("pgbouncer is not installed (.ci/run installs Debian's package)")
    return found


class PgBouncer:
    """One PgBouncer process forwarding to the PostgreSQL of `target_url`."""

    def __init__(
        self,
        target_url: str,
        *,
        pool_mode: str,
        pool_size: int = 20,
        ignore_startup_parameters: tuple[str, ...] = (),
    ) -> None:
        self.target = urlsplit(target_url)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.ignore = ignore_startup_parameters
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="receiver-pgbouncer-"))

    @property
    def url(self) -> str:
        """The target database's URL, through this PgBouncer."""
        user = self.target.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", self.target.path, "", ""))

    def _write_config(self) -> Path:
        user = self.target.username or "postgres"
        # The embedded server's URL names a socket directory in its query (?host=/dir).
        query = dict(parse_qsl(self.target.query))
        host = self.target.hostname or query.get("host", "127.0.0.1")
        port = self.target.port or int(query.get("port", "5432"))
        if host.startswith("/"):
            # The embedded server's socket is its own system user's: PgBouncer (as nobody) may
            # not reach it. .ci/run runs these tests against the TCP PostgreSQL first.
            pytest.skip("PgBouncer tests need a PostgreSQL on TCP (TEST_DATABASE_URL)")
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={host} port={port} user={user}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"ignore_startup_parameters = {','.join(self.ignore)}\n"
            "server_reset_query = DISCARD ALL\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        (self.dir / "userlist.txt").write_text(f'"{user}" ""\n')
        for path in (self.dir, ini, self.dir / "userlist.txt"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return ini

    def start(self) -> PgBouncer:
        command = [pgbouncer_binary()]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]
        # Its log to a file (opened here, as root if so): a pipe nobody reads would fill up.
        with (self.dir / "pgbouncer.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [*command, str(self._write_config())], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited: {self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("pgbouncer did not listen within 10 s")

    def log(self) -> str:
        """What PgBouncer logged."""
        return (self.dir / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

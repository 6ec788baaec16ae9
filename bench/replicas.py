"""`python -m bench.replicas`: one process, `--workers 2`, and two replicas through PgBouncer in
transaction mode, side by side in one run: notifications committed per second, and PostgreSQL's
(and PgBouncer's) CPU per notification.

Each setup gets the same kind of load (pre-signed GoPay notifications for orders of its own, 30%
duplicates, as `python -m bench`) from the same load generator for the same time, on a fresh
set of orders in one throwaway database; the two replicas get half the connections each.
BENCH_DATABASE_URL names the PostgreSQL server (a superuser URL, as for `python -m bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import pg, procs, service
from bench.loadgen import LoadResult, PythonLoad, Wrk, find_wrk
from bench.pg import BenchError
from bench.workload import RequestSet, create_orders, write_request_set
from receiver.simulate import GoPaySimulator
from receiver.store import database

DUPLICATE_SHARE = 0.30
SETUPS = ("1 process", "--workers 2", "2 replicas, PgBouncer transaction")


@dataclass(frozen=True, slots=True)
class Figures:
    setup: str
    committed: int
    seconds: float
    pg_cpu_s: float
    bouncer_cpu_s: float
    service_cpu_s: float
    non_2xx: int

    def line(self) -> str:
        rate = self.committed / self.seconds
        per = 1e6 / self.committed if self.committed else math.nan
        return (
            f"{self.setup:<36} {rate:>8.0f}/s   PostgreSQL {self.pg_cpu_s * per:>5.0f} us"
            f"   PgBouncer {self.bouncer_cpu_s * per:>5.0f} us"
            f"   service {self.service_cpu_s * per:>5.0f} us"
            f"   non-2xx {self.non_2xx}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    p.add_argument("--seconds", type=int, default=15, help="measured seconds per setup")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-rate", type=int, default=3000, help="sizes the signed workload")
    args = p.parse_args(argv)
    try:
        asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    return 0


async def run(args: argparse.Namespace) -> None:
    admin = os.environ.get("BENCH_DATABASE_URL")
    if not admin:
        raise BenchError("set BENCH_DATABASE_URL to a PostgreSQL server's superuser URL")
    if shutil.which("pgbouncer") is None and not os.access("/usr/sbin/pgbouncer", os.X_OK):
        raise BenchError("pgbouncer is not installed (apt-get install pgbouncer)")
    exe = find_wrk(install=False)
    generator: Wrk | PythonLoad = Wrk(exe, args.threads) if exe else PythonLoad(args.threads)
    print(f"load: {generator.name}, {args.connections} connections, {args.seconds} s per setup")
    with _workdir() as workdir:
        sim = GoPaySimulator.generate()
        async with pg.throwaway_database(admin) as url:
            conn = await asyncpg.connect(url)
            try:
                await database.migrate(conn)
                info = await pg.server_info(conn)
                results = []
                for n, setup in enumerate(SETUPS):
                    sets = [
                        _request_set(sim, workdir, label=f"S{n}R{r}", args=args, share=share)
                        for r, share in enumerate(_shares(setup))
                    ]
                    await conn.execute(
                        "TRUNCATE order_events, notifications, orders, gopay_nonces CASCADE"
                    )
                    await create_orders(conn, [no for s in sets for no in s.out_trade_nos])
                    await conn.execute("CHECKPOINT")
                    results.append(
                        await _measure(
                            setup,
                            url=url,
                            conn=conn,
                            postmaster=info.postmaster_pid,
                            sets=sets,
                            generator=generator,
                            args=args,
                            key_pem=sim.public_key_pem(),
                            workdir=workdir / f"setup{n}",
                        )
                    )
            finally:
                await conn.close()
    print("\nside by side (committed notifications per second; CPU per committed notification):")
    for figures in results:
        print(figures.line())


def _shares(setup: str) -> tuple[float, ...]:
    return (0.5, 0.5) if setup.startswith("2 replicas") else (1.0,)


def _request_set(
    sim: GoPaySimulator, workdir: Path, *, label: str, args: argparse.Namespace, share: float
) -> RequestSet:
    return write_request_set(
        sim,
        prefix=workdir / f"requests-{label}",
        label=label,
        distinct=math.ceil(args.max_rate * share * args.seconds * (1 - DUPLICATE_SHARE)),
        duplicate_share=DUPLICATE_SHARE,
        threads=args.threads,
        seed=len(label),
    )


@dataclass(frozen=True, slots=True)
class _Target:
    running: service.Running
    requests: RequestSet


async def _measure(
    setup: str,
    *,
    url: str,
    conn: asyncpg.Connection,
    postmaster: int,
    sets: list[RequestSet],
    generator: Wrk | PythonLoad,
    args: argparse.Namespace,
    key_pem: str,
    workdir: Path,
) -> Figures:
    async with _setup(setup, url=url, key_pem=key_pem, workdir=workdir, count=len(sets)) as (
        runnings,
        bouncer_pid,
    ):
        targets = [_Target(r, s) for r, s in zip(runnings, sets, strict=True)]
        before = await pg.wait_until_recorded(conn, expected=0)
        pg0 = procs.cpu_seconds(postmaster)
        b0 = procs.cpu_seconds(bouncer_pid) if bouncer_pid else 0.0
        s0 = sum(procs.cpu_seconds(r.pid) for r in runnings)
        loads: list[LoadResult] = await asyncio.gather(
            *(
                generator.run(
                    t.running.base_url + "/notify/gopay",
                    t.requests.prefix,
                    seconds=args.seconds,
                    connections=max(1, args.connections // len(targets)),
                )
                for t in targets
            )
        )
        sent = sum(load.sent for load in loads)
        committed = await pg.wait_until_recorded(conn, expected=before + sent) - before
        figures = Figures(
            setup=setup,
            committed=committed,
            seconds=max(load.duration_s for load in loads),
            pg_cpu_s=procs.cpu_seconds(postmaster) - pg0,
            bouncer_cpu_s=(procs.cpu_seconds(bouncer_pid) - b0) if bouncer_pid else 0.0,
            service_cpu_s=sum(procs.cpu_seconds(r.pid) for r in runnings) - s0,
            non_2xx=sum(load.not_ok for load in loads),
        )
    print(figures.line(), flush=True)
    return figures


@contextlib.asynccontextmanager
async def _setup(
    setup: str, *, url: str, key_pem: str, workdir: Path, count: int
) -> AsyncIterator[tuple[list[service.Running], int]]:
    workers = 2 if setup == "--workers 2" else 1
    tuning = service.Tuning(workers=workers)
    async with contextlib.AsyncExitStack() as stack:
        target, extra, bouncer_pid = url, "", 0
        if setup.startswith("2 replicas"):
            from tests.support.pgbouncer import PgBouncer  # noqa: PLC0415 - the tests' real PgBouncer

            bouncer = stack.enter_context(PgBouncer(url, pool_mode="transaction", pool_size=8))
            assert bouncer.proc is not None
            target, extra, bouncer_pid = (
                bouncer.url,
                "\n[database]\npgbouncer = true\n",
                bouncer.proc.pid,
            )
        runnings = [
            await stack.enter_async_context(
                service.receiver(
                    workdir / f"replica{i}",
                    database_url=target,
                    platform_key_pem=key_pem,
                    tolerance_s=0,
                    tuning=tuning,
                    extra_toml=extra,
                )
            )
            for i in range(count)
        ]
        yield runnings, bouncer_pid


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="receiver-bench-replicas-") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    sys.exit(main())

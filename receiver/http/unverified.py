"""The flood guard: refusals before a verified signature, counted per source address per minute.

Anyone without keys can send forgeries, and each refused notification is stored. Past
`server.unverified_per_minute` such refusals from one address within a minute, the rest of that
minute is answered 429 and nothing is stored; a notification whose signature verifies is never
counted nor limited. In-process counting is enough for a local defence (with `--workers N` each
worker counts on its own); memory stays bounded: counts are kept for the current minute only, an
IPv6 client counts as its /64, and past `MAX_TRACKED` addresses new ones share one count.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from receiver.logging import get_logger

log = get_logger(__name__)

WINDOW_S = 60
MAX_TRACKED = 65536
_OTHERS = "others"  # the shared count once MAX_TRACKED addresses are counted this minute


class UnverifiedLimiter:
    """Counts refusals per source address in fixed one-minute windows."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}
        self._reported: set[str] = set()

    def admit(self, remote_addr: str | None) -> bool:
        """Count one refusal from `remote_addr`; False (429, store nothing) past the limit."""
        self._roll()
        source = self._source(remote_addr)
        count = self._counts.get(source, 0)
        if count >= self.per_minute:
            self._report(source)
            return False
        self._counts[source] = count + 1
        return True

    def _roll(self) -> None:
        window = int(self._clock() // WINDOW_S)
        if window != self._window:
            self._window = window
            self._counts.clear()
            self._reported.clear()

    def _source(self, remote_addr: str | None) -> str:
        source = source_of(remote_addr)
        if source not in self._counts and len(self._counts) >= MAX_TRACKED:
            return _OTHERS
        return source

    def _report(self, source: str) -> None:
        if source in self._reported:
            return
        self._reported.add(source)
        log.warning(
            "unverified_flood",
            remote_addr=source,
            limit=self.per_minute,
            window_s=WINDOW_S,
            reason="too many refused notifications before a verified signature: "
            "answering 429 and storing nothing for the rest of the minute",
        )


def source_of(remote_addr: str | None) -> str:
    """The address a refusal counts against: the IP itself, or an IPv6 client's /64."""
    if remote_addr is None:
        return "unknown"
    try:
        ip = ipaddress.ip_address(remote_addr)
    except ValueError:
        return remote_addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)

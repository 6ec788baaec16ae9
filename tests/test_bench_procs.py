"""bench/procs.py: the CPU of a process tree, read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench import procs

# A parent that starts three children which exit at once, and reaps them only on SIGUSR1.
PARENT = """
import os, signal, subprocess, sys, time
children = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(3)]
reaped = False
def reap(*_):
    global reaped
    for child in children:
        child.wait()
    reaped = True
signal.signal(signal.SIGUSR1, reap)
print("started", flush=True)
while not reaped:
    time.sleep(0.01)
print("reaped", flush=True)
time.sleep(60)
"""


def _until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_children_that_exited_count_until_their_parent_reaps_them():
    with subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None
            assert p.stdout.readline() == "started\n"
            # The children have exited but are not reaped: they still count, as pgbench's
            # backends must until the postmaster has their CPU in its children's times.
            time.sleep(0.5)
            assert procs.child_count(p.pid) == 3
            os.kill(p.pid, signal.SIGUSR1)
            assert p.stdout.readline() == "reaped\n"
            assert _until(lambda: procs.child_count(p.pid) == 0)
        finally:
            p.kill()

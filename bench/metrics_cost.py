"""The per-notification cost of the metric calls, in one process and in a worker.

    python -m bench.metrics_cost [--n 200000]

A verified notification costs the receiver one `notification_recorded` (the ledger, after the
commit), one `replied` (the handler: the latency histogram) and, when it is written alone, one
`batch_written` (the ledger's batch-size histogram; under load a batch is shared). Each mode runs
in a fresh interpreter, because prometheus_client chooses in-memory or multiprocess values at
import. "labels() each time" is the same calls without the cached label children.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

MEASURE = """
import json, sys, timeit
from receiver import metrics
n = int(sys.argv[1])

def cached():
    metrics.notification_recorded("gopay", "applied", "notify")
    metrics.replied("gopay", seconds=0.004)
    metrics.batch_written(1)

def uncached():
    metrics.NOTIFICATIONS.labels("gopay", "applied", "notify").inc()
    metrics.NOTIFICATION_SECONDS.labels("gopay").observe(0.004)
    metrics.LEDGER_BATCH_SIZE.observe(1)

def nothing():
    pass

out = {}
cases = (("no metrics", nothing), ("cached children", cached), ("labels() each time", uncached))
for name, fn in cases:
    fn()
    out[name] = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
print(json.dumps(out))
"""


def run(n: int, multiproc_dir: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(n)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as path:
        modes = {"one process": run(args.n, None), "worker (multiprocess)": run(args.n, path)}
    print(f"{'':24}" + "".join(f"{m:>24}" for m in modes))
    for name in next(iter(modes.values())):
        row = "".join(f"{modes[m][name]:>21.2f} us" for m in modes)
        print(f"{name:24}{row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every metric the alert rules and the dashboard name is one the receiver exposes.

    python deploy/check_metric_names.py [FILE ...]

Default files: deploy/prometheus/alerts.yml, deploy/prometheus/alerts_test.yml and
deploy/grafana/receiver.json. Exit 1, naming each unknown metric and its file, else 0.
Needs the receiver package importable (its metrics module is the list of what it exposes).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from receiver.metrics import exposed_names

DEPLOY = Path(__file__).resolve().parent
DEFAULT_FILES = (
    DEPLOY / "prometheus" / "alerts.yml",
    DEPLOY / "prometheus" / "alerts_test.yml",
    DEPLOY / "grafana" / "receiver.json",
)
METRIC = re.compile(r"\breceiver_[a-z0-9_]+\b")


def unknown_metrics(text: str) -> set[str]:
    """The receiver_* names in `text` that no scrape of the receiver shows."""
    return set(METRIC.findall(text)) - exposed_names()


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or list(DEFAULT_FILES)
    failed = False
    for path in files:
        text = path.read_text(encoding="utf-8")
        unknown = unknown_metrics(text)
        named = set(METRIC.findall(text))
        for name in sorted(unknown):
            print(f"{path}: {name} is not a metric the receiver exposes", file=sys.stderr)
        if not named:
            print(f"{path}: names no receiver metric", file=sys.stderr)
        failed = failed or bool(unknown) or not named
        if named and not unknown:
            print(f"{path}: {len(named)} metric names, all exposed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

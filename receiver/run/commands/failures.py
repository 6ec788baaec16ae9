"""The exceptions a command raises for main() to report (receiver.run.cli).

They live here, not in cli.py, so that under `python -m receiver.run.cli` (where cli.py runs as
`__main__`, a second copy) the commands and main() share one class of each.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class Failure(Exception):
    """The command could not do its work (exit 1)."""

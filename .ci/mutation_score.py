"""The mutation score of each module of the pure core, from mutmut's results in `mutants/`.

Run by `.ci/mutation` after `mutmut run`. Mutants listed under "Equivalent" in tests/MUTANTS.md
change nothing observable and are left out of the score; every other survivor counts against it.
Prints a Markdown table; exits 1 when a module scores under the goal or a survivor is unlisted.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

GOAL = 0.90
MUTANTS_MD = Path("tests/MUTANTS.md")
_MUTANT_NAME = re.compile(r"`(receiver\.[^`\s]+__mutmut_\d+)`")
_KILLED = {1, 3, 24, -24, 36, 152, 255, 37}  # a failing test, a timeout, the type checker
_SURVIVED = {0, 5, 33}  # the tests passed, or no test reaches the mutant


def listed(section: str) -> set[str]:
    """Mutant names in the `## <section>` part of tests/MUTANTS.md."""
    text = MUTANTS_MD.read_text(encoding="utf-8") if MUTANTS_MD.exists() else ""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    chosen = [p for p in parts if p.lower().startswith(section.lower())]
    return {name for part in chosen for name in _MUTANT_NAME.findall(part)}


def module_results(root: Path) -> dict[str, dict[str, int | None]]:
    """Exit code by mutant name, per mutated module (path relative to `root`)."""
    results = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        if codes:
            results[str(meta.relative_to(root)).removesuffix(".meta")] = codes
    return results


def tally(codes: dict[str, int | None], equivalent: set[str]) -> Counter[str]:
    """Counts of killed, survived, equivalent and not-yet-run mutants."""
    counts: Counter[str] = Counter()
    for name, code in codes.items():
        if name in equivalent and code in _SURVIVED:
            counts["equivalent"] += 1
        elif code in _KILLED:
            counts["killed"] += 1
        elif code in _SURVIVED:
            counts["survived"] += 1
        else:
            counts["not run"] += 1
    return counts


def main() -> int:
    equivalent = listed("Equivalent")
    accepted = equivalent | listed("Accepted")
    results = module_results(Path("mutants"))
    print("| module | mutants | killed | survived | equivalent | score |")
    print("| --- | --- | --- | --- | --- | --- |")
    failed = False
    unlisted: list[str] = []
    for module, codes in results.items():
        c = tally(codes, equivalent)
        real = c["killed"] + c["survived"]
        if not real and not c["equivalent"]:
            continue  # not part of this run
        score = c["killed"] / real if real else 1.0
        failed |= score < GOAL
        print(
            f"| {module} | {len(codes)} | {c['killed']} | {c['survived']} | "
            f"{c['equivalent']} | {score:.0%} |"
        )
        survivors = (n for n, code in codes.items() if code in _SURVIVED)
        unlisted += sorted(n for n in survivors if n not in accepted)
    for name in unlisted:
        print(f"survivor not in {MUTANTS_MD}: {name}", file=sys.stderr)
    return 1 if failed or unlisted else 0


if __name__ == "__main__":
    sys.exit(main())

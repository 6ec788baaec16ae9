"""bench --profile: py-spy's collapsed stacks summed into self and inclusive shares."""

from __future__ import annotations

from bench.profile import summarise

MAIN, RUN = "main (receiver/run/cli.py:80)", "run (asyncio/runners.py:118)"
PARSE = "parse (receiver/gateways/gopay.py:101)"
COLLAPSED = f"""\
{MAIN};{RUN};{PARSE};verify (x.py:1) 6
{MAIN};{RUN};parse (receiver/gateways/gopay.py:104) 2
{MAIN};run (asyncio/runners.py:120);{MAIN} 2
not a stack line
"""


def test_self_and_inclusive_counts_per_function():
    p = summarise(COLLAPSED)
    assert p.samples == 10
    assert p.self_["verify (x.py)"] == 6
    assert p.self_["parse (gopay.py)"] == 2  # two lines of one function are one entry
    assert p.inclusive["parse (gopay.py)"] == 8
    assert p.inclusive["main (cli.py)"] == 10  # counted once per stack, even when recursive
    top = p.top(2)
    assert top[0].startswith("profile: 10 samples")
    assert "60.0%  verify (x.py)" in top[2]

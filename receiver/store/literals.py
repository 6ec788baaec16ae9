"""Array literals for `$n::text::<type>[]` parameters (why: see `text_array`), and rows to the
column arrays that unnest() takes back apart."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

Column = Callable[[tuple[Any, ...]], object]  # one column of rows to its query parameter


def text_array(values: Iterable[str | None]) -> str:
    """A text[] literal (`{"a","b\\"c",NULL}`) for a `$n::text::text[]` parameter.

    Why not a list: asyncpg's array encoder runs two isinstance checks against collections.abc
    ABCs on every element, most of a batch's client CPU. Every element is quoted, with `\\` and
    `"` escaped, so that none can read as NULL, a separator, a brace or lose its spaces.
    """
    quoted = [
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ]
    return "{" + ",".join(quoted) + "}"


def int_array(values: Iterable[int | None]) -> str:
    """A bigint[] literal for a `$n::text::bigint[]` parameter (why: see `text_array`)."""
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def bool_array(values: Iterable[bool]) -> str:
    """A boolean[] literal for a `$n::text::boolean[]` parameter (why: see `text_array`)."""
    return "{" + ",".join(["t" if v else "f" for v in values]) + "}"


def column_arrays(rows: Sequence[tuple[object, ...]], encoders: Sequence[Column]) -> list[object]:
    """Rows to the column arrays that unnest() takes back apart, each as its parameter wants."""
    columns = zip(*rows, strict=True) if rows else [()] * len(encoders)
    return [encode(column) for encode, column in zip(encoders, columns, strict=True)]

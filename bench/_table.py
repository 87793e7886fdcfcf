"""Printing benchmark results as a Markdown table (the form ``bench/README.md`` keeps them in).

Imported by the scripts next to it (``python bench/NAME.py`` puts this directory on the path).
"""

from __future__ import annotations


def print_markdown(rows: list[dict]) -> None:
    """One table: the first row's keys as the header, floats to 3 significant digits."""
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k])
                                for k in keys) + " |")

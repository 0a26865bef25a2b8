"""Rendering: rich tables for people, JSON for machines. Nothing here computes results."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)  # results (tables) go to stdout
err = Console(stderr=True, highlight=False)  # progress, notes and errors go to stderr


def table(title: str, columns: list[str], rows: list[list], caption: str | None = None) -> Table:
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")

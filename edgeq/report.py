"""Rendering: rich tables for people, JSON for machines. Nothing here computes results."""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)  # results (tables) go to stdout
err = Console(stderr=True, highlight=False)  # progress, notes and errors go to stderr


def table(title: str, columns: list[str], rows: list[list], caption: str | None = None, wrap: bool = True) -> Table:
    """A titled table; wrap=False keeps each row on one line (long cells end in …), so it fits 80 columns."""
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold" if wrap else "ellipsis", no_wrap=not wrap)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# A stage view (edgeq build) draws progress itself: inside progress_to(sink), bars report to the sink.
_sink: contextvars.ContextVar = contextvars.ContextVar("edgeq_progress_sink", default=None)


@contextlib.contextmanager
def progress_to(sink):
    """Within this block, progress(...) calls sink(description, completed, total, info) instead of drawing a bar."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


@contextlib.contextmanager
def progress(description: str, total: float, completed: float = 0, info: str = ""):
    """A progress bar on stderr, or a line in the stage view; yields update(completed, info="")."""
    hook = _sink.get()
    if hook is not None:
        hook(description, completed, total, info)
        yield lambda done, info="": hook(description, done, total, info)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    with bar:
        task = bar.add_task(description, total=total, completed=completed, info=info)
        yield lambda done, info="": bar.update(task, completed=done, info=info)

"""One progress bar for counted work (layers, runs, figures), so every long loop looks and reads the same."""

from __future__ import annotations

from typing import Any


def counting_progress(
    unit: str = "",
    *,
    title: str = "[progress.description]{task.description}",
    enabled: bool = True,
    transient: bool = False,
    console: Any = None,
):
    """A ``rich.progress.Progress``: title, bar, done/total, ``unit``, elapsed time and ETA.

    ``title`` is a rich format string (``{task.description}`` is the task's description). Disabled bars
    (``enabled=False``) accept the same calls and draw nothing.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column

    # a long title is cut (with an ellipsis) before the counts and times are
    title_column = Column(ratio=1, no_wrap=True, overflow="ellipsis")
    columns = [TextColumn(title, table_column=title_column), BarColumn(bar_width=20), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=transient, console=console, expand=True)

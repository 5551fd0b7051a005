"""A progress bar on stderr for batches and measurements; off a terminal, none."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gencli.render.console import stderr_console


class ProgressBar:
    """A transient progress bar on stderr. Call it to advance it or change its label."""

    def __init__(self, bar: Any, task: Any, label: str):
        self._bar, self._task, self._label = bar, task, label

    def __call__(self, advance: int = 0, description: str | None = None) -> None:
        self._bar.update(self._task, advance=advance, description=description or self._label)

    @contextlib.contextmanager
    def cleared(self, stream: Any) -> Iterator[None]:
        """Off the screen while output is written to `stream`, when that is a terminal too: they
        share the screen, and a line written beside the bar would land on the bar's line."""
        if not (stream.isatty() and self._bar.console.is_terminal):
            yield
            return
        self._bar.stop()
        try:
            yield
        finally:
            self._bar.start()


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[ProgressBar]:
    """A progress bar on stderr for `total` steps."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        yield ProgressBar(bar, bar.add_task(label, total=total), label)

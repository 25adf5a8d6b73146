"""Live progress bars (count, rate, ETA) on stderr, via rich.

A bar opens on the first call of the function its context yields, not when the context is entered: a job
calls it once (with 0) after checking its inputs, so a bad input is still a single line with no bar above
it.  `enabled=False` (the verbs' `--quiet`) yields a function that does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _LazyBar:
    """A rich Progress with one task, started on first use."""

    def __init__(self, label: str, total: int, columns: tuple, fields: dict):
        self.label, self.total, self.columns, self.fields = label, total, columns, fields
        self.bar: Progress | None = None
        self.task = None

    def start(self) -> Progress:
        if self.bar is None:
            self.bar = Progress(*self.columns, console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=self.total, **self.fields)
        return self.bar

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextlib.contextmanager
def _lazy(label: str, total: int, columns: tuple, fields: dict) -> Iterator[_LazyBar]:
    lazy = _LazyBar(label, total, columns, fields)
    try:
        yield lazy
    finally:
        lazy.stop()


@contextlib.contextmanager
def count_progress(label: str, total: int, unit: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; shows a bar with `unit`s done, their rate and the ETA."""
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with _lazy(label, total, columns, {"rate": ""}) as lazy:

        def advance(n: int) -> None:
            bar = lazy.start()
            bar.advance(lazy.task, n)
            speed = bar.tasks[lazy.task].speed
            rate = (f"{speed:,.0f} {unit}/s" if speed >= 100 else f"{speed:.1f} {unit}/s") if speed else ""
            bar.update(lazy.task, rate=rate)

        yield advance


@contextlib.contextmanager
def token_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_tokens)`; shows a bar with tokens done, tokens/s and ETA."""
    with count_progress(label, total, "tokens", enabled) as advance:
        yield advance


@contextlib.contextmanager
def step_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[dict | None], None]]:
    """Yield `on_step(metrics)`; shows steps, ETA and live L0, FVU and dead fraction.  `on_step(None)` opens
    the bar without a step (after the inputs are checked)."""
    if not enabled:
        yield lambda metrics: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TextColumn("{task.fields[live]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with _lazy(label, total, columns, {"live": ""}) as lazy:

        def on_step(m: dict | None) -> None:
            bar = lazy.start()
            if m is not None:
                bar.update(
                    lazy.task, completed=m["step"] + 1, live=f"L0 {m['l0']:.1f} FVU {m['fvu']:.3f} dead {m['dead']:.1%}"
                )

        yield on_step

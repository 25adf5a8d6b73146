"""Live progress (tokens, rate, ETA) on stderr, via rich."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def token_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_tokens)`; shows a bar with tokens done, tokens/s and ETA."""
    with count_progress(label, total, "tokens", enabled) as advance:
        yield advance


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
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(
                task, rate=(f"{speed:,.0f} {unit}/s" if speed >= 100 else f"{speed:.1f} {unit}/s") if speed else ""
            )

        yield advance


@contextlib.contextmanager
def step_progress(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """Yield `on_step(metrics)`; shows steps, ETA and live L0, FVU and dead fraction."""
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
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, live="")

        def on_step(m: dict) -> None:
            bar.update(task, completed=m["step"] + 1, live=f"L0 {m['l0']:.1f} FVU {m['fvu']:.3f} dead {m['dead']:.1%}")

        yield on_step

"""What the command line shows: one line per pipeline step, the result tables, nothing of the libraries.

Everything here writes to the terminal streams captured when the command started, so that the
run log (patron.logs) can send the libraries' own prints to its file without taking these along.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass
class Terminal:
    """The command's two streams, as they were when it started."""

    out: Console
    err: Console

    @classmethod
    def capture(cls, stdout: TextIO | None = None, stderr: TextIO | None = None) -> Terminal:
        return cls(Console(file=stdout or sys.stdout), Console(file=stderr or sys.stderr, stderr=True))

    def fail(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/] {message}", highlight=False)


@dataclass
class StepLines:
    """A pipeline's progress: one line per step, a spinner (or a bar, for counted work) while it
    runs, then its summary and its time. Implements ``patron.pipelines.pipeline.Progress``."""

    console: Console
    _progress: Progress | None = None
    _tasks: dict[str, TaskID] = field(default_factory=dict)

    def __enter__(self) -> StepLines:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("[bold]{task.fields[step]:<12}[/]"),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._progress is not None
        self._progress.__exit__(*exc)

    def start(self, step: str, total: int | None = None) -> None:
        assert self._progress is not None
        self._tasks[step] = self._progress.add_task(step, total=total, step=step, summary="[dim]0 of {:,}[/]".format(total) if total else "")

    def advance(self, step: str, n: int = 1) -> None:
        assert self._progress is not None
        task = self._tasks[step]
        self._progress.advance(task, n)
        t = self._progress.tasks[task]
        self._progress.update(task, summary=f"[dim]{int(t.completed):,} of {int(t.total or 0):,}[/]")

    def finish(self, step: str, summary: str) -> None:
        assert self._progress is not None
        task = self._tasks[step]
        total = self._progress.tasks[task].total or 1
        self._progress.update(task, total=total, completed=total, summary=summary)
        self._progress.stop_task(task)

    def skip(self, step: str, why: str) -> None:
        assert self._progress is not None
        task = self._progress.add_task(step, total=1, step=step, summary=f"[dim]skipped: {why}[/]")
        self._progress.update(task, completed=1)
        self._progress.stop_task(task)


def metrics_table(title: str, metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> Table:
    """The model's metrics and each baseline's, one row each, one column per metric."""
    table = Table(title=title)
    table.add_column("model / baseline")
    keys = sorted({k for m in [metrics, *baselines.values()] for k in m})
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row("[bold]model", *[f"{metrics[k]:.4f}" if k in metrics else "" for k in keys])
    for name, m in baselines.items():
        table.add_row(name, *[f"{m[k]:.4f}" if k in m else "" for k in keys])
    return table


def ingest_table(result: dict) -> Table:
    table = Table(title=f"ingested {result['files_ingested']} new file(s), {result['files_already_ingested']} already known")
    table.add_column("class")
    table.add_column("rows", justify="right")
    for k, v in result["classes"].items():
        table.add_row(k, f"{v:,}")
    table.add_row("[bold]rows read", f"[bold]{result['rows_in']:,}")
    table.add_row("new canonical rows", f"{result['rows_written']:,}")
    table.add_row("quarantined", f"{result['quarantined']:,}")
    return table


def key_value_table(title: str, rows: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.4f}")
    return table

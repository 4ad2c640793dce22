"""What the CLI prints: tables and progress bars (rich), one look for every command.

Tables go to stdout. On a terminal they fit its width (a cell folds, it is never cut short); anywhere else (a pipe,
a file, a test's CliRunner) they are plain text with no escape codes, each row on one line however wide. Progress
bars go to stderr and only to a terminal, so logs and pipes get the results and nothing else. The layers below the
CLI know nothing of this: they take callbacks, which the classes here provide.
"""

import os
import sys

from rich import box
from rich.console import Console
from rich.filesize import pick_unit_and_suffix
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

PIPE_WIDTH = 1000        # not a terminal: lines as long as their content, as plain printing gives


def _is_tty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def printable(text):
    """``text`` with control characters (C0, DEL, C1: ESC sequences, newlines, carriage returns) shown as ``\\xNN``:
    a name that comes from outside (a file in a test set, a model file) cannot move the cursor, recolour the
    terminal or fake lines of output."""
    return "".join(c if not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) else f"\\x{ord(c):02x}" for c in str(text))


def console(stderr=False):
    """A Console on the current sys.stdout (or sys.stderr): colours and the terminal's width on a terminal;
    elsewhere no escape codes and no wrapping (COLUMNS, when set, is the width)."""
    stream = sys.stderr if stderr else sys.stdout
    tty = _is_tty(stream)
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(file=stream, force_terminal=tty, width=width, highlight=False, soft_wrap=False,
                   emoji=False, markup=False)


class _InertTable(Table):
    """A rich Table whose text cells show control characters escaped (:func:`printable`): tables print names that
    come from outside (sample files, model files, the tensor names inside a model)."""

    def add_row(self, *cells, **options):
        super().add_row(*(printable(c) if isinstance(c, str) else c for c in cells), **options)


def table(*columns, right=(), header=True):
    """A table in the common style: a rule under the header, columns three spaces apart, no borders. Columns
    named in ``right`` are right-aligned numbers, which do not wrap: on a narrow terminal the text columns wrap
    first, at spaces; a cell is folded onto a second line, never cut short. Text cells show control characters
    escaped."""
    t = _InertTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_header=header,
                    header_style="bold")
    for name in columns:
        number = name in right
        t.add_column(name, justify="right" if number else "left", no_wrap=number, overflow="fold")
    return t


def print_table(t, title=None):
    """Print a table (to stdout), after its title on a line of its own."""
    out = console()
    if title:
        out.print(printable(title), style="bold")
    if out.is_terminal:
        out.print(t)
        return
    with out.capture() as captured:          # a pipe or a file: rows without the cells' trailing padding
        out.print(t)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


def print_fields(pairs, title=None):
    """``name  value`` lines (a board's INFO, a config), aligned as a two-column table without a header."""
    t = table("field", "value", header=False)
    for name, value in pairs:
        t.add_row(str(name), str(value))
    print_table(t, title)


def progress(*columns, transient=False):
    """A rich Progress on stderr, disabled (prints nothing) when stderr is not a terminal. The default columns
    count items (done/total, ETA) and show each task's ``status`` field."""
    err = console(stderr=True)
    # Lines printed to stdout while a bar is drawn go above it when stdout is the same terminal; stdout
    # redirected elsewhere is left alone (its lines must not end up on stderr).
    return Progress(*(columns or (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[status]}"))),
                    console=err, disable=not err.is_terminal, transient=transient,
                    redirect_stdout=_is_tty(sys.stdout))


class BytesPerSecond(ProgressColumn):
    """Transfer rate in KiB/s, the units of DownloadColumn(binary_units=True) beside it."""

    def render(self, task):
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("?", style="progress.data.speed")
        unit, suffix = pick_unit_and_suffix(int(speed), ["bytes", "KiB", "MiB", "GiB"], 1024)
        return Text(f"{speed / unit:.1f} {suffix}/s", style="progress.data.speed")


class TransferProgress:
    """One bar across every file sent to a board, with one ETA: a ``progress(name, sent, total)`` callback for
    tinyhost.flash. A file is counted in the total when it is first named (flash announces every file it will
    send, with sent=0, before the first byte goes out), so the bar's length is known from the start."""

    def __init__(self, description="flashing"):
        self.description = description
        self._progress = progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                                  BytesPerSecond(), TimeRemainingColumn(), TextColumn("{task.fields[file]}"))
        self._sent = {}             # file -> bytes sent so far
        self._total = {}            # file -> its size
        self._task = None

    def __enter__(self):
        return self

    def __call__(self, name, sent, total):
        if self._task is None:                  # a bar only when something is sent
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=None, file="")
        if name not in self._total:
            self._total[name] = total
            self._sent[name] = 0
        self._sent[name] = sent
        self._progress.update(self._task, total=max(sum(self._total.values()), 1),
                              completed=sum(self._sent.values()), file=name if sent else "")

    def __exit__(self, *exc):
        self._progress.stop()

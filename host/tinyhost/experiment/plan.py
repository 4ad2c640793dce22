"""What an experiment will do before it does it: each cell's model resolved and checked against its board
(``model inspect``'s verdict, :func:`tinyhost.model.require_fit`, known before a byte is sent), the cells grouped by
board, and an estimate of the wall time with virtual boards run in parallel up to the cores.

The time estimate is arithmetic on the bench settings (windows, samples, line rate), not a measurement: its
constants are what a cell took on a 2-core PC with the virtual board.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors

BRING_UP_S = 4.0                 # start a virtual board, sync nothing, INFO, soft reset, LOAD
FIRST_SYNC_S = 15.0              # firmware onto a fresh virtual board's flash (once per board per state folder)
WINDOW_OVERHEAD_S = 1.0          # per performance input: warm-up, set_input, the streamed timings
PER_SAMPLE_S = 0.05              # per accuracy sample beyond its input's time on the line
PER_OFFLOAD_REQUEST_S = 0.06     # per request of each offload pass
ROMFS_EXTRA_S = 6.0              # a board with a ROMFS partition: its contents checked through the raw REPL


@dataclass
class PlannedCell:
    cell: object                   # config.Cell
    model_path: Path = None
    skip_reason: str = ""          # non-empty: the cell is not run (the model does not fit the board)
    input_bytes: int = None
    dataset: str = None
    n_samples: int = 0             # accuracy samples (after bench.limit)
    estimate_s: float = 0.0

    @property
    def runs(self):
        return not self.skip_reason


@dataclass
class Plan:
    experiment: object
    cells: list = field(default_factory=list)      # of PlannedCell
    workers: int = 1                               # virtual boards run at once
    estimate_s: float = 0.0

    @property
    def to_run(self):
        return [p for p in self.cells if p.runs]

    @property
    def skipped(self):
        return [p for p in self.cells if not p.runs]

    def groups(self):
        """{board name: [PlannedCell]}: the cells of one board run one after another, on one virtual board state
        folder (the firmware is written to its flash once, not once per cell)."""
        out = {}
        for p in self.to_run:
            out.setdefault(p.cell.board.name, []).append(p)
        return out


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _n_samples(dataset, limit):
    if not dataset:
        return 0
    labels = Path(dataset) / "y_labels.csv"
    if labels.is_file():
        n = sum(1 for line in labels.read_text().splitlines() if line.strip())
    else:
        n = sum(1 for p in Path(dataset).rglob("*") if p.is_file())
    return min(n, limit) if limit else n


def _testset(exp, model, resolved):
    from ..bench.session import _shipped_testset

    from .. import zoo

    given = exp.dataset_for(model)
    if given:
        if not Path(given).exists():       # a shipped model's name: its test set
            shipped = zoo.shipped_testset(zoo.find(given))
            if shipped:
                return str(shipped)
        return given
    shipped = _shipped_testset(str(resolved))
    return str(shipped) if shipped else None


def make(exp, workers=None):
    """The Plan of ``exp``: every cell with its fit verdict and time estimate. A model that cannot be found is an
    error naming its line in the file."""
    from .. import boards, zoo
    from ..model import inspect, require_fit

    plan = Plan(exp, workers=max(1, workers or cores()))
    resolved, reports = {}, {}
    for i, m in enumerate(exp.models):
        try:
            resolved[m.name] = Path(zoo.resolve(m.path))
            reports[m.name] = inspect(resolved[m.name], tflm=False)
        except errors.TinyhostError as e:
            raise type(e)(f"{exp.path}:{exp.line_of('models', i)}: model {m.name}: {e.message}", hint=e.hint) \
                from None
    bench, measure = exp.bench, exp.bench.measure
    for cell in exp.cells():
        path = resolved[cell.model.name]
        report = reports[cell.model.name]
        p = PlannedCell(cell, model_path=path,
                        input_bytes=sum(report.tensors[i].nbytes for i in report.inputs))
        profile, virtual = boards.from_spec(cell.board.board)
        try:
            require_fit(path, profile, virtual)
        except errors.DoesNotFit as e:
            p.skip_reason = e.message
        p.dataset = _testset(exp, cell.model, path)
        if measure in ("accuracy", "all") or cell.mode.kind != "local":
            p.n_samples = _n_samples(p.dataset, bench.limit)
        baud = bench.baud or profile.baud
        seconds_per_input = 10 * (p.input_bytes or 0) / baud
        t = BRING_UP_S + (ROMFS_EXTRA_S if profile.romfs_bytes else 0.0)
        if measure in ("performance", "all", "energy"):
            t += bench.inputs * (bench.window_s + WINDOW_OVERHEAD_S)
        if measure in ("accuracy", "all"):
            t += p.n_samples * (PER_SAMPLE_S + seconds_per_input)
        if cell.mode.kind != "local":
            n = p.n_samples or bench.offload_inputs
            t += 2 * n * (PER_OFFLOAD_REQUEST_S + seconds_per_input)
        p.estimate_s = t
        plan.cells.append(p)
    plan.estimate_s = wall_estimate(plan)
    return plan


def wall_estimate(plan):
    """Seconds for the whole plan: each board's cells in a row (plus one firmware sync for a virtual board), the
    virtual boards spread over ``plan.workers`` at once (longest first), each real board on its own."""
    virtual, real = [], []
    for cells in plan.groups().values():
        board = cells[0].cell.board
        total = sum(p.estimate_s for p in cells)
        if board.virtual:
            virtual.append(total + FIRST_SYNC_S)
        else:
            real.append(total)
    slots = [0.0] * min(plan.workers, max(1, len(virtual)))
    for t in sorted(virtual, reverse=True):
        slots[slots.index(min(slots))] += t
    return max(slots + real + [0.0])

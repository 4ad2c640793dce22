"""``tinyhost experiment plan|run|report``, ``tinyhost results query|export`` and ``tinyhost budget``: the
experiment layer (tinyhost.experiment) on the command line."""

import threading
from pathlib import Path

import click
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from .. import console
from ..errors import Interrupted

STORE_HELP = "The results store (DuckDB) [default: the experiment's store:, else .tinyhost/results.duckdb]."


def _store_path(store, exp=None):
    from ..experiment.store import DEFAULT_STORE

    return Path(store or (exp.store if exp is not None and exp.store else DEFAULT_STORE))


def _seconds(s):
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


class ExperimentProgress:
    """One bar over the whole experiment on stderr (a terminal), advancing by each cell's estimated time so its ETA
    is in wall time, with the cells in flight; one line per finished cell (stderr, terminal or not)."""

    def __init__(self):
        self._progress = console.progress(TextColumn("{task.description}"), BarColumn(),
                                          TextColumn("{task.fields[cells]}"), TimeRemainingColumn(),
                                          TextColumn("{task.fields[status]}"))
        self._task, self._total, self._done = None, 0, 0
        self._running = {}
        self._lock = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._progress.stop()

    def start(self, plan, cells, done):
        self._total = len(cells)
        if done:
            self.message(f"resuming: {len(done)} cells already stored are not run again")
        self._progress.start()
        self._task = self._progress.add_task("experiment", total=max(1e-9, sum(p.estimate_s for p in cells)),
                                             cells=f"0/{self._total} cells", status="")

    def _status(self):
        return "running: " + "; ".join(self._running.values()) if self._running else ""

    def cell_started(self, planned):
        with self._lock:
            self._running[planned.cell.key] = planned.cell.label
            self._progress.update(self._task, status=self._status())

    def cell_finished(self, planned, status, reason, wall_s):
        with self._lock:
            self._running.pop(planned.cell.key, None)
            self._done += 1
            self._progress.update(self._task, advance=planned.estimate_s, status=self._status(),
                                  cells=f"{self._done}/{self._total} cells")
            what = f"{status}" + (f": {reason}" if reason else "")
            self.message(f"[{self._done}/{self._total}] {planned.cell.label}: {what} ({wall_s:.1f} s)")

    def message(self, text):
        self._progress.console.print(text)


@click.group()
def experiment():
    """N models x M boards x modes from one YAML file: plan, run (resumable), report."""


def _plan_table(plan):
    t = console.table("cell", "board kind", "verdict", "samples", "estimate s", right={"samples", "estimate s"})
    for p in plan.cells:
        t.add_row(p.cell.label, "virtual" if p.cell.board.virtual else "real",
                  "runs" if p.runs else f"skipped: {p.skip_reason}", str(p.n_samples), f"{p.estimate_s:.0f}")
    return t


SET_HELP = ("KEY=VALUE over the file's setting (VALUE in YAML), e.g. --set bench.limit=8 --set 'boards=[sim:esp32]'; "
            "repeatable. A resumed run needs the same.")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)


def _plan(file, workers, overrides=()):
    from ..experiment import config, plan as plan_mod

    exp = config.load(file, overrides)
    return exp, plan_mod.make(exp, workers)


@experiment.command("plan")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=None, help="Virtual boards at once [default: the cores].")
@set_option
def plan_cmd(file, workers, overrides):
    """The cells, which are skipped (the model does not fit the board) and an estimate of the wall time."""
    exp, plan = _plan(file, workers, overrides)
    console.print_table(_plan_table(plan), f"experiment {exp.name}: {len(plan.cells)} cells")
    click.echo(f"{len(plan.to_run)} cells to run, {len(plan.skipped)} skipped; about {_seconds(plan.estimate_s)} "
               f"with {plan.workers} virtual boards at once (an estimate from the bench settings)")


@experiment.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the latest run of this experiment: stored cells are skipped.")
@click.option("--workers", type=int, default=None, help="Virtual boards at once [default: the cores].")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help=STORE_HELP)
@set_option
def run_cmd(file, resume, workers, store, overrides):
    """Run every cell through the bench machinery and store each as it finishes."""
    from ..experiment import execute
    from ..experiment.store import Store

    exp, plan = _plan(file, workers, overrides)
    click.echo(f"experiment {exp.name}: {len(plan.to_run)} cells to run, {len(plan.skipped)} skipped "
               f"(the model does not fit), about {_seconds(plan.estimate_s)}")
    stop = threading.Event()
    with Store(_store_path(store, exp)) as st, ExperimentProgress() as progress:
        try:
            summary = execute.run(exp, plan, st, resume=resume, events=progress, stop=stop)
        except KeyboardInterrupt:
            stop.set()
            raise Interrupted("interrupted: the cells that finished are stored",
                              hint=f"run `tinyhost experiment run {file} --resume` to run the others") from None
    click.echo(f"session {summary.session_id} in {summary.store_path}: {summary.ok} ok, {summary.failed} failed, "
               f"{summary.skipped} skipped" + (f", {summary.already_done} stored before" if summary.already_done
                                              else "") + f"; {_seconds(summary.wall_s)}")
    if summary.failed:
        click.echo(f"failed cells are listed by `tinyhost experiment report {file}`; "
                   f"`tinyhost experiment run {file} --resume` runs them again")


def _session_rows(st, exp, session):
    from ..errors import UsageError

    if session is None:
        latest = st.latest_session(exp.name)
        if latest is None:
            raise UsageError(f"no run of experiment {exp.name!r} in {st.path}",
                             hint=f"run `tinyhost experiment run {exp.path}` first")
        session = latest[0]
    rows = st.rows(session)
    if not rows:
        raise UsageError(f"session {session} of {exp.name!r} holds no runs", hint="pick another --session")
    return rows


@experiment.command("report")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.html, report.md and the PNGs [default: out/<experiment>].")
@click.option("--session", type=int, default=None, help="Which run of the experiment [default: the latest].")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help=STORE_HELP)
@set_option
def report_cmd(file, out_dir, session, store, overrides):
    """Tables per metric, Pareto fronts and the budget verdict from the stored runs (HTML + PNG)."""
    from ..experiment import config, report
    from ..experiment.store import Store

    exp = config.load(file, overrides)
    with Store(_store_path(store, exp), must_exist=True) as st:
        rows = _session_rows(st, exp, session)
    cells = report.cell_rows(rows)
    t = console.table("cell", "status", "accuracy", "board_ms", "energy uJ", "RAM")
    for c in cells:
        t.add_row(c["label"], c["status"], *(report.cell_value(c, m)
                                             for m in ("accuracy", "board_ms", "energy_uj", "ram_bytes")))
    console.print_table(t, f"experiment {exp.name}")
    paths = report.write(exp, rows, out_dir or Path("out") / exp.name, exp.budget)
    click.echo(f"wrote {paths[0]} and {len(paths) - 1} more files in {paths[0].parent}")


@click.group()
def results():
    """The results store: SQL queries and exports."""


@results.command("query")
@click.argument("sql")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help=STORE_HELP)
def query_cmd(sql, store):
    """Run SQL over the store (tables: runs, sessions) and print the rows."""
    from ..experiment.store import Store

    with Store(_store_path(store), must_exist=True) as st:
        names, rows = st.query(sql)
    t = console.table(*names)
    for r in rows:
        t.add_row(*("" if r[n] is None else str(r[n]) for n in names))
    console.print_table(t)


@results.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv", show_default=True)
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--sql", default="SELECT * FROM runs ORDER BY run_id", show_default=True, help="What to export.")
@click.option("--store", type=click.Path(dir_okay=False), default=None, help=STORE_HELP)
def export_cmd(fmt, out_path, sql, store):
    """Write the store's runs (or any query) as CSV, JSON or Parquet."""
    from ..experiment.store import Store

    with Store(_store_path(store), must_exist=True) as st:
        st.export(out_path, fmt, sql)
    click.echo(f"wrote {out_path}")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--store", type=click.Path(dir_okay=False), default=None, help=STORE_HELP)
def budget(file, store):
    """Link and power budget: events a day, bytes sent, energy, which limits hold, the best configuration."""
    from ..experiment import budget as budget_mod, report

    data, is_experiment = budget_mod.load_file(file)
    configs = None
    if is_experiment:
        from ..experiment import config
        from ..experiment.store import Store

        exp = config.load(file)
        with Store(_store_path(store, exp), must_exist=True) as st:
            rows = _session_rows(st, exp, None)
        configs = budget_mod.configurations_from_cells(
            [c for c in report.cell_rows(rows) if c["status"] == "ok"], data)
    res = budget_mod.evaluate(data, configs)
    blocks = report.budget_blocks(res)
    click.echo(blocks[1][1])
    header, rows = blocks[2][1], blocks[2][2]
    t = console.table(*header, right=set(header[1:8]))
    for r in rows:
        t.add_row(*r)
    console.print_table(t)
    click.echo(f"best under the budget: {res.best}" if res.best else "no configuration meets every limit")

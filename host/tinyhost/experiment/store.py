"""The results store: a DuckDB file with one row per cell and run, every figure beside its full provenance and the
whole BenchResult as JSON.

Tables (docs/experiments.md has every column):

- ``sessions``: one row per ``tinyhost experiment run`` (a resumed run continues its session).
- ``runs``: one row per cell run: the cell (model, board, mode, backend, repeat), its status (ok, failed,
  skipped) and reason, the figures (top1, latency_ms, board_ms, energy_uj, ram_bytes ...), the provenance
  (tinyhost.board.Provenance's fields, the dataset fingerprint among them) and ``result_json``.

Running a cell again adds a row, never overwrites one; ``--resume`` skips the cells its session already holds.
"""

import json
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from ..board import Provenance
from ..errors import TinyhostError, UsageError

DEFAULT_STORE = Path(".tinyhost") / "results.duckdb"
STORE_VERSION = 1

_PROVENANCE = [f.name for f in fields(Provenance) if f.name != "files_flashed"]
_PROVENANCE_TYPES = {f.name: ("BOOLEAN" if f.type in (bool, "bool") else "BIGINT" if f.type in (int, "int")
                              else "VARCHAR") for f in fields(Provenance) if f.name != "files_flashed"}


@dataclass
class Figures:
    """The figures of one cell run that tables, Pareto fronts and the budget compare (None: not measured)."""
    accuracy_metric: str = None        # top1 | auc
    accuracy: float = None             # top-1 (0..1) or AUC: the benchmark's own metric
    top1: float = None                 # classifiers
    auc: float = None                  # anomaly detection
    inferences_per_s: float = None
    latency_ms: float = None           # single inference p50 (performance mode), host-observed for offload cells
    board_ms: float = None             # see board_time()
    board_ms_source: str = None
    board_time_model: str = None       # version of the board-time model, where the figure comes from one
    energy_uj: float = None
    energy_kind: str = None            # estimate | measured
    arena_bytes: int = None
    heap_peak_bytes: int = None
    ram_bytes: int = None              # peak heap in use with the model loaded, else arena + weights in RAM
    model_bytes: int = None
    input_bytes: int = None            # one inference's input: what offloading sends over the link
    offloaded_fraction: float = None   # offload / auto cells: answers that came from the server


FIGURE_COLUMNS = {f.name: ("VARCHAR" if f.type in (str, "str") else "BIGINT" if f.type in (int, "int")
                           else "DOUBLE") for f in fields(Figures)}

RUN_COLUMNS = {
    "run_id": "BIGINT", "session_id": "BIGINT", "experiment": "VARCHAR", "cell": "VARCHAR", "model": "VARCHAR",
    "board_name": "VARCHAR", "mode": "VARCHAR", "threshold": "DOUBLE", "backend_asked": "VARCHAR",
    "repeat": "INTEGER", "status": "VARCHAR", "reason": "VARCHAR", "attempts": "INTEGER", "wall_s": "DOUBLE",
    "finished": "TIMESTAMP", **FIGURE_COLUMNS, **{f"{k}": v for k, v in _PROVENANCE_TYPES.items()},
    "result_json": "VARCHAR",
}
# provenance "board" (the profile the figures are for) and "date" keep their names; the cell's board is board_name


def board_time(result):
    """(board_ms, source, model version) for a BenchResult: the board-time estimate when the result carries one
    (a virtual board's deterministic figure: ``performance.board_time_us`` and ``board_time_model``, see
    tinyhost.boardtime), else the measured single-inference p50 (on the virtual board that is the host CPU's
    time). The one place that decides which figure is a cell's ``board_ms``."""
    perf = result.performance
    if perf is None:
        return None, None, None
    if getattr(perf, "board_time_us", None) is not None:
        return perf.board_time_us / 1000, "board-time estimate", str(perf.board_time_model or "")
    latency_us = perf.latency["p50_us"] if perf.latency else perf.median_latency_us
    source = "measured, virtual board (host CPU)" if result.provenance.virtual else "measured, device clock"
    return latency_us / 1000, source, None


def figures(result, offloaded_pass=None, input_bytes=None):
    """The Figures of a BenchResult; ``offloaded_pass``: an offload/auto cell's figures are those of its offloaded
    pass (accuracy, end-to-end latency, energy with radio time), not the local pass's."""
    f = Figures(input_bytes=input_bytes)
    perf, acc, mem, en = result.performance, result.accuracy, result.memory, result.energy
    if perf is not None:
        f.inferences_per_s = perf.median_inferences_per_s
        f.latency_ms = (perf.latency["p50_us"] if perf.latency else perf.median_latency_us) / 1000
        f.board_ms, f.board_ms_source, f.board_time_model = board_time(result)
    if acc is not None:
        f.accuracy_metric, f.accuracy = acc.metric, acc.value
        f.top1, f.auc = acc.top_k.get("1"), acc.auc
    if en is not None:
        f.energy_uj, f.energy_kind = en.uj_per_inference, en.kind
    if mem is not None:
        f.arena_bytes, f.heap_peak_bytes, f.model_bytes = mem.arena_bytes, mem.heap_peak_bytes, mem.model_bytes
        if mem.heap_peak_bytes is not None:
            f.ram_bytes = mem.heap_peak_bytes
        elif mem.arena_bytes is not None:
            f.ram_bytes = mem.arena_bytes + (mem.weights_ram_bytes or 0)
    if offloaded_pass is not None:
        p = offloaded_pass
        f.offloaded_fraction = p.offloaded / p.requests if p.requests else None
        if p.accuracy is not None:
            f.accuracy_metric, f.accuracy, f.top1 = "top1", p.accuracy, p.accuracy
        total = p.latency.get("total")
        if total:
            f.latency_ms = f.board_ms = total["p50_us"] / 1000
            f.board_ms_source = "measured end to end, offloaded pass (board clock)"
            f.board_time_model = None
        if p.energy:
            f.energy_uj, f.energy_kind = p.energy["uj_per_inference"], "estimate"
        bt = getattr(p, "board_time", None)
        if bt:                       # a virtual board: the pass in board time, the link modelled (tinyhost.linkmodel)
            f.board_ms = bt["mean_us"] / 1000
            f.board_ms_source = "board-time estimate, link modelled, server measured"
            f.board_time_model = f"{bt['board_time_model']}+{bt['link_model']}"
            f.energy_uj, f.energy_kind = bt["energy_uj"], "estimate"
    return f


class Store:
    """The DuckDB results file. One process writes it at a time (DuckDB locks the file); the threads of one
    ``experiment run`` share this object, whose writes are serialised."""

    def __init__(self, path, must_exist=False):
        try:
            import duckdb
        except ImportError:
            raise UsageError("the results store needs DuckDB", hint="pip install duckdb") from None
        self.path = Path(path)
        if must_exist and not self.path.is_file():
            raise UsageError(f"no results store at {self.path}",
                             hint="run `tinyhost experiment run FILE` first, or pass --store PATH")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path))
        except duckdb.Error as e:
            raise TinyhostError(f"cannot open the results store {self.path}: {e}",
                                hint="another tinyhost may be writing it (an experiment run); wait for it, or "
                                     "pass --store PATH") from None
        self._lock = threading.Lock()
        self._create()

    def close(self):
        with self._lock:                     # after a write in flight (a run's worker thread) has finished
            self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _create(self):
        with self._lock:
            self.con.execute("CREATE TABLE IF NOT EXISTS sessions (session_id BIGINT PRIMARY KEY, experiment "
                             "VARCHAR, file VARCHAR, file_sha256 VARCHAR, started TIMESTAMP, cells INTEGER, "
                             "tinyhost_version VARCHAR, store_version INTEGER)")
            columns = ", ".join(f'"{k}" {v}' for k, v in RUN_COLUMNS.items())
            self.con.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns}, PRIMARY KEY (run_id))")

    # -- sessions ----------------------------------------------------------------------------------------------

    def new_session(self, exp, n_cells):
        from .. import __version__

        with self._lock:
            sid = self.con.execute("SELECT coalesce(max(session_id), 0) + 1 FROM sessions").fetchone()[0]
            self.con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, now(), ?, ?, ?)",
                             [sid, exp.name, str(exp.path), exp.sha256, n_cells, __version__, STORE_VERSION])
        return sid

    def latest_session(self, experiment):
        """(session_id, file_sha256) of the experiment's latest session, or None."""
        with self._lock:
            return self.con.execute("SELECT session_id, file_sha256 FROM sessions WHERE experiment = ? "
                                    "ORDER BY session_id DESC LIMIT 1", [experiment]).fetchone()

    def done_cells(self, session_id):
        """Cell keys the session holds as finished (ok or skipped): what --resume does not run again."""
        with self._lock:
            rows = self.con.execute("SELECT DISTINCT cell FROM runs WHERE session_id = ? AND status IN "
                                    "('ok', 'skipped')", [session_id]).fetchall()
        return {r[0] for r in rows}

    # -- runs --------------------------------------------------------------------------------------------------

    def add_run(self, session_id, exp, cell, status, reason="", result=None, figs=None, attempts=1, wall_s=0.0):
        """One row for one run of ``cell``; a failed row of the same cell in the session is replaced by a later
        run of it (a resumed session holds each cell once)."""
        row = {k: None for k in RUN_COLUMNS}
        row.update(session_id=session_id, experiment=exp.name, cell=cell.key, model=cell.model.name,
                   board_name=cell.board.name, mode=cell.mode.name, threshold=cell.mode.threshold,
                   backend_asked=cell.backend, repeat=cell.repeat, status=status, reason=reason, attempts=attempts,
                   wall_s=wall_s)
        if figs is not None:
            row.update({k: getattr(figs, k) for k in FIGURE_COLUMNS})
        if result is not None:
            prov = result.provenance
            row.update({k: getattr(prov, k) for k in _PROVENANCE})
            row["result_json"] = result.to_json()
        names = [k for k in RUN_COLUMNS if k != "finished"]
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute("DELETE FROM runs WHERE session_id = ? AND cell = ? AND status = 'failed'",
                                 [session_id, cell.key])
                row["run_id"] = self.con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0]
                self.con.execute(f"INSERT INTO runs ({', '.join(f'{chr(34)}{k}{chr(34)}' for k in names)}, finished)"
                                 f" VALUES ({', '.join('?' for _ in names)}, now())", [row[k] for k in names])
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
        return row["run_id"]

    def rows(self, session_id):
        """The session's runs as dicts, in run order."""
        return self.query("SELECT * FROM runs WHERE session_id = ? ORDER BY run_id", [session_id])[1]

    def query(self, sql, params=None):
        """(column names, rows as dicts) of any SQL over the store."""
        import duckdb

        with self._lock:
            try:
                cur = self.con.execute(sql, params or [])
            except duckdb.Error as e:
                raise UsageError(f"the query failed: {str(e).splitlines()[0]}",
                                 hint="tables: runs, sessions (docs/experiments.md lists the columns)") from None
            if cur.description is None:
                return [], []
            names = [d[0] for d in cur.description]
            return names, [dict(zip(names, r)) for r in cur.fetchall()]

    def export(self, out_path, fmt, sql="SELECT * FROM runs ORDER BY run_id"):
        """Write the rows of ``sql`` to ``out_path`` as csv, json (an array of objects) or parquet."""
        import duckdb

        if fmt not in ("csv", "json", "parquet"):
            raise UsageError(f"unknown export format {fmt!r}", hint="use csv, json or parquet")
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        option = {"csv": "FORMAT csv, HEADER true", "json": "FORMAT json, ARRAY true",
                  "parquet": "FORMAT parquet"}[fmt]
        target = str(out_path).replace("'", "''")
        with self._lock:
            try:
                self.con.execute(f"COPY ({sql}) TO '{target}' ({option})")
            except duckdb.Error as e:
                raise UsageError(f"the export failed: {str(e).splitlines()[0]}",
                                 hint="check the --sql query and the output path") from None
        if fmt == "csv":
            _neutralise_csv(out_path)
        return out_path


def _neutralise_csv(path):
    """Rewrite a csv file with every cell a spreadsheet would run as a formula made text (bench's --csv rule,
    :func:`tinyhost.bench.results.csv_cell`): model, board and dataset names come from files and experiment files."""
    import csv
    import io

    from ..bench.results import csv_cell, write_atomic

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([csv_cell(v) for v in row] for row in rows)
    write_atomic(path, out.getvalue())


def result_of(row):
    """The BenchResult stored in a run row (None for a failed or skipped cell)."""
    from ..bench.results import BenchResult

    return BenchResult.from_dict(json.loads(row["result_json"])) if row.get("result_json") else None

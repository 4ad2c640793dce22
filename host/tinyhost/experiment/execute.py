"""Run an experiment's cells through ``tinyhost.bench.session.run`` and store each one as it finishes.

The cells of one board run one after another on that board; virtual boards run side by side, as many at once as
there are cores, each with its own state folder under the experiment's work folder (the firmware is written to a
virtual board's flash once, for its first cell); each real board runs one cell at a time. A cell whose board
fails (transport, protocol, a board that does not come back) is run again ``bench.retries`` times; then it and the
board's remaining cells are stored as failed with the reason, and the other boards go on. A cell is stored when it
finishes, so a run stopped by Ctrl-C, a crash or a kill loses at most the cells in flight: ``resume`` continues the
latest session, skipping every cell it holds.
"""

import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from ..bench import runner, session
from . import store as store_mod

log = logging.getLogger(__name__)

# errors that say the board (or the link to it) failed, rather than this cell's model or settings
BOARD_FAILURES = (errors.TransportError, errors.ProtocolError, errors.BoardNotFound, errors.BenchInterrupted)


class Events:
    """What an experiment run reports as it goes; the CLI draws progress from it. Every method may be left as is."""

    def start(self, plan, cells, done):
        """``cells`` (PlannedCell) will run; ``done`` cell keys were already stored (a resumed session)."""

    def cell_started(self, planned):
        pass

    def cell_finished(self, planned, status, reason, wall_s):
        pass

    def message(self, text):
        log.info(text)


@dataclass
class RunSummary:
    session_id: int
    store_path: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    wall_s: float = 0.0


def work_dir(exp, store_path):
    """Where an experiment keeps its virtual boards' flash and its accuracy journals: beside the store."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", exp.name)
    return Path(store_path).parent / "experiments" / safe


def journal_path(exp, store_path, session_id, cell):
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "-", cell.key)
    return work_dir(exp, store_path) / "journals" / f"s{session_id}-{safe}.jsonl"


def bench_options(exp, planned, state_dir, journal, port=None):
    """The BenchOptions of one cell: what `tinyhost bench` would be given for it (``port``: the serial port of an
    acquired labgrid place)."""
    from ..bench.offload import OffloadOptions

    cell, b = planned.cell, exp.bench
    offload = None
    if cell.mode.kind != "local":
        mode = {"offload": "on", "auto": "auto", "split": "split"}[cell.mode.kind]
        offload = OffloadOptions(mode=mode, threshold=cell.mode.threshold, inputs=b.offload_inputs,
                                 split=cell.mode.split_at)
    return session.BenchOptions(
        model=str(planned.model_path), mode=b.measure, board=cell.board.board, port=port or cell.board.port,
        baud=b.baud,
        state_dir=str(state_dir), dataset=planned.dataset, backend=cell.backend, window_s=b.window_s,
        min_inferences=b.min_inferences, warmups=b.warmups, inputs=b.inputs, limit=b.limit, timeout_s=b.timeout_s,
        journal=str(journal), resume=Path(journal).exists(), offload=offload)


class _CellListener(runner.Listener):
    def __init__(self, events, planned):
        self.events, self.prefix = events, planned.cell.label

    def message(self, text):
        log.info("%s: %s", self.prefix, text)


def run(exp, plan, st, resume=False, events=None, bench_run=None, stop=None):
    """Run ``plan``'s cells, storing each in ``st`` (a Store); returns a RunSummary. ``bench_run`` stands in for
    ``bench.session.run`` (tests); ``stop`` is a threading.Event that ends the run after the cells in flight."""
    events = events or Events()
    bench_run = bench_run or session.run
    stop = stop or threading.Event()
    if resume:
        latest = st.latest_session(exp.name)
        if latest is None:
            raise errors.UsageError(f"no run of experiment {exp.name!r} in {st.path} to resume",
                                    hint="run it without --resume")
        session_id, sha = latest
        if sha != exp.sha256:
            raise errors.UsageError(f"{exp.path} changed since session {session_id} was started",
                                    hint="run without --resume to start a new session (its runs are added, the "
                                         "old ones stay in the store)")
        done = st.done_cells(session_id)
    else:
        session_id, done = st.new_session(exp, len(plan.cells)), set()
    summary = RunSummary(session_id, st.path, already_done=len(done & {p.cell.key for p in plan.cells}))
    for p in plan.skipped:
        if p.cell.key not in done:
            st.add_run(session_id, exp, p.cell, "skipped", reason=p.skip_reason)
            summary.skipped += 1
    groups = {}
    for p in plan.to_run:
        if p.cell.key not in done:
            groups.setdefault(p.cell.board.name, []).append(p)
    events.start(plan, [p for g in groups.values() for p in g], done)
    state_root = work_dir(exp, st.path) / "sim"
    lock = threading.Lock()
    t0 = time.monotonic()

    def record(p, status, reason="", result=None, attempts=1, wall_s=0.0):
        figs = None
        if result is not None:
            off = result.offload.passes[-1] if result.offload and result.offload.passes else None
            figs = store_mod.figures(result, off, p.input_bytes)
        st.add_run(session_id, exp, p.cell, status, reason=reason, result=result, figs=figs, attempts=attempts,
                   wall_s=wall_s)
        with lock:                                           # summary.ok / .failed / .skipped
            setattr(summary, status, getattr(summary, status) + 1)
        events.cell_finished(p, status, reason, wall_s)

    def run_board(cells):
        """The cells of one board in a row; a labgrid place is acquired for them and released after, whatever
        happened."""
        place = cells[0].cell.board
        if not place.place:
            run_cells(cells)
            return
        from .. import farm

        recorded = set()
        try:
            with farm.acquire(place.place, place.coordinator) as url:
                events.message(f"labgrid place {place.place}: serial port {url}")
                run_cells(cells, url, recorded)
        except errors.TinyhostError as e:
            for p in cells:
                if p.cell.key not in recorded and not stop.is_set():
                    record(p, "failed", reason=str(e))

    def run_cells(cells, port=None, recorded=None):
        board_failed = None
        for p in cells:
            if recorded is not None:
                recorded.add(p.cell.key)
            if stop.is_set():
                return
            if board_failed:
                record(p, "failed", reason=f"not run: the board failed on an earlier cell ({board_failed})")
                continue
            events.cell_started(p)
            start = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                journal = journal_path(exp, st.path, session_id, p.cell)
                try:
                    result = bench_run(bench_options(exp, p, state_root, journal, port), _CellListener(events, p))
                except BOARD_FAILURES as e:
                    if attempts <= exp.bench.retries and not stop.is_set():
                        events.message(f"{p.cell.label}: {e.message}; trying again ({attempts}/{exp.bench.retries})")
                        continue
                    board_failed = e.message
                    record(p, "failed", reason=str(e), attempts=attempts, wall_s=time.monotonic() - start)
                except errors.TinyhostError as e:            # this cell's model or settings: the board goes on
                    record(p, "failed", reason=str(e), attempts=attempts, wall_s=time.monotonic() - start)
                except Exception as e:                       # a bug: stored with its type, the others go on
                    log.exception("%s failed", p.cell.label)
                    record(p, "failed", reason=f"{type(e).__name__}: {e}", attempts=attempts,
                           wall_s=time.monotonic() - start)
                else:
                    record(p, "ok", result=result, attempts=attempts, wall_s=time.monotonic() - start)
                break

    virtual = [g for g in groups.values() if g[0].cell.board.virtual]
    real = [g for g in groups.values() if not g[0].cell.board.virtual]
    work = queue.Queue()
    for g in sorted(virtual, key=lambda g: -sum(p.estimate_s for p in g)):     # longest first
        work.put(g)
    failures = []

    def worker(take=None):
        try:
            if take is not None:
                run_board(take)
                return
            while not stop.is_set():
                try:
                    cells = work.get_nowait()
                except queue.Empty:
                    return
                run_board(cells)
        except BaseException as e:                           # the store itself failed: end the run with it
            failures.append(e)
            stop.set()

    # daemon threads: a second Ctrl-C ends the process without waiting for the cells in flight
    threads = [threading.Thread(target=worker, daemon=True, name=f"virtual-{i}")
               for i in range(min(plan.workers, len(virtual)))]
    threads += [threading.Thread(target=worker, args=(g,), daemon=True, name=f"board-{g[0].cell.board.name}")
                for g in real]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        raise
    if failures:
        raise failures[0]
    summary.wall_s = time.monotonic() - t0
    return summary

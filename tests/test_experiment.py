"""tinyhost experiment without a board: the YAML file's validation (errors name the line), cells with exclude/only
rules, the plan's fit verdicts, the results store's schema, resume and failure handling with a stand-in for the
bench run, the Pareto computation on a fixed table, and the budget planner on the DISCO-2 example."""

import json
import threading
import time
from pathlib import Path

import pytest

from tinyhost.bench.results import BenchResult, EnergyResult, MemoryResult, PerformanceResult
from tinyhost.board import Provenance
from tinyhost.experiment import budget, config, execute, pareto, plan as plan_mod, report, store as store_mod

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tinyhost.model.writer import small_classifier

    return small_classifier(tmp_path_factory.mktemp("m") / "tiny.tflite", (1, 49, 10, 1), 12, seed=7,
                            conv_channels=4, pool=5)


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def experiment(tmp_path, model, extra=""):
    return write(tmp_path, f"""name: t
models:
  - {{name: a, path: {model}}}
  - {{name: b, path: {model}}}
boards: [sim:esp32, sim:esp32s3]
modes: [local, offload, {{auto: [0.6, 0.8]}}]
{extra}""")


# --- the file ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, line, words", [
    ("models: [kws]\nboards: [sim]\nmodes: [local, everywhere]\n", 3, "unknown mode 'everywhere'"),
    ("models: [kws]\nboards:\n  - sim\n  - sim:nosuchboard\n", 4, "nosuchboard"),
    ("models: [kws]\nboards: [sim]\nbench:\n  window_s: fast\n", 4, "bench.window_s must be a number"),
    ("models: [kws]\nboards: [sim]\ncolour: blue\n", 3, "unknown key 'colour'"),
    ("models: [kws]\nboards: [sim]\nexclude:\n  - {board: esp99}\n", 4, "esp99"),
    ("models: [kws]\nboards: [sim]\nmodes:\n  - auto: [0.5, 1.5]\n", 4, "between 0 and 1"),
    ("models: [kws, kws]\nboards: [sim]\n", 1, "listed twice"),
    ("models: [kws]\nboards: [sim]\nbudget:\n  link: {rate_bps: 1}\n", 3, "workload"),
    ("models: [kws]\nboards: [sim\n", 3, "not valid YAML"),
])
def test_a_bad_file_is_refused_naming_its_line(tmp_path, body, line, words):
    path = write(tmp_path, body)
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert f"{path}:{line}:" in e.value.message
    assert words in e.value.message
    assert e.value.exit_code == 2


def run_cli(capsys, *argv):
    from tinyhost.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_the_cli_prints_the_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, "models: [kws]\nboards: [sim]\nrepeats: 0\n")
    code, out, err = run_cli(capsys, "experiment", "plan", str(path))
    assert code == 2
    assert err.startswith(f"tinyhost: {path}:3: repeats must be at least 1")


def test_cells_are_the_product_less_the_excluded(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model, "exclude:\n  - {model: b, mode: auto}\n"
                                                       "  - {model: a, board: sim:esp32s3, mode: offload}\n"))
    keys = [c.key for c in exp.cells()]
    assert len(keys) == 2 * 2 * 4 - 2 * 2 - 1
    assert "b|sim:esp32|auto@0.6|auto|0" not in keys and "a|sim:esp32s3|offload|auto|0" not in keys
    assert "a|sim:esp32s3|auto@0.8|auto|0" in keys and "b|sim:esp32|offload|auto|0" in keys
    assert len(set(keys)) == len(keys)


def test_only_rules_and_repeats(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model, "repeats: 2\nonly:\n  - {mode: [local, auto@0.8]}\n"))
    cells = exp.cells()
    assert {c.mode.name for c in cells} == {"local", "auto@0.8"}
    assert len(cells) == 2 * 2 * 2 * 2
    assert {c.repeat for c in cells} == {0, 1}


def test_split_is_a_mode_with_its_split_points(tmp_path, tiny_model):
    path = write(tmp_path, f"models:\n  - {{name: a, path: {tiny_model}}}\nboards: [sim]\n"
                           "modes: [local, {split: [auto, 2]}]\n")
    exp = config.load(path)
    assert [c.mode.name for c in exp.cells()] == ["local", "split@auto", "split@2"]
    planned = plan_mod.make(exp).to_run[-1]
    opts = execute.bench_options(exp, planned, tmp_path, tmp_path / "j.jsonl")
    assert (opts.offload.mode, opts.offload.split) == ("split", 2)
    bad = write(tmp_path, "models: [kws]\nboards: [sim]\nmodes:\n  - split: [0]\n", "bad.yaml")
    with pytest.raises(config.ConfigError, match="split point must be at least 1"):
        config.load(bad)


def test_set_overrides_the_files_settings_and_is_checked_like_them(tmp_path, tiny_model, capsys):
    path = experiment(tmp_path, tiny_model, "bench: {limit: 40, window_s: 0.5}\n")
    exp = config.load(path, ["bench.limit=8", "boards=[sim:esp32]", "modes=[local]"])
    assert exp.bench.limit == 8 and exp.bench.window_s == 0.5
    assert [c.key for c in exp.cells()] == ["a|sim:esp32|local|auto|0", "b|sim:esp32|local|auto|0"]
    assert exp.sha256 != config.load(path).sha256      # a resumed run must give the same settings
    code, out, err = run_cli(capsys, "experiment", "plan", str(path), "--set", "bench.limit=fast")
    assert code == 2 and "bench.limit must be an integer, not 'fast'" in err
    code, out, err = run_cli(capsys, "experiment", "plan", str(path), "--set", "limit")
    assert code == 2 and "is not KEY=VALUE" in err


def test_a_dataset_named_by_a_shipped_model_is_its_test_set(tmp_path, tiny_model):
    exp = config.load(write(tmp_path, f"models:\n  - {{name: a, path: {tiny_model}, dataset: kws}}\n"
                                      "boards: [sim:esp32]\nbench: {limit: 5}\n"))
    planned = plan_mod.make(exp, 1).cells[0]
    assert planned.dataset == str(REPO / "models" / "kws" / "testset") and planned.n_samples == 5


def test_the_plan_skips_a_model_that_does_not_fit_before_a_byte_is_sent(tmp_path, tiny_model):
    vww = REPO / "models" / "vww" / "vww.tflite"
    exp = config.load(write(tmp_path, f"models: [{tiny_model}, {vww}]\nboards: [sim:esp32, sim:nano33ble]\n"))
    plan = plan_mod.make(exp, workers=2)
    skipped = {(p.cell.model.name, p.cell.board.name): p.skip_reason for p in plan.skipped}
    assert list(skipped) == [("vww", "sim:nano33ble")]
    assert "does not fit the virtual nano33ble" in skipped[("vww", "sim:nano33ble")]
    assert {p.cell.key for p in plan.to_run} == {"tiny|sim:esp32|local|auto|0", "tiny|sim:nano33ble|local|auto|0",
                                                 "vww|sim:esp32|local|auto|0"}
    assert plan.estimate_s > 0
    one_at_a_time = plan_mod.wall_estimate(plan_mod.Plan(exp, plan.cells, workers=1))
    assert one_at_a_time > plan.estimate_s          # two virtual boards side by side take less


# --- the store and the runs ----------------------------------------------------------------------------------------

def fake_result(cell_key, latency_us=1000.0, top1=None, board_time=None):
    from tinyhost.bench.results import AccuracyResult

    prov = Provenance(board="esp32", virtual=True, firmware_hash="f00d", model_sha256="ab" * 32,
                      dataset_sha256="cd" * 32, date="2026-01-02T03:04:05Z", model_path=cell_key)
    perf = PerformanceResult(window_s=0.1, min_inferences=1, windows=[], median_inferences_per_s=1e6 / latency_us,
                             median_latency_us=latency_us, min_inferences_per_s=1, max_inferences_per_s=1,
                             spread_pct=0.0, latency={"p50_us": latency_us, "count": 3})
    if board_time is not None:                 # (microseconds, model version), as bench.session.add_board_time sets
        perf.board_time_us, perf.board_time_model = board_time
    acc = AccuracyResult("kws01", 10, 10, "top1", top1, top_k={"1": top1}) if top1 is not None else None
    return BenchResult(prov, performance=perf, accuracy=acc, memory=MemoryResult(2000, 5000, 100, 110000, 50000, 60000),
                       energy=EnergyResult("estimate", latency_us * 0.5))


def test_board_ms_is_the_estimate_when_a_result_carries_one_else_the_measured_latency():
    measured = store_mod.board_time(fake_result("x", latency_us=2500))
    assert measured == (2.5, "measured, virtual board (host CPU)", None)
    estimated = store_mod.board_time(fake_result("x", latency_us=2500, board_time=(41_000.0, "bt-1")))
    assert estimated == (41.0, "board-time estimate", "bt-1")


def test_the_store_keeps_one_row_per_cell_and_run_with_provenance_and_the_whole_result(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model))
    cell = exp.cells()[0]
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        sid = st.new_session(exp, 3)
        result = fake_result(cell.key, top1=0.75)
        st.add_run(sid, exp, cell, "ok", result=result, figs=store_mod.figures(result, None, 490))
        st.add_run(sid, exp, cell, "ok", result=result, figs=store_mod.figures(result, None, 490))   # run again
        names, rows = st.query("SELECT * FROM runs ORDER BY run_id")
    assert len(rows) == 2                                   # a rerun adds a run
    for column in ("model", "board_name", "mode", "status", "accuracy", "board_ms", "board_ms_source", "energy_uj",
                   "ram_bytes", "firmware_hash", "model_sha256", "dataset_sha256", "tinyhost_version", "date",
                   "virtual", "result_json", "input_bytes"):
        assert column in names
    row = rows[0]
    assert (row["accuracy"], row["top1"], row["board_ms"], row["ram_bytes"], row["input_bytes"]) == \
        (0.75, 0.75, 1.0, 60000, 490)
    assert row["firmware_hash"] == "f00d" and row["dataset_sha256"] == "cd" * 32 and row["virtual"] is True
    assert BenchResult.from_json(row["result_json"]).provenance.model_sha256 == "ab" * 32


def test_export_writes_csv_json_and_parquet(tmp_path, tiny_model):
    import duckdb

    exp = config.load(experiment(tmp_path, tiny_model))
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        sid = st.new_session(exp, 1)
        for cell in exp.cells()[:3]:
            st.add_run(sid, exp, cell, "failed", reason="board gone")
        for fmt in ("csv", "json", "parquet"):
            st.export(tmp_path / f"out.{fmt}", fmt)
    assert (tmp_path / "out.csv").read_text().count("board gone") == 3
    assert len(json.loads((tmp_path / "out.json").read_text())) == 3
    assert duckdb.connect().execute(f"SELECT count(*) FROM '{tmp_path / 'out.parquet'}'").fetchone()[0] == 3


def test_csv_export_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path, tiny_model):
    import csv

    exp = config.load(experiment(tmp_path, tiny_model))
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        sid = st.new_session(exp, 1)
        st.add_run(sid, exp, exp.cells()[0], "failed", reason='=HYPERLINK("http://x","y")')
        st.export(tmp_path / "out.csv", "csv")
    rows = list(csv.DictReader(open(tmp_path / "out.csv", newline="")))
    assert len(rows) == 1 and rows[0]["reason"] == '\'=HYPERLINK("http://x","y")'
    assert not any(v.startswith(("=", "+", "@")) for row in rows for v in row.values())


class FakeBench:
    """Stands in for bench.session.run: records the calls, fails boards as told, sleeps a little."""

    def __init__(self, fail_boards=(), interrupt_after=None, delay_s=0.05):
        self.calls = []
        self.fail_boards = dict(fail_boards)      # board -> how many times it fails
        self.interrupt_after = interrupt_after
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.resumed = set()            # boards of the cells whose accuracy journal was continued

    def __call__(self, opts, listener):
        from tinyhost.errors import BoardNotResponding

        with self.lock:
            self.calls.append((opts.board, opts.offload.mode if opts.offload else "local"))
            if opts.resume:
                self.resumed.add(opts.board)
            n = len(self.calls)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay_s)
            if self.interrupt_after is not None and n > self.interrupt_after:
                raise KeyboardInterrupt
            if self.fail_boards.get(opts.board, 0):
                with self.lock:
                    self.fail_boards[opts.board] -= 1
                raise BoardNotResponding(f"no answer on {opts.board}")
            return fake_result(opts.board)
        finally:
            with self.lock:
                self.running -= 1


def test_virtual_boards_run_side_by_side_each_board_one_cell_at_a_time(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model))
    plan = plan_mod.make(exp, workers=2)
    fake = FakeBench(delay_s=0.1)
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        summary = execute.run(exp, plan, st, bench_run=fake)
        rows = st.rows(summary.session_id)
    assert summary.ok == len(plan.cells) == 16 and fake.most_at_once == 2
    assert len({r["cell"] for r in rows}) == 16 and all(r["status"] == "ok" for r in rows)
    modes = {m for _, m in fake.calls}
    assert modes == {"local", "on", "auto"}


def test_a_failing_board_is_retried_then_its_cells_fail_and_the_others_go_on(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model, "bench: {retries: 1}\n"))
    plan = plan_mod.make(exp, workers=2)
    fake = FakeBench(fail_boards={"sim:esp32s3": 2})       # fails its first cell twice: retried once, then given up
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        summary = execute.run(exp, plan, st, bench_run=fake)
        rows = st.rows(summary.session_id)
    s3 = [r for r in rows if r["board_name"] == "sim:esp32s3"]
    assert all(r["status"] == "failed" for r in s3) and len(s3) == 8
    assert s3[0]["attempts"] == 2 and "no answer on sim:esp32s3" in s3[0]["reason"]
    assert all("the board failed on an earlier cell" in r["reason"] for r in s3[1:])
    assert sum(1 for b, _ in fake.calls if b == "sim:esp32s3") == 2
    assert [r["status"] for r in rows if r["board_name"] == "sim:esp32"] == ["ok"] * 8
    assert (summary.ok, summary.failed) == (8, 8)


def test_resume_after_an_interruption_runs_each_cell_once(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model))
    plan = plan_mod.make(exp, workers=1)
    store_path = tmp_path / "r.duckdb"
    with store_mod.Store(store_path) as st, pytest.raises(KeyboardInterrupt):
        execute.run(exp, plan, st, bench_run=FakeBench(interrupt_after=5))
    with store_mod.Store(store_path) as st:
        stored_before = st.query("SELECT cell FROM runs")[1]
        assert len(stored_before) == 5
        # the sixth cell was killed during its accuracy run: its journal is there, and the bench continues it
        sixth = next(p for p in plan.cells if p.cell.key not in {r["cell"] for r in stored_before})
        journal = execute.journal_path(exp, store_path, 1, sixth.cell)
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.write_text("")
        fake = FakeBench()
        summary = execute.run(exp, plan, st, resume=True, bench_run=fake)
        rows = st.rows(summary.session_id)
    assert len(fake.calls) == 16 - 5 and summary.already_done == 5
    assert fake.resumed == {sixth.cell.board.board}
    assert sorted(r["cell"] for r in rows) == sorted(p.cell.key for p in plan.cells)    # each cell exactly once


def test_resume_refuses_a_changed_file_and_a_store_without_a_run(tmp_path, tiny_model):
    from tinyhost.errors import UsageError

    path = experiment(tmp_path, tiny_model)
    exp = config.load(path)
    plan = plan_mod.make(exp, workers=1)
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        with pytest.raises(UsageError, match="to resume"):
            execute.run(exp, plan, st, resume=True, bench_run=FakeBench())
        execute.run(exp, plan, st, bench_run=FakeBench())
        path.write_text(path.read_text() + "repeats: 2\n")
        changed = config.load(path)
        with pytest.raises(UsageError, match="changed since session 1"):
            execute.run(changed, plan_mod.make(changed, workers=1), st, resume=True, bench_run=FakeBench())


# --- Pareto fronts, report, budget -----------------------------------------------------------------------------------

def test_pareto_front_on_a_fixed_table():
    table = [{"label": "big", "ms": 120.0, "acc": 0.93}, {"label": "mid", "ms": 40.0, "acc": 0.90},
             {"label": "small", "ms": 10.0, "acc": 0.80}, {"label": "worse", "ms": 50.0, "acc": 0.85},
             {"label": "tie", "ms": 40.0, "acc": 0.88}, {"label": "unmeasured", "ms": None, "acc": 0.99}]
    front = pareto.front(pareto.points(table, "ms", "acc"))
    assert [p.label for p in front] == ["small", "mid", "big"]


def test_report_html_embeds_labelled_pareto_plots_and_the_budget(tmp_path, tiny_model):
    exp = config.load(experiment(tmp_path, tiny_model, """budget:
  workload: {events_per_day: 86400, input_bytes: 490, useful_fraction: 0.05}
  link: {rate_bps: 250000, duty_cycle: 0.01}
  power: {average_w: 0.05, base_w: 0.005, radio_tx_w: 0.03}
"""))
    rows = []
    for i, cell in enumerate(exp.cells()):
        result = fake_result(cell.key, latency_us=1000.0 * (i + 1), top1=0.5 + i / 40)
        figs = store_mod.figures(result, None, 490)
        rows.append(dict(run_id=i, model=cell.model.name, board_name=cell.board.name, mode=cell.mode.name,
                         backend_asked="auto", status="ok", reason="", virtual=True, finished="2026-01-02 03:04",
                         **{k: getattr(figs, k) for k in store_mod.FIGURE_COLUMNS}))
    paths = report.write(exp, rows, tmp_path / "out", exp.budget)
    html = paths[0].read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "Pareto front: accuracy vs latency" in html and "Best under the budget" in html
    assert "Modes side by side" in html and "<th>auto@0.8</th>" in html
    assert sorted(p.name for p in paths[2:]) == ["pareto_board_ms.png", "pareto_energy_uj.png",
                                                 "pareto_ram_bytes.png"]


def test_report_plots_a_split_cells_plan(tmp_path, tiny_model):
    from tinyhost import split
    from tinyhost.bench.results import OffloadResult

    path = write(tmp_path, f"models:\n  - {{name: a, path: {tiny_model}}}\nboards: [sim]\n"
                           "modes: [local, {split: [2]}]\n")
    exp = config.load(path)
    plan = split.build_plan(tiny_model, "esp32", "wifi", server_us={k: 50 for k in range(20)})
    rows = []
    for i, cell in enumerate(exp.cells()):
        result = fake_result(cell.key)
        if cell.mode.kind == "split":
            result.offload = OffloadResult("127.0.0.1:1", True, "a", False, "tcp", 1, "synthetic",
                                           split_plan=plan.to_dict())
        rows.append(dict(run_id=i, model=cell.model.name, board_name=cell.board.name, mode=cell.mode.name,
                         backend_asked="auto", status="ok", reason="", virtual=True, finished="2026-01-02 03:04",
                         result_json=result.to_json(),
                         **{k: getattr(store_mod.figures(result, None, 490), k) for k in store_mod.FIGURE_COLUMNS}))
    paths = report.write(exp, rows, tmp_path / "out")
    md = paths[1].read_text()
    assert "Split plan: a on sim over wifi" in md and f"k = {plan.best_k} of {len(plan.rows) - 1}" in md
    assert (tmp_path / "out" / "split_plan_1.png").is_file()


def test_disco2_reproduces_the_lecture_arithmetic():
    data, is_experiment = budget.load_file(REPO / "examples" / "disco2.yaml")
    res = budget.evaluate(data)
    assert not is_experiment
    assert res.link_bytes_per_day == pytest.approx(3.0e9)
    assert res.max_events_downlinked_per_day == pytest.approx(49.1, abs=0.005)
    by_name = {v.name.split(" (")[0]: v for v in res.verdicts}
    plain = by_name["no filtering"]
    assert plain.events_downlinked_per_day == pytest.approx(49.1, abs=0.005)
    assert plain.useful_downlinked_per_day == pytest.approx(49.1 * 0.33, abs=0.01)
    assert plain.ok and plain.average_w < 2.0
    filtered = by_name["cloud classifier on board"]
    assert filtered.useful_downlinked_per_day == pytest.approx(49.1 * 0.297 / 0.364, abs=0.05)
    assert filtered.useful_downlinked_per_day > 2 * plain.useful_downlinked_per_day
    heavy = by_name["segmentation network on a payload computer"]
    assert heavy.limits["average power"] is False and not heavy.ok
    assert res.best.startswith("cloud classifier on board")


def test_budget_cli_prints_the_verdict(capsys):
    code, out, err = run_cli(capsys, "budget", str(REPO / "examples" / "disco2.yaml"))
    assert code == 0, err
    assert "at most 49.1 events a day" in out
    assert "best under the budget: cloud classifier on board" in out


# --- labgrid places (tests/test_farm_labgrid.py runs a real coordinator and exporter) --------------------------------

SHOW = """Place 'kit-07':
  matches:
    lab/kit07/*
  acquired: lab-pc/alice
  acquired resources:
    lab/kit07/NetworkSerialPort/RawSerialPort
Acquired resource 'RawSerialPort' (lab/kit07/NetworkSerialPort/RawSerialPort):
  {'acquired': 'kit-07',
   'avail': True,
   'cls': 'NetworkSerialPort',
   'params': {'extra': {'path': '/dev/ttyUSB3',
                        'proxy': 'lab-pc',
                        'proxy_required': False},
              'host': 'lab-pc',
              'port': 38797,
              'speed': 115200}}
"""


def test_the_serial_port_of_an_acquired_place_is_read_from_labgrid_client_show():
    from tinyhost import farm

    (resource,) = farm.acquired_resources(SHOW)
    assert resource["cls"] == "NetworkSerialPort"
    assert farm.serial_url(resource) == "rfc2217://lab-pc:38797?ign_set_control"
    raw = dict(resource, params=dict(resource["params"], protocol="raw"))
    assert farm.serial_url(raw) == "socket://lab-pc:38797"
    assert farm.serial_url(dict(resource, params=dict(resource["params"], port=None))) is None   # not up yet


def test_a_place_in_the_file_is_a_real_board_and_cannot_also_have_a_port(tmp_path):
    exp = config.load(write(tmp_path, "models: [kws]\nboards:\n  - {board: esp32, place: kit-07, "
                                      "coordinator: '10.0.0.5:20408'}\n"))
    (b,) = exp.boards
    assert (b.name, b.place, b.coordinator, b.virtual) == ("kit-07", "kit-07", "10.0.0.5:20408", False)
    with pytest.raises(config.ConfigError, match="exp.yaml:4: a board has a port or a labgrid place, not both"):
        config.load(write(tmp_path, "models: [kws]\nboards:\n  - sim\n  - {board: esp32, place: k, port: /dev/x}\n"))


def test_without_labgrid_client_a_place_says_what_to_install(monkeypatch):
    from tinyhost import farm
    from tinyhost.errors import UsageError

    monkeypatch.delenv(farm.CLIENT_ENV, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="labgrid-client not found") as e:
        farm.client_command()
    assert "pip install labgrid" in e.value.hint


def test_budget_configurations_from_cells():
    rows = [{"label": "local", "mode": "local", "board_ms": 2.0, "energy_uj": 400.0, "accuracy": 0.9},
            {"label": "local, not measured", "mode": "local", "board_ms": None, "energy_uj": None, "accuracy": None},
            {"label": "offload", "mode": "offload", "offloaded_fraction": 1.0},
            {"label": "auto", "mode": "auto@0.8", "offloaded_fraction": 0.125}]
    data = {"workload": {"events_per_day": 1000, "input_bytes": 500, "useful_fraction": 0.1},
            "link": {"rate_bps": 8000, "duty_cycle": 1.0}}
    res = budget.evaluate(data, budget.configurations_from_cells(rows, data))
    sent = {v.name: v.events_sent_per_day for v in res.verdicts}
    assert sent == pytest.approx({"local": 1000 * (0.1 * 0.9 + 0.9 * 0.1), "offload": 1000, "auto": 125})
    assert res.max_events_downlinked_per_day == pytest.approx(8000 * 86400 / 8 / 500)


def test_results_query_prints_rows_and_a_missing_store_is_an_error(tmp_path, tiny_model, capsys):
    exp = config.load(experiment(tmp_path, tiny_model))
    with store_mod.Store(tmp_path / "r.duckdb") as st:
        sid = st.new_session(exp, 1)
        st.add_run(sid, exp, exp.cells()[0], "skipped", reason="does not fit")
    code, out, err = run_cli(capsys, "results", "query", "select cell, status, reason from runs",
                             "--store", str(tmp_path / "r.duckdb"))
    assert code == 0, err
    assert "a|sim:esp32|local|auto|0   skipped   does not fit" in out
    code, out, err = run_cli(capsys, "results", "query", "select 1", "--store", str(tmp_path / "none.duckdb"))
    assert code == 2 and f"no results store at {tmp_path / 'none.duckdb'}" in err
    assert not (tmp_path / "none.duckdb").exists()
    code, out, err = run_cli(capsys, "results", "query", "select nope from runs", "--store",
                             str(tmp_path / "r.duckdb"))
    assert code == 2 and err.startswith("tinyhost: the query failed: ")


def test_paths_in_the_file_are_relative_to_its_folder(tmp_path, tiny_model, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    (sub / "tiny.tflite").write_bytes(Path(tiny_model).read_bytes())
    (sub / "set").mkdir()
    path = write(sub, "models:\n  - {name: t, path: tiny.tflite, dataset: set}\nboards: [sim]\nstore: r.duckdb\n")
    monkeypatch.chdir(tmp_path)
    exp = config.load(path)
    assert exp.models[0].path == str(sub / "tiny.tflite") and exp.models[0].dataset == str(sub / "set")
    assert exp.store == str(sub / "r.duckdb")


def test_an_rfc2217_port_opens_without_a_write_timeout(monkeypatch):
    """pyserial's RFC 2217 client raises NotImplementedError for a write timeout; other ports keep theirs."""
    import serial

    from tinyhost import transport

    seen = {}
    loop = serial.serial_for_url

    def fake_for_url(url, **kwargs):
        seen[url] = kwargs["write_timeout"]
        return loop("loop://", **kwargs)

    monkeypatch.setattr(transport.serial, "serial_for_url", fake_for_url)
    transport.SerialTransport.open("rfc2217://lab-pc:38797?ign_set_control", 115200).close()
    transport.SerialTransport.open("socket://lab-pc:4000", 115200).close()
    assert seen == {"rfc2217://lab-pc:38797?ign_set_control": None, "socket://lab-pc:4000": transport.WRITE_TIMEOUT_S}

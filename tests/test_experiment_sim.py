"""tinyhost experiment end to end on virtual boards: two boards side by side, the run killed (SIGKILL) after its
first cell, resumed without losing or repeating a cell, then the report, a query and an export of the store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def experiment_file(tmp_path):
    from tinyhost.model.writer import small_classifier

    small_classifier(tmp_path / "tiny.tflite", (1, 49, 10, 1), 12, seed=7, conv_channels=4, pool=5)
    path = tmp_path / "exp.yaml"
    path.write_text(f"""name: two-boards
models:
  - {{name: tiny, path: tiny.tflite, dataset: {REPO / 'models' / 'kws' / 'testset'}}}
boards: [sim:esp32, sim:esp32s3]
modes: [local]
bench: {{measure: all, window_s: 0.2, inputs: 1, min_inferences: 5, limit: 4, baud: 1000000}}
repeats: 2
store: results.duckdb
""")
    return path


def tinyhost(*args, **kw):
    return [sys.executable, "-c", "from tinyhost.cli import main; main()", *args]


def test_run_killed_then_resumed_counts_every_cell_once_then_report(experiment_file, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "host"))
    proc = subprocess.Popen(tinyhost("experiment", "run", str(experiment_file)), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stderr:                   # one line per finished cell
            if line.startswith("[") and "] tiny on sim:" in line:
                finished.append(line)
                break
            assert time.monotonic() < deadline, "no cell finished in 4 minutes"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert "ok" in finished[0], finished
    resumed = subprocess.run(tinyhost("experiment", "run", str(experiment_file), "--resume"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr and "cells already stored are not run again" in resumed.stderr
    query = subprocess.run(tinyhost("results", "query", "select cell, status, board_ms, accuracy, virtual, "
                                    "firmware_hash from runs order by cell", "--store", "results.duckdb"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert query.returncode == 0, query.stderr
    export = subprocess.run(tinyhost("results", "export", "--format", "json", "--out", "runs.json",
                                     "--store", "results.duckdb"), cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert export.returncode == 0, export.stderr
    runs = json.loads((tmp_path / "runs.json").read_text())
    cells = sorted(r["cell"] for r in runs)
    assert cells == sorted(f"tiny|{b}|local|auto|{i}" for b in ("sim:esp32", "sim:esp32s3") for i in (0, 1))
    assert all(r["status"] == "ok" and r["session_id"] == 1 for r in runs)
    assert all(r["virtual"] and r["firmware_hash"] and r["model_sha256"] and r["dataset_sha256"] for r in runs)
    assert all(r["board_ms"] > 0 and r["accuracy"] is not None and r["ram_bytes"] > 0 for r in runs)
    assert {r["board"] for r in runs} == {"esp32", "esp32s3"}
    report = subprocess.run(tinyhost("experiment", "report", str(experiment_file), "--out", "rep"), cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Pareto front: accuracy vs latency" in html and "data:image/png;base64," in html
    assert (tmp_path / "rep" / "pareto_board_ms.png").stat().st_size > 1000


@pytest.mark.skipif(os.environ.get("TINYHOST_SLOW") != "1", reason="about 30 s: set TINYHOST_SLOW=1")
def test_a_second_cell_on_a_romfs_virtual_board_writes_nothing_to_its_flash(tmp_path):
    """The bench run puts the firmware and the model into a ROMFS partition in one image: a cell after the first,
    same model and board, finds it there (before, each run wrote the partition twice: firmware only, then with
    the model)."""
    from tinyhost.bench import session
    from tinyhost.model.writer import small_classifier

    model = small_classifier(tmp_path / "tiny.tflite", (1, 49, 10, 1), 12, seed=7, conv_channels=4, pool=5)
    opts = session.BenchOptions(model=str(model), mode="memory", board="sim:esp32-romfs", baud=1_000_000,
                                state_dir=str(tmp_path / "state"))
    first = session.run(opts)
    assert any(path.startswith("/rom") for path in first.provenance.files_flashed), first.provenance.files_flashed
    second = session.run(opts)
    assert second.provenance.files_flashed == []
    assert second.memory.arena_bytes == first.memory.arena_bytes

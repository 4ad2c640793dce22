"""A board farm through labgrid on 127.0.0.1: a coordinator, an exporter that publishes a virtual board's port
through ser2net, and a two-cell experiment that acquires the place, runs over RFC 2217 and releases it; a place
someone else holds fails its cells with the reason.

Needs labgrid's programs (labgrid-coordinator, labgrid-exporter, labgrid-client: `pip install labgrid`, in a venv
of its own if you like, then put its bin/ on PATH or in $TINYHOST_LABGRID_BIN) and ser2net (Debian: ser2net)."""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim
REPO = Path(__file__).resolve().parents[1]
PLACE = "tinyhost-test-kit"
BAUD = 1_000_000


def labgrid_tool(name):
    folder = os.environ.get("TINYHOST_LABGRID_BIN")
    if folder and (Path(folder) / name).is_file():
        return str(Path(folder) / name)
    return shutil.which(name)


TOOLS = {name: labgrid_tool(name) for name in ("labgrid-coordinator", "labgrid-exporter", "labgrid-client")}
if not all(TOOLS.values()) or not (shutil.which("ser2net") or Path("/usr/sbin/ser2net").is_file()):
    pytest.skip("needs labgrid's programs (pip install labgrid; $TINYHOST_LABGRID_BIN) and ser2net",
                allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(coordinator, *args):
    return subprocess.run([TOOLS["labgrid-client"], "-x", coordinator, "-p", PLACE, *args], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    """A flashed virtual esp32 exported by a labgrid exporter, a coordinator, and a place matching its port."""
    from tinyhost import board
    from tinyhost.sim import VirtualBoard

    tmp = tmp_path_factory.mktemp("farm")
    env = dict(os.environ, PATH=f"/usr/sbin:{os.environ.get('PATH', '')}")
    procs = []
    vb = VirtualBoard(board="esp32", state_dir=tmp / "sim", baud=BAUD)
    vb.start()
    try:
        with board.connect("esp32", port=vb.port, baud=BAUD) as b:
            b.sync_firmware()
        coordinator = f"127.0.0.1:{free_port()}"
        procs.append(subprocess.Popen([TOOLS["labgrid-coordinator"], "-l", coordinator], cwd=tmp, env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp / "coordinator.log", "w")))
        (tmp / "exporter.yaml").write_text(f"kit:\n  RawSerialPort:\n    port: {vb.port}\n    speed: {BAUD}\n")
        time.sleep(1.0)
        procs.append(subprocess.Popen([TOOLS["labgrid-exporter"], "-c", coordinator, "-n", "farmtest", "--hostname",
                                       "127.0.0.1", str(tmp / "exporter.yaml")], cwd=tmp, env=env,
                                      stdout=subprocess.DEVNULL, stderr=open(tmp / "exporter.log", "w")))
        for _ in range(40):
            if "farmtest" in subprocess.run([TOOLS["labgrid-client"], "-x", coordinator, "resources"],
                                            capture_output=True, text=True, timeout=30).stdout:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the exporter did not register: " + (tmp / "exporter.log").read_text())
        assert client(coordinator, "create").returncode == 0
        assert client(coordinator, "add-match", "farmtest/kit/*").returncode == 0
        yield {"coordinator": coordinator, "tmp": tmp, "vb": vb}
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        vb.stop()


def write_experiment(farm, tmp_path):
    from tinyhost.model.writer import small_classifier

    small_classifier(tmp_path / "tiny.tflite", (1, 49, 10, 1), 12, seed=7, conv_channels=4, pool=5)
    path = tmp_path / "farm.yaml"
    path.write_text(f"""name: farm
models:
  - {{name: tiny, path: tiny.tflite, dataset: {REPO / 'models' / 'kws' / 'testset'}}}
boards:
  - {{name: kit, board: esp32, place: {PLACE}, coordinator: "{farm['coordinator']}"}}
bench: {{measure: all, window_s: 0.2, inputs: 1, min_inferences: 5, limit: 4, baud: {BAUD}}}
repeats: 2
""")
    return path


def run_experiment(path, store_path):
    from tinyhost.experiment import config, execute, plan as plan_mod, store

    exp = config.load(path)
    with store.Store(store_path) as st:
        summary = execute.run(exp, plan_mod.make(exp), st)
        return summary, st.rows(summary.session_id)


def test_an_experiment_runs_through_a_labgrid_place_and_releases_it(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYHOST_LABGRID_CLIENT", TOOLS["labgrid-client"])
    summary, rows = run_experiment(write_experiment(farm, tmp_path), tmp_path / "r.duckdb")
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["reason"] for r in rows]
    assert all(r["port"].startswith("rfc2217://127.0.0.1:") for r in rows)
    assert all(r["virtual"] and r["firmware_hash"] and r["accuracy"] is not None and r["board_ms"] > 0
               for r in rows)
    shown = client(farm["coordinator"], "show").stdout
    assert "Acquired resource" not in shown             # released


def test_a_place_held_by_someone_else_fails_its_cells_with_the_reason(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYHOST_LABGRID_CLIENT", TOOLS["labgrid-client"])
    assert client(farm["coordinator"], "acquire").returncode == 0
    try:
        summary, rows = run_experiment(write_experiment(farm, tmp_path), tmp_path / "r.duckdb")
    finally:
        client(farm["coordinator"], "release")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(f"labgrid place {PLACE}: acquire failed" in r["reason"] for r in rows)

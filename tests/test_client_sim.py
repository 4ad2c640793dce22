"""The host client against the virtual board: starting the runtime (bootstrap, import, already running), files,
atomic puts, fault injection, and the REPL staying reachable. Uses the real MicroPython VM behind a pty."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyhost.client import Device
from tinyhost.errors import PortBusy, TransportError
from tinyhost.rawrepl import RawRepl
from tinyhost.transport import SerialTransport

pytestmark = pytest.mark.sim

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FILES = ("__init__.py", "frame.py", "cmd_files.py", "cmd_session.py", "runtime.py", "cmd_model.py")
FAST_BAUD = 921600


def flash_runtime(dev):
    for name in RUNTIME_FILES:
        dev.put_file(ROOT / "device" / "tinyfw" / name, "/tinyfw/" + name)


@pytest.fixture
def fast_board(tmp_path):
    """A fresh virtual ESP32 at 921600 baud (the tests' transfers take an eighth of the time)."""
    from tinyhost.sim import VirtualBoard

    with VirtualBoard(board="esp32", state_dir=tmp_path / "sim", baud=FAST_BAUD, seed=7) as vb:
        yield vb


def test_bootstrap_then_flash_then_import(sim_board):
    with Device.open(sim_board.port) as dev:
        assert dev.started_via == "bootstrap"
        info = dev.info()
        assert info.virtual and info.board == "sim" and info.emulates == "esp32"
        assert info.bootstrapped and info.firmware_hash == "ram"
        assert 0 < info.heap_free_bytes < info.heap_total_bytes <= sim_board.board.heap_bytes
        assert info.fs_total_bytes == sim_board.board.fs_bytes
        flash_runtime(dev)
        dev.soft_reset()
        assert dev.started_via == "import"
        info = dev.info()
        assert not info.bootstrapped and len(info.firmware_hash) == 16
    # close() ended the runtime and left the board at its REPL: the raw REPL answers as on any board
    with SerialTransport.open(sim_board.port) as t:
        repl = RawRepl(t)
        repl.enter()
        assert repl.exec("print(6 * 7)").strip() == b"42"


def _files_under(dev, path):
    files = set()
    for e in dev.list_files(path):
        files |= _files_under(dev, f"{path}/{e.name}") if e.is_dir else {f"{path}/{e.name}"}
    return files


def test_flash_leaves_exactly_this_firmwares_package_and_the_users_files(fast_board):
    from tinyhost import flash

    items = flash.firmware_items()
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        first = flash.flash_items(dev, items, fast_board.board)
        sent = set(first.sent)
        assert first.removed == () and "/tinyfw/runtime.mpy" in sent
        # what an older firmware could have left: a module since dropped, a package since dropped, and the
        # source of a module now sent compiled (imported before the .mpy); beside them, the user's own files
        for path in ("/tinyfw/frames.mpy", "/tinyfw/old/links.mpy", "/tinyfw/runtime.py", "/data.txt"):
            dev.put_file(b"x = 1\n", path)
        again = flash.flash_items(dev, items, fast_board.board)
        assert again.sent == () and set(again.skipped) == sent
        assert set(again.removed) == {"/tinyfw/frames.mpy", "/tinyfw/old/links.mpy", "/tinyfw/old",
                                      "/tinyfw/runtime.py"}
        assert _files_under(dev, "/tinyfw") == {p for p in sent if p.startswith("/tinyfw/")}
        assert dev.file_hash("/data.txt") is not None
        assert dev.info().firmware_version == "0.1.0"


def test_runtime_left_running_is_found_at_once_and_port_is_exclusive(fast_board):
    dev = Device.open(fast_board.port, baud=FAST_BAUD)
    try:
        with pytest.raises(PortBusy):
            Device.open(fast_board.port, baud=FAST_BAUD)
    finally:
        dev.close(leave_running=True)
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        assert dev.started_via == "running"
        assert dev.info().firmware_version == "0.1.0"


def test_put_get_large_file(fast_board):
    data = os.urandom(60_000)
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        r = dev.put_file(data, "/models/m.bin")
        assert r.nbytes == len(data) and r.frames >= len(data) // 4096
        assert dev.file_hash("/models/m.bin") == hashlib.sha256(data).hexdigest()
        assert dev.get_file("/models/m.bin") == data
        names = {e.name: e.size for e in dev.list_files("/models")}
        assert names == {"m.bin": len(data)}


def test_fault_injection_upload_still_arrives_intact(fast_board):
    data = os.urandom(50_000)
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        fast_board.set_faults(drop_rate=0.001, corrupt_rate=0.001)
        r = dev.put_file(data, "/noisy.bin")
        fast_board.set_faults(0.0, 0.0)
        assert dev.file_hash("/noisy.bin") == hashlib.sha256(data).hexdigest()
        stats = dev.stats()
        assert r.frames_retried > 0 and stats["host_frames_retried"] > 0
        assert stats["frames_bad"] > 0 and stats["naks_sent"] > 0


def test_bootstrap_over_a_damaging_line_runs_the_runtime_as_sent_and_the_files_arrive_identical(tmp_path):
    """The bootstrap loader (tinyfw/loader.py, sent checked through the raw REPL) takes the runtime's source in
    frames: over a line that drops and alters bytes (seeded) the runtime still starts from RAM, and what it then
    writes is what was sent."""
    from tinyhost.sim import VirtualBoard

    with VirtualBoard(board="esp32", state_dir=tmp_path / "sim", baud=FAST_BAUD, drop_rate=2e-3, corrupt_rate=2e-3,
                      seed=11) as vb:
        with Device.open(vb.port, baud=FAST_BAUD) as dev:
            assert dev.started_via == "bootstrap" and dev.info().bootstrapped
            assert dev.link.stats.naks_received > 0 and dev.link.stats.frames_retried > 0   # damage was met
            flash_runtime(dev)
            for name in RUNTIME_FILES:
                local = (ROOT / "device" / "tinyfw" / name).read_bytes()
                assert dev.file_hash("/tinyfw/" + name) == hashlib.sha256(local).hexdigest()


def _start_loader(dev, unit_bytes):
    from tinyhost.client import loader_source

    dev.repl.enter()
    dev.repl.exec_checked(loader_source())
    dev._run_checked(f"load(globals(), {unit_bytes})", allow_absent=False)
    dev._hello(loader=True)


def test_the_loader_runs_each_unit_in_the_repls_namespace_and_reports_its_errors(fast_board):
    from tinyhost import protocol as P
    from tinyhost.errors import DeviceError

    with Device.open(fast_board.port, baud=FAST_BAUD, start=False) as dev:
        _start_loader(dev, 100)
        dev.put_file(b"def twice(x):\n    return 2 * x\n", "bootstrap/1-of-3")
        with pytest.raises(DeviceError, match="ZeroDivisionError"):
            dev.put_file(b"y = twice(21) // 0\n", "bootstrap/2-of-3")
        with pytest.raises(DeviceError, match="larger than 100"):
            dev.put_file(b"#" * 101, "bootstrap/3-of-3")
        dev.link.request(P.T.BYE)
        dev.t.read_until(b"\x04>", 2.0)
        assert dev.repl.exec("print(twice(21))").strip() == b"42"


def test_a_loader_left_running_is_ended_by_the_next_connection(fast_board):
    from tinyhost import protocol as P

    with Device.open(fast_board.port, baud=FAST_BAUD, start=False) as dev:
        _start_loader(dev, 100)
        dev.put_file(b"left_behind = 1\n", "bootstrap/1-of-1")
        dev.t.close()                                        # a command stopped in the middle of a bootstrap
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        assert dev.started_via == "bootstrap"                # the loader ended (\r Ctrl-C), the runtime started
        assert dev.link.request(P.T.HELLO).ftype == P.T.OK and "loader" not in dev.hello


class _Interrupted(Exception):
    pass


def _stop_after(nbytes):
    def progress(sent, total):
        if sent >= nbytes:
            raise _Interrupted()
    return progress


def test_interrupted_put_keeps_old_file(fast_board):
    old, new = b"old model", os.urandom(100_000)
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        dev.put_file(old, "/m.tflite")
        # 1. the host notices (Ctrl-C, error): it aborts, the .part is removed
        with pytest.raises(_Interrupted):
            dev.put_file(new, "/m.tflite", progress=_stop_after(30_000))
        assert dev.get_file("/m.tflite") == old
        assert sorted(e.name for e in dev.list_files("/")) == ["boot.py", "m.tflite"]
        # 2. the host dies mid-transfer without a word
        dev._abort_put = lambda: None
        with pytest.raises(_Interrupted):
            dev.put_file(new, "/m.tflite", progress=_stop_after(30_000))
        dev.t.close()
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        assert dev.started_via == "running"
        assert dev.get_file("/m.tflite") == old
        assert set(e.name for e in dev.list_files("/")) <= {"boot.py", "m.tflite", "m.tflite.part"}


def test_autostart_from_main_py_and_mpremote_still_reaches_the_repl(fast_board):
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        flash_runtime(dev)
        dev.put_file(ROOT / "device" / "main.py", "/main.py")
    fast_board.stop()
    fast_board.start()                               # power cycle: boot.py, then main.py starts the runtime
    with Device.open(fast_board.port, baud=FAST_BAUD) as dev:
        assert dev.started_via == "running"
        dev.close(leave_running=True)
    out = subprocess.run([sys.executable, "-m", "mpremote", "connect", fast_board.port, "exec", "print(6 * 7)"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith(b"42"), out


def test_missing_port_is_a_transport_error(tmp_path):
    with pytest.raises(TransportError) as e:
        Device.open(str(tmp_path / "no-such-tty"))
    assert "no serial port" in str(e.value)

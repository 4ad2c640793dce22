"""Other programs use the virtual board like a real one: plain mpremote, pytest-embedded, the `tinyhost sim` CLI.
And it leaves no process behind, however its owner ends."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

TIMEOUT_S = 60
TINYHOST = [sys.executable, "-c", "import sys; from tinyhost.cli import main; main(sys.argv[1:])"]


def _mpremote(port, *args):
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def test_plain_mpremote_exec(sim_board_module):
    result = _mpremote(sim_board_module.port, "exec", "print(1+1)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


def test_plain_mpremote_fs_cp_cat_ls(sim_board_module, tmp_path):
    local = tmp_path / "model.bin"
    local.write_bytes(bytes(range(256)) * 8)
    port = sim_board_module.port
    result = _mpremote(port, "fs", "cp", str(local), ":model.bin")
    assert result.returncode == 0, result.stderr
    result = _mpremote(port, "fs", "ls")
    assert result.returncode == 0, result.stderr
    assert any(line.split() == ["2048", "model.bin"] for line in result.stdout.splitlines()), result.stdout
    copy_back = tmp_path / "back.bin"
    result = _mpremote(port, "fs", "cp", ":model.bin", str(copy_back))
    assert result.returncode == 0, result.stderr
    assert copy_back.read_bytes() == local.read_bytes()
    (tmp_path / "note.txt").write_text("hello board\n")
    assert _mpremote(port, "fs", "cp", str(tmp_path / "note.txt"), ":note.txt").returncode == 0
    result = _mpremote(port, "fs", "cat", ":note.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello board\n"


INNER_TEST = '''
def test_repl_answers(dut):
    dut.write("\\r")
    dut.expect(">>> ")
    dut.write("print(6*7)\\r")
    dut.expect("42")
'''


def test_pytest_embedded_serial_service(sim_board, tmp_path):
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--embedded-services", "serial",
         "--port", sim_board.port, "test_inner.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def _children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has not been reaped yet but runs nothing
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _read_line(stream, timeout_s=30.0):
    import select

    ready, _, _ = select.select([stream], [], [], timeout_s)
    assert ready, "no output in time"
    return stream.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_port_first_and_stops_cleanly(tmp_path, signum):
    cli = subprocess.Popen([*TINYHOST, "sim", "--board", "esp32", "--state-dir",
                            str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = _read_line(cli.stdout).strip()
        assert port.startswith("/dev/pts/") and os.path.exists(port)
        description = _read_line(cli.stdout)
        assert "virtual esp32" in description and "115200 baud" in description
        vms = _children(cli.pid)
        assert len(vms) == 1 and _alive(vms[0])
        cli.send_signal(signum)
        assert cli.wait(timeout=TIMEOUT_S) == 0, cli.stderr.read()
        assert _wait_gone(vms) == []
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.stdout.close()
        cli.stderr.close()


def test_cli_refuses_bad_options(tmp_path):
    result = subprocess.run([*TINYHOST, "sim", "--board", "nosuchboard",
                             "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 2
    assert "unknown board 'nosuchboard'" in result.stderr and "esp32" in result.stderr


OWNER = '''
import os, sys
from tinyhost.sim import VirtualBoard
vb = VirtualBoard(board="esp32", state_dir=sys.argv[1])
vb.start()
children = open(f"/proc/{vb.pid}/task/{vb.pid}/children").read()
print(vb.pid, children, flush=True)
os._exit(0) if sys.argv[2] == "exit" else os.kill(os.getpid(), 9)
'''


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_nothing_left_when_the_owner_dies(tmp_path, how):
    owner = subprocess.run([sys.executable, "-c", OWNER, str(tmp_path / "state"), how], capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    relay_pid, *vm_pids = [int(pid) for pid in owner.stdout.split()]
    assert len(vm_pids) == 1
    assert _wait_gone([relay_pid, *vm_pids]) == []


def test_stop_leaves_no_process(sim_board):
    relay_pid = sim_board.pid
    vm_pids = _children(relay_pid)
    assert vm_pids and _alive(vm_pids[0])
    sim_board.stop()
    assert not sim_board.running
    assert _wait_gone([relay_pid, *vm_pids]) == []


def test_mpremote_interrupts_a_main_py_that_never_ends(sim_board, tmp_path):
    """The usual firmware set-up: main.py runs a loop from power-on; plain mpremote still gets in with Ctrl-C."""
    from tinyhost.sim import VirtualBoard

    main = tmp_path / "main.py"
    main.write_text("import time\nprint('main' + ' running')\nwhile True:\n    time.sleep_ms(10)\n")
    assert _mpremote(sim_board.port, "fs", "cp", str(main), ":main.py").returncode == 0
    sim_board.stop()
    with VirtualBoard(board="esp32", state_dir=sim_board.state_dir) as vb:     # power-on: main.py runs
        import serial

        with serial.Serial(vb.port, timeout=5) as ser:
            assert b"main running" in ser.read_until(b"main running")
        result = _mpremote(vb.port, "exec", "print(1+1)")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "2"


def test_relative_state_dir_works(tmp_path, monkeypatch):
    """A relative state directory (`--state-dir .sim`) names the same place after the VM has changed directory."""
    from tinyhost.sim import VirtualBoard

    monkeypatch.chdir(tmp_path)
    with VirtualBoard(board="esp32", state_dir="rel-state") as vb:
        assert vb.flash_image == tmp_path / "rel-state" / "flash.img"
        assert vb.flash_image.is_file()

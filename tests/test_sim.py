"""The virtual board behaves like a MicroPython board on a serial port: REPLs, soft reset, heap, flash, Ctrl-C.

All tests talk to the real MicroPython unix VM through the pty, with pyserial, as a user of /dev/ttyUSB0 would.
"""

import errno
import time

import pytest
import serial

from tinyhost.sim import VirtualBoard, read_flash_files

pytestmark = pytest.mark.sim

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
TIMEOUT_S = 10.0


class Console:
    """A pyserial connection to the board with `expect`, in the pytest-embedded style."""

    def __init__(self, port):
        self.serial = serial.Serial(port, 115200, timeout=0.05, exclusive=True)
        self.seen = b""

    def write(self, data):
        self.serial.write(data)

    def expect(self, marker, timeout_s=TIMEOUT_S):
        """Read until ``marker``; returns everything before it (and drops it from the buffer)."""
        deadline = time.monotonic() + timeout_s
        while marker not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{marker!r} did not come within {timeout_s} s; got {self.seen[-300:]!r}")
            self.seen += self.serial.read(max(1, self.serial.in_waiting))
        before, self.seen = self.seen.split(marker, 1)
        return before

    def prompt(self):
        """Get a clean friendly-REPL prompt."""
        self.write(b"\r\x03\x03")
        time.sleep(0.05)
        self.serial.reset_input_buffer()
        self.seen = b""
        self.write(b"\r")
        self.expect(b">>> ")

    def run(self, line):
        """Run one line at the friendly REPL; returns what it printed."""
        self.write(line.encode() + b"\r")
        self.expect(line.encode() + b"\r\n")
        return self.expect(b">>> ").decode()

    def raw(self):
        self.prompt()
        self.write(b"\x01")
        self.expect(RAW_PROMPT)

    def raw_exec(self, code):
        """Run code in the raw REPL; returns (stdout, stderr)."""
        self.write(code.encode() + b"\x04")
        self.expect(b"OK")
        out = self.expect(b"\x04")
        err = self.expect(b"\x04>")
        return out.decode(), err.decode()

    def close(self):
        self.serial.close()


@pytest.fixture
def con(sim_board):
    console = Console(sim_board.port)
    console.prompt()
    yield console
    console.close()


def test_friendly_repl_answers(con):
    assert con.run("print(1+1)").strip() == "2"


def test_port_is_exclusive_and_reopens(sim_board, con):
    with pytest.raises(serial.SerialException):
        serial.Serial(sim_board.port, exclusive=True)
    con.close()
    again = Console(sim_board.port)        # closing and reopening the port does not hang the line up
    try:
        again.prompt()
        assert again.run("print(3*3)").strip() == "9"
        again.serial.baudrate = 9600        # the port's setting is ignored, as on a USB CDC port
        assert again.run("print(4*4)").strip() == "16"
    finally:
        again.close()


def test_raw_repl_exec(con):
    con.raw()
    out, err = con.raw_exec("import sys\nprint('out', 6*7)\nsys.stdout.write('x')")
    assert out.replace("\r", "") == "out 42\nx" and err == ""
    out, err = con.raw_exec("1/0")
    assert out == "" and "ZeroDivisionError" in err


def test_vboard_module_describes_the_emulated_board(sim_board, con):
    out = con.run("import _vboard; print(_vboard.board, _vboard.heap_bytes, _vboard.fs_bytes, _vboard.baud)")
    assert out.split() == ["esp32", str(sim_board.board.heap_bytes), str(sim_board.board.fs_bytes),
                           str(sim_board.baud)]


def test_heap_is_capped_at_the_profile(sim_board, con):
    total = int(con.run("import gc; _ = gc.collect(); print(gc.mem_free() + gc.mem_alloc())"))
    assert sim_board.board.heap_bytes * 0.9 < total <= sim_board.board.heap_bytes
    out = con.run(f"b = bytearray({sim_board.board.heap_bytes})")
    assert "MemoryError" in out


def test_board_sees_only_its_flash_at_root(con):
    out = con.run("import os; print(os.getcwd(), sorted(os.listdir('/')))")
    assert out.strip() == "/ ['boot.py']"


def _write_boot_files(con):
    for name in ("boot", "main"):
        con.run(f"f = open('{name}.py', 'w'); f.write('print(\\'{name.upper()}\\' + \\'-RAN\\')'); f.close()")


def test_soft_reset_from_friendly_repl_runs_boot_and_main(con):
    _write_boot_files(con)
    con.run("x = 5")
    con.write(b"\x04")
    after = con.expect(b">>> ")
    assert b"MPY: soft reboot\r\n" in after
    assert after.index(b"soft reboot") < after.index(b"BOOT-RAN") < after.index(b"MAIN-RAN")
    assert b'Type "help()"' in after
    assert "NameError" in con.run("print(x)")          # the reset cleared the RAM
    con.write(b"\x01")
    con.expect(RAW_PROMPT)                               # and the raw REPL is still there


def test_soft_reset_from_raw_repl_stays_raw_and_skips_main(con):
    _write_boot_files(con)
    con.raw()
    con.write(b"\x04")
    after = con.expect(RAW_PROMPT)
    assert after.startswith(b"OK\r\nMPY: soft reboot\r\n")
    assert b"BOOT-RAN" in after and b"MAIN-RAN" not in after and b">>>" not in after
    assert con.raw_exec("print(7*6)")[0].strip() == "42"


def test_sys_exit_in_raw_repl_is_a_soft_reset(con):
    con.raw()
    con.write(b"import sys\nsys.exit()\x04")
    after = con.expect(RAW_PROMPT)
    assert b"soft reboot" in after
    assert con.raw_exec("print('alive')")[0].strip() == "alive"


def test_flash_size_is_enforced(sim_board, con):
    con.raw()
    out, err = con.raw_exec(
        "import os\n"
        "chunk = bytearray(4096)\n"
        "n = 0\n"
        "try:\n"
        " with open('fill.bin', 'wb') as f:\n"
        "  while n < 2 * %d:\n"
        "   f.write(chunk)\n"
        "   n += len(chunk)\n"
        "except OSError as e:\n"
        " print('errno', e.errno, n)\n" % sim_board.board.fs_bytes)
    assert err == ""
    words = out.split()
    assert words[:2] == ["errno", str(errno.ENOSPC)]
    assert 0.8 * sim_board.board.fs_bytes < int(words[2]) <= sim_board.board.fs_bytes


def test_files_persist_across_soft_reset_and_restart(sim_board, con):
    con.run("f = open('keep.txt', 'w'); f.write('kept'); f.close()")
    con.write(b"\x04")
    con.expect(b"soft reboot")
    con.expect(b">>> ")
    assert con.run("print(open('keep.txt').read())").strip() == "kept"
    con.close()
    sim_board.stop()
    assert read_flash_files(sim_board.flash_image, sim_board.board)["/keep.txt"] == b"kept"
    with VirtualBoard(board="esp32", state_dir=sim_board.state_dir) as again:
        console = Console(again.port)
        try:
            console.prompt()
            assert console.run("print(open('keep.txt').read())").strip() == "kept"
        finally:
            console.close()


def test_second_board_on_the_same_state_dir_is_refused(sim_board):
    from tinyhost.errors import UsageError

    with pytest.raises(UsageError, match="already using"):
        VirtualBoard(board="esp32", state_dir=sim_board.state_dir).start()


def test_ctrl_c_interrupts_running_code(con):
    con.write(b"while True: pass\r\r")
    con.expect(b"... \r\n")
    time.sleep(0.2)
    con.write(b"\x03")
    assert b"KeyboardInterrupt" in con.expect(b">>> ")
    assert con.run("print('back')").strip() == "back"


def test_ctrl_c_is_data_when_keyboard_interrupt_is_off(con):
    con.raw()
    con.write(b"import micropython, sys\nmicropython.kbd_intr(-1)\ndata = sys.stdin.buffer.read(3)\n"
              b"micropython.kbd_intr(3)\nprint(repr(data))\x04")
    con.expect(b"OK")
    time.sleep(0.2)
    con.write(b"\x03a\x03")
    out = con.expect(b"\x04")
    assert out.strip() == b"b'\\x03a\\x03'"
    assert con.expect(b"\x04>") == b""


def test_ctrl_c_never_kills_code_that_toggles_keyboard_interrupt(con):
    # MicroPython's unix port has a SIGINT handler only while keyboard interrupt is on; with SIG_DFL, the relay's
    # SIGINT would end the VM (a reset the user never asked for). This program switches it on and off as fast as it
    # can while Ctrl-C comes in: each one must become a KeyboardInterrupt or a byte on stdin, never a dead board.
    con.raw()
    con.write(b"import micropython, select, sys, time\n"
              b"poller = select.poll()\n"
              b"poller.register(sys.stdin, select.POLLIN)\n"
              b"caught = passed = 0\n"
              b"done, end = False, time.ticks_add(time.ticks_ms(), 10000)\n"
              b"while not done and time.ticks_diff(end, time.ticks_ms()) > 0:\n"
              b"    try:\n"
              b"        for _ in range(1000):\n"
              b"            micropython.kbd_intr(-1)\n"
              b"            micropython.kbd_intr(3)\n"
              b"        micropython.kbd_intr(-1)\n"
              b"        while poller.poll(0):\n"
              b"            if sys.stdin.buffer.read(1) == b'!':\n"
              b"                done = True\n"
              b"            else:\n"
              b"                passed += 1\n"
              b"        micropython.kbd_intr(3)\n"
              b"    except KeyboardInterrupt:\n"
              b"        caught += 1\n"
              b"micropython.kbd_intr(3)\n"
              b"print(caught, passed, done)\x04")
    con.expect(b"OK")
    time.sleep(0.2)
    for _ in range(40):
        con.write(b"\x03")
        time.sleep(0.02)
    time.sleep(0.2)
    con.write(b"!")
    out = con.expect(b"\x04", timeout_s=20)
    caught, passed, done = out.split()
    caught, passed = int(caught), int(passed)
    assert done == b"True"
    # Both ways taken (about half each here); several Ctrl-C read at once make one interrupt.
    assert caught >= 1 and passed >= 1 and caught + passed <= 40
    assert con.expect(b"\x04>") == b""
    assert con.raw_exec("print('alive')") == ("alive\n", "")


def test_fresh_erases_the_flash(sim_board, con):
    con.run("f = open('old.txt', 'w'); f.write('x'); f.close()")
    con.close()
    sim_board.stop()
    with VirtualBoard(board="esp32", state_dir=sim_board.state_dir, fresh=True) as again:
        console = Console(again.port)
        try:
            console.prompt()
            assert console.run("import os; print(sorted(os.listdir()))").strip() == "['boot.py']"
        finally:
            console.close()


def test_flash_image_of_another_size_is_refused(tmp_path):
    from tinyhost import boards
    from tinyhost.errors import UsageError
    from tinyhost.sim.state import prepare_flash_image

    esp32 = boards.load("esp32")
    prepare_flash_image(tmp_path, boards.load("nano33ble"))
    with pytest.raises(UsageError, match="delete .*flash.img.* or pass another --state-dir"):
        VirtualBoard(board="esp32", state_dir=tmp_path).start()
    assert prepare_flash_image(tmp_path, esp32, fresh=True).stat().st_size == esp32.fs_bytes


def test_ctrl_c_breaks_a_reset_loop(con):
    """main.py calling sys.exit() resets the board forever, as on a real one; Ctrl-C gets back to the REPL."""
    con.run("f = open('main.py', 'w'); f.write('import sys\\nsys.exit()\\n'); f.close()")
    con.write(b"\x04")
    con.expect(b"soft reboot")
    con.expect(b"soft reboot")                         # it is looping
    for _ in range(100):
        con.write(b"\x03")
        time.sleep(0.05)
        if b">>> " in con.seen + con.serial.read(con.serial.in_waiting):
            break
    con.prompt()
    assert con.run("import os; os.remove('main.py'); print('out of the loop')").strip() == "out of the loop"


def test_sim_profile_emulates_the_board_it_extends(tmp_path):
    vb = VirtualBoard(board="sim", state_dir=tmp_path)
    assert vb.board.name == "esp32" and vb.baud == vb.board.baud == 115200
    from tinyhost.sim.relay import make_config

    assert make_config("sim").state_dir == make_config("esp32").state_dir


def test_a_board_killed_while_the_host_sends_comes_back(sim_board, con):
    """The VM killed mid-transfer: the host's bytes (Ctrl-C and Ctrl-D among them) keep coming while the board
    boots again, as after a reset in the middle of a flash. It comes up and the REPL answers (was: its boot code
    interrupted, the board silent or the VM ending again and again until the relay gave up)."""
    import os
    import signal

    con.raw()
    vm = open(f"/proc/{sim_board.pid}/task/{sim_board.pid}/children").read().split()[0]
    os.kill(int(vm), signal.SIGKILL)
    for _ in range(40):                   # a Ctrl-C in every burst while the VM starts
        con.write(b"\x03" + bytes(range(4, 256)))
        time.sleep(0.03)
    time.sleep(0.3)
    con.serial.reset_input_buffer()
    con.write(b"\r\x03\x03\x02")
    con.prompt()
    assert con.run("print(6 * 7)").strip() == "42"


def test_a_board_that_cannot_boot_is_not_told_to_erase_its_flash_first(tmp_path, monkeypatch):
    """The VM ending again and again while it boots may come from a host still sending (the board then comes up
    on the next start) as well as from a boot.py that ends it: the hint keeps the flash and names --fresh, which
    erases it, only for the second."""
    from click.testing import CliRunner

    from tinyhost.cli import cli
    from tinyhost.commands import sim as sim_cmd
    from tinyhost.errors import TransportError
    from tinyhost.sim.relay import BootFailed

    def boot_fails(config):
        raise BootFailed("the MicroPython VM ended 5 times while booting")

    monkeypatch.setattr(sim_cmd, "serve", boot_fails)
    r = CliRunner().invoke(cli, ["sim", "--state-dir", str(tmp_path)])
    assert isinstance(r.exception, TransportError), r.output
    hint = r.exception.hint
    assert "flash.img) is kept: start it again" in hint
    assert "if boot.py or main.py on it ends the VM at every start, add --fresh" in hint and "erases" in hint

